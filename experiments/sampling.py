"""--mode=sample: sample a checkpoint's EMA model with the configured sampler and evaluate it.

  python -m experiments.main --config=experiments/configs/toy2d.py --workdir=DIR --mode=sample \
      --config.sampling.sampler=dpm_solver_2m --config.sampling.grid=log_snr \
      --config.sampling.num_steps=10

Writes DIR/samples/<stem>.npz (x, denoised, nfe, ts[, labels]), <stem>.json (the same two-sample
evaluation as the end of training: experiments/evaluate, same reference draws) and <stem>.png.
The stem names everything that changes the samples (sampler and its hyperparameters, grid,
number of steps, t_min, corrector, ancestral start, final denoising, guidance, number of samples,
checkpoint step), so one evaluation never overwrites another. Examples are drawn in compiled
chunks of config.sampling.batch_size (a progress bar counts them); example n always uses
fold_in(key, n), so the samples do not depend on the chunk size.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import ml_collections
import numpy as np

from experiments import build, build_baselines, keys, sharding
from experiments import train as train_lib
from experiments.checkpoints import Checkpoints

# Hyperparameters that matter for each sampler (the others are ignored by it).
_SAMPLER_FIELDS = {
    "ddim": ("eta",), "unipc": ("order",), "adaptive": ("rtol", "atol"),
    "annealed_langevin": ("langevin_step_lr", "langevin_steps"),
    "edm_stochastic": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
}


def output_stem(config: ml_collections.ConfigDict, step: int) -> str:
  """A file stem naming everything that changes the samples, e.g.
  ``ddim-eta0.5_log_snr_10steps_tmin0.001_n4000_step10000``."""
  sc = config.sampling
  if build_baselines.is_baseline(config):  # the family's own sampler
    temperature = f"_T{sc.temperature:g}" if config.model.name == "flow" else ""
    return f"{config.model.name}{temperature}_n{sc.num_samples}_step{step}"
  name = "-".join([sc.sampler, *(f"{f}{sc[f]:g}" for f in _SAMPLER_FIELDS.get(sc.sampler, ()))])
  parts = [name]
  if sc.sampler != "adaptive":
    parts += [f"{sc.grid}-rho{sc.rho:g}" if sc.grid == "edm" else sc.grid, f"{sc.num_steps}steps"]
  parts.append(f"tmin{sc.t_min:g}")
  if sc.corrector != "none":
    parts.append(f"pc-{sc.corrector}-snr{sc.snr:g}x{sc.corrector_steps}")
  if sc.get("ancestral_start_steps", 0):
    parts.append(f"ancestral{sc.ancestral_start_steps}")
  if sc.denoise_final != "default":
    parts.append(f"denoise-{sc.denoise_final}")
  g = build.guidance_config(config)
  if g.kind != "none":
    guided = {"classifier": f"classifier-scale{g.scale:g}",
              "cfgpp": f"cfgpp-lambda{g.gamma:g}"}.get(g.kind, f"{g.kind}-gamma{g.gamma:g}")
    if build.has_noise_interval(g):
      guided += f"-sigma{g.sigma_lo:g}-{g.sigma_hi:g}"
    if g.kind == "autoguidance":
      guided += f"-guide{g.guide_step}"
    parts.append(guided)
  parts += [f"n{sc.num_samples}", f"step{step}"]
  return "_".join(parts)


def run(config: ml_collections.ConfigDict, workdir, *, step: int | None = None) -> dict:
  """Restore the EMA model of the newest intact (or the given) checkpoint, sample, evaluate, write."""
  workdir = pathlib.Path(workdir)
  mesh = sharding.make_mesh()
  method = build.build_method(config)
  ts = train_lib.time_grid(config, method)
  abstract = train_lib.abstract_state(method, config, sharding.replicated(mesh))
  with Checkpoints(workdir, read_only=True) as checkpoints:
    state, restored = checkpoints.restore(abstract, step=step)
    if state is None:
      raise FileNotFoundError(f"No checkpoint in {workdir / 'checkpoints'}.")
    state = train_lib.with_frozen(method, state, sharding.replicated(mesh))
    params = train_lib.model_params(method, state)
    g = build.guidance_config(config)
    if g.kind == "autoguidance":
      # The guide: the EMA model of an earlier checkpoint of the same run (Karras et al. 2024's
      # shorter-trained guide).
      if not 0 < g.guide_step < restored:
        raise ValueError(f"config.sampling.guidance.guide_step={g.guide_step} must name an earlier "
                         f"checkpoint of this run than the sampled one (step {restored}); kept: "
                         f"{checkpoints.steps()}.")
      guide, _ = checkpoints.restore(abstract, step=g.guide_step)
      params = {"main": params, "guide": train_lib.model_params(method, state, guide.ema_params)}
  if g.kind == "classifier":
    from experiments import noisy_classifier

    classifier, _ = noisy_classifier.load(config, workdir, method.example_shape)
    params = {"main": params, "classifier": classifier.params}

  draws, draw = train_lib.recording_draw(
      train_lib.make_draw(method, params, config, mesh, progress=True))
  tic = time.perf_counter()
  summary, plot = method.evaluate(draw, keys.eval_key(config))
  seconds = time.perf_counter() - tic
  if jax.process_index() != 0:
    return {}

  stem = output_stem(config, restored)
  out_dir = workdir / "samples"
  out_dir.mkdir(parents=True, exist_ok=True)
  summary = {"checkpoint_step": restored, **summary,
             "sampler": {**train_lib.sampler_summary(config, method), "nfe_mean": summary["nfe_mean"],
                         "seconds": seconds}}
  train_lib.save_draws(out_dir / f"{stem}.npz", draws, method, ts)
  (out_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2))
  sampler = summary["sampler"]
  method.write_figure(out_dir / f"{stem}.png", plot,
                      f"{sampler['name']}, {sampler['num_steps']} steps, NFE {sampler['nfe_mean']:.0f}")
  against = "held-out" if method.headline is not None else "exact"  # images: the test split
  print(f"Checkpoint step {restored}, {summary['sampler']['repr']}: model vs {against} data "
        f"{train_lib.headline(summary, method)}. Wrote {out_dir / stem}.npz, .json and .png.")
  return summary
