"""--mode=eval_likelihood: test-set log-likelihood of the latest checkpoint's EMA model.

  python -m experiments.main --config=experiments/configs/toy2d.py --workdir=DIR --mode=eval_likelihood
  # Hutchinson with 4 probes, VE integrated in sigma, looser tolerance:
  ... --config.likelihood.divergence=hutchinson --config.likelihood.num_probes=4 \
      --config.likelihood.rtol=1e-4 --config.likelihood.atol=1e-4

Test examples are fresh draws from the data distribution (config.likelihood.num_samples; example n
always uses fold_in(key, n), so results do not depend on the batch size). Continuous data are
scored in nats/dim by the probability-flow ODE; discrete data (config.likelihood.num_levels > 0)
are dequantized and scored in bits/dim, or bounded by the DDPM ELBO. Where the data law is a known
Gaussian mixture, the true log-density of the same examples is reported next to the model's.

Writes DIR/likelihood/<stem>.json (summary) and .npz (per-example values), the stem naming every
setting that changes the numbers (``output_stem``), so one evaluation never overwrites another.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import ml_collections
import numpy as np
from tqdm import tqdm

from diffusion_jax import likelihood, sdes
from diffusion_jax.sampling import example_keys
from experiments import build
from experiments import run as run_lib

def _per_example_fn(config, sde, divergence, variable):
  """The per-example estimate (score_fn, x, key) -> dict of scalars, for config.likelihood."""
  c = config.likelihood
  kwargs = dict(t_min=c.t_min, rtol=c.rtol, atol=c.atol, divergence=divergence, variable=variable)

  def ode_logp(score_fn, x, key):
    return likelihood.log_likelihood(sde, score_fn, x, key=key, **kwargs)

  if c.num_levels == 0:
    if c.estimator != "ode":
      raise ValueError(f"config.likelihood.estimator={c.estimator!r} needs discrete data "
                       "(config.likelihood.num_levels > 0); continuous data use 'ode'.")

    def one(score_fn, x, key):
      out = ode_logp(score_fn, x, key)
      return {"logp": out.logp, "logp_se": out.logp_se, "nfe": out.nfe, "success": out.success}
  else:
    levels, data_range = c.num_levels, tuple(c.data_range)
    lo, hi = data_range

    def to_pixels(x):
      # The data are L levels on [lo, hi], level k at the centre of its dequantization cell.
      return likelihood.levels_of(x, num_levels=levels, data_range=data_range)

    if c.estimator == "ode":
      def one(score_fn, x, key):
        bpd = likelihood.bits_per_dim(lambda xd, k: ode_logp(score_fn, xd, k).logp, to_pixels(x),
                                      key=key, num_draws=c.num_dequant_draws, num_levels=levels,
                                      data_range=data_range)
        return {"bpd": bpd.bpd, "bpd_se": bpd.bpd_se}
    elif c.estimator == "ddpm_elbo":
      def one(score_fn, x, key):
        out = likelihood.ddpm_elbo(sde, score_fn, to_pixels(x), key=key, num_steps=c.elbo_steps,
                                   num_levels=levels, data_range=data_range)
        return {"bpd": out.bpd}
    else:
      raise ValueError(f"Unknown config.likelihood.estimator={c.estimator!r}; expected one of "
                       "'ode', 'ddpm_elbo'.")
  return one


def _settings_key(config) -> tuple:
  """config.likelihood as a hashable value: what the compiled estimate depends on."""
  return tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                      for k, v in config.likelihood.items()))


@functools.lru_cache(maxsize=16)
def _score_program(settings: tuple, sde, divergence, variable):
  """jit(vmap) over examples of the estimate; the score function is an argument, not a constant.

  Cached on everything static (config.likelihood, the SDE, the strategies): a new checkpoint is a
  new score_fn pytree of the same structure, so it reuses this compilation, and the parameters
  never become constants of the compiled program.
  """
  config = ml_collections.ConfigDict({"likelihood": dict(settings)})
  one = _per_example_fn(config, sde, divergence, variable)
  return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))


def _make_score_batch(config, sde, divergence, variable):
  """(score_fn, x, keys) -> dict of per-example arrays, compiled once per set of static settings."""
  settings = _settings_key(config)
  try:
    return _score_program(settings, sde, divergence, variable)
  except TypeError:  # an unhashable strategy (one holding arrays): compile for this call only
    return _score_program.__wrapped__(settings, sde, divergence, variable)


def evaluate_likelihood(config: ml_collections.ConfigDict, score_fn, sde, dataset, *,
                        progress: bool = True, examples: np.ndarray | None = None) -> dict:
  """Per-example estimates over config.likelihood.num_samples test examples (NumPy arrays): fresh
  draws from ``dataset``, or the first rows of ``examples`` (a test set, in model space)."""
  c = config.likelihood
  if c.num_samples < 1 or c.batch_size < 1:
    raise ValueError("config.likelihood.num_samples and config.likelihood.batch_size must be >= 1, "
                     f"got {c.num_samples} and {c.batch_size}.")
  if examples is not None:
    return _evaluate_examples(config, score_fn, sde, np.asarray(examples)[:c.num_samples],
                              progress=progress)
  divergence = build.build_divergence(config)
  variable = build.build_flow_variable(config, sde)
  score_batch = _make_score_batch(config, sde, divergence, variable)
  data_key, estimate_key = jr.split(run_lib.likelihood_key(config))
  batch_size = min(c.batch_size, c.num_samples)
  chunks = []
  with tqdm(total=c.num_samples, desc="log-likelihood", disable=not progress,
            dynamic_ncols=True) as bar:
    for offset in range(0, c.num_samples, batch_size):
      # Padded to a full batch so every chunk reuses one compilation.
      x = jax.vmap(dataset.sample_fn)(example_keys(data_key, batch_size, offset))
      out = score_batch(score_fn, x, example_keys(estimate_key, batch_size, offset))
      chunks.append(jax.device_get({"x": x, **out}))
      bar.update(min(batch_size, c.num_samples - offset))
  return {k: np.concatenate([ch[k] for ch in chunks])[:c.num_samples] for k in chunks[0]}


def _evaluate_examples(config, score_fn, sde, examples: np.ndarray, *, progress: bool) -> dict:
  c = config.likelihood
  divergence = build.build_divergence(config)
  variable = build.build_flow_variable(config, sde)
  score_batch = _make_score_batch(config, sde, divergence, variable)
  _, estimate_key = jr.split(run_lib.likelihood_key(config))
  num = len(examples)
  batch_size = min(c.batch_size, num)
  chunks = []
  with tqdm(total=num, desc="log-likelihood", disable=not progress, dynamic_ncols=True) as bar:
    for offset in range(0, num, batch_size):
      x = examples[offset:offset + batch_size]
      pad = batch_size - len(x)  # padded to a full batch so every chunk reuses one compilation
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
      out = score_batch(score_fn, jnp.asarray(x), example_keys(estimate_key, batch_size, offset))
      chunks.append(jax.device_get({"x": x, **out}))
      bar.update(batch_size - pad)
  return {k: np.concatenate([ch[k] for ch in chunks])[:num] for k in chunks[0]}


def image_bits_per_dim(config: ml_collections.ConfigDict, score_fn, sde, test_set, *,
                       progress: bool = True) -> dict:
  """Test-set bits/dim of an image model for the summary: the probability-flow ODE on uniformly
  dequantized test images (config.likelihood, its estimator forced to "ode"), and for VP SDEs
  the DDPM bound too (``likelihood.ddpm_elbo``), each with its standard error."""
  examples = np.asarray(test_set.to_model())
  out = {}
  for estimator in ("ode", "ddpm_elbo"):
    if estimator == "ddpm_elbo" and not isinstance(sde, (sdes.VPSDE, sdes.CosineVPSDE)):
      continue
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.likelihood.estimator = estimator
    cfg.likelihood.num_levels = test_set.num_levels
    cfg.likelihood.data_range = (-1.0, 1.0)
    tic = time.perf_counter()
    values = evaluate_likelihood(cfg, score_fn, sde, None, progress=progress, examples=examples)
    mean, se = _mean_and_se(values["bpd"])
    key = "bits_per_dim" if estimator == "ode" else "bits_per_dim_ddpm_bound"
    out.update({key: mean, f"{key}_se": se, f"{key}_seconds": time.perf_counter() - tic})
  out["bits_per_dim_settings"] = {
      "num_test_examples": int(min(len(examples), config.likelihood.num_samples)),
      "num_levels": int(test_set.num_levels), "data_range": [-1.0, 1.0],
      "divergence": config.likelihood.divergence, "num_probes": config.likelihood.num_probes,
      "rtol": config.likelihood.rtol, "atol": config.likelihood.atol,
      "t_min": config.likelihood.t_min, "elbo_steps": config.likelihood.elbo_steps,
      "offset_bits": likelihood.bits_per_dim_offset(test_set.num_levels, (-1.0, 1.0))}
  return out


def _mean_and_se(values: np.ndarray) -> tuple[float, float]:
  return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0


def output_stem(config: ml_collections.ConfigDict, sde, step: int) -> str:
  """The file name of one evaluation: every setting that changes its numbers is in it.

  e.g. ode_exact_in-t_rtol1e-05_atol1e-05_tmin1e-05_n1000_seed0_step10000; Hutchinson adds its
  probe and count (hutchinson-rademacher4), discrete data their levels, range and draws (or the
  ELBO's steps). The batch size is absent: by design it does not change the numbers.
  """
  c = config.likelihood
  divergence = (f"hutchinson-{c.probe}{c.num_probes}" if c.divergence == "hutchinson"
                else c.divergence)
  variable = type(build.build_flow_variable(config, sde)).__name__  # "auto" resolved
  variable = {"InTime": "t", "InSigma": "sigma"}.get(variable, variable)
  parts = [c.estimator]
  if c.estimator == "ode":
    parts += [divergence, f"in-{variable}", f"rtol{c.rtol:g}", f"atol{c.atol:g}"]
  parts.append(f"tmin{c.t_min:g}")
  if c.num_levels:
    lo, hi = c.data_range
    parts.append(f"levels{c.num_levels}-range{lo:g},{hi:g}")
    parts.append(f"draws{c.num_dequant_draws}" if c.estimator == "ode" else f"steps{c.elbo_steps}")
  parts += [f"n{c.num_samples}", f"seed{config.seed}", f"step{step}"]
  return "_".join(parts)


def _run_images(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, step) -> dict:
  """An image model's test-set bits/dim, as the end of training reports it (``image_bits_per_dim``:
  the PF-ODE and, for VP, the DDPM bound), on the checkpoint; DIR/likelihood/image-<stem>.json."""
  from experiments import build_images

  score_fn, sde, state = run_lib.restore_model(config, workdir, step=step)
  _, test_set = build_images.build_image_data(config)
  summary = image_bits_per_dim(config, score_fn, sde, test_set, progress=jax.process_index() == 0)
  if jax.process_index() != 0:
    return {}
  step = int(np.asarray(jax.device_get(state.step)))
  ode = ml_collections.ConfigDict(config.to_dict())  # the settings image_bits_per_dim scores with
  ode.likelihood.estimator, ode.likelihood.num_levels = "ode", test_set.num_levels
  ode.likelihood.data_range = (-1.0, 1.0)
  stem = f"image-{output_stem(ode, sde, step)}"
  if "bits_per_dim_ddpm_bound" in summary:
    stem += f"_bound-steps{config.likelihood.elbo_steps}"
  summary = {"checkpoint_step": step, "sde": type(sde).__name__, **summary}
  out_dir = workdir / "likelihood"
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2))
  bound = (f", DDPM bound {summary['bits_per_dim_ddpm_bound']:.4f} +- "
           f"{summary['bits_per_dim_ddpm_bound_se']:.4f}" if "bits_per_dim_ddpm_bound" in summary
           else "")
  print(f"Step {step}: test bits/dim of {summary['bits_per_dim_settings']['num_test_examples']} "
        f"images {summary['bits_per_dim']:.4f} +- {summary['bits_per_dim_se']:.4f} (PF-ODE)"
        f"{bound}.\nWrote {out_dir / stem}.json.")
  return summary


def run(config: ml_collections.ConfigDict, workdir, *, step: int | None = None) -> dict:
  """Restore the EMA model (latest checkpoint, or ``step``), estimate the test-set
  log-likelihood, write DIR/likelihood/<output_stem>.json and .npz, print the headline (images:
  ``_run_images``)."""
  workdir = pathlib.Path(workdir)
  if config.data.name in build.IMAGE_DATASETS:
    return _run_images(config, workdir, step=step)
  score_fn, sde, state = run_lib.restore_model(config, workdir, step=step)
  dataset = build.build_dataset(config)
  c = config.likelihood
  tic = time.perf_counter()
  values = evaluate_likelihood(config, score_fn, sde, dataset,
                               progress=jax.process_index() == 0)
  seconds = time.perf_counter() - tic
  if jax.process_index() != 0:
    return {}
  step = int(np.asarray(jax.device_get(state.step)))
  dim = int(np.prod(values["x"].shape[1:]))  # per example, whatever its shape
  summary = {
      "checkpoint_step": step, "estimator": c.estimator, "num_samples": c.num_samples,
      "sde": type(sde).__name__, "t_min": c.t_min, "seconds": seconds,
      "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in c.items()},
      "seed": config.seed,
  }
  if "logp" in values:
    nats, nats_se = _mean_and_se(-values["logp"] / dim)
    summary.update({
        "nll_nats_per_dim": nats, "nll_nats_per_dim_se": nats_se,
        "divergence_se_nats_per_dim_mean": float(np.mean(values["logp_se"])) / dim,
        "nfe_mean": float(values["nfe"].mean()), "nfe_max": int(values["nfe"].max()),
        "num_failed": int((~values["success"]).sum()),
    })
    if dataset.mixture is not None:
      # The data law is known: the same examples' true NLL (the entropy estimate) is the floor.
      true_logp = np.asarray(jax.vmap(dataset.mixture.log_prob)(jnp.asarray(values["x"])))
      summary["true_nll_nats_per_dim"], summary["true_nll_nats_per_dim_se"] = _mean_and_se(
          -true_logp / dim)
      values["true_logp"] = true_logp
  else:
    summary["bits_per_dim"], summary["bits_per_dim_se"] = _mean_and_se(values["bpd"])
  out_dir = workdir / "likelihood"
  out_dir.mkdir(parents=True, exist_ok=True)
  stem = output_stem(config, sde, step)
  np.savez(out_dir / f"{stem}.npz", **values)
  (out_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2))
  headline = (f"{summary['nll_nats_per_dim']:.4f} +- {summary['nll_nats_per_dim_se']:.4f} nats/dim"
              if "nll_nats_per_dim" in summary else
              f"{summary['bits_per_dim']:.4f} +- {summary['bits_per_dim_se']:.4f} bits/dim")
  if "true_nll_nats_per_dim" in summary:
    headline += f" (true density of the same examples: {summary['true_nll_nats_per_dim']:.4f})"
  if "num_failed" in summary:
    headline += (f"; NFE {summary['nfe_mean']:.0f} mean, {summary['nfe_max']} max; "
                 f"{summary['num_failed']} failed solves")
  print(f"Step {step}: test NLL of {c.num_samples} examples {headline} ({seconds:.1f} s).\n"
        f"Wrote {out_dir / stem}.json (summary) and {stem}.npz (per-example values).")
  return summary
