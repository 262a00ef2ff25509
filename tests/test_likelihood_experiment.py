"""--mode=eval_likelihood: experiments/likelihood_eval.py restores a checkpoint and scores test data."""

import itertools
import json

import jax
import jax.numpy as jnp
import jax.random as jr
import flax
import numpy as np
import pytest

from diffusion_jax import analytic, data, sdes
from experiments import likelihood_eval
from experiments import run as run_lib
from experiments.configs import toy2d_tiny


def _config(**likelihood):
  config = toy2d_tiny.get_config()
  config.data.name = "eight_gaussians"  # a known density, so the true NLL is reported too
  config.likelihood.num_samples = 40
  config.likelihood.batch_size = 16
  for k, v in likelihood.items():
    setattr(config.likelihood, k, v)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tiny_likelihood")
  run_lib.train(_config(), workdir)
  return workdir


STEM6 = "ode_exact_in-t_rtol1e-05_atol1e-05_tmin1e-05_n40_seed0_step6"


def test_eval_likelihood_writes_json_and_npz(trained, capsys):
  summary = likelihood_eval.run(_config(), trained)
  stem = trained / "likelihood" / STEM6
  saved = json.loads(stem.with_suffix(".json").read_text())
  printed = capsys.readouterr().out
  assert f"{stem}.json" in printed and f"{STEM6}.npz" in printed and "nats/dim" in printed
  assert saved["checkpoint_step"] == 6 and saved["num_samples"] == 40
  values = np.load(f"{stem}.npz")
  assert values["logp"].shape == (40,) and np.all(np.isfinite(values["logp"]))
  np.testing.assert_allclose(saved["nll_nats_per_dim"], -values["logp"].mean() / 2, rtol=1e-6)
  assert saved["num_failed"] == 0 and saved["nfe_mean"] > 10
  # The true density of the same test examples: eight well-separated Gaussians of std 0.1 have
  # an entropy of (log 8 + log(2 pi e 0.01)) / 2 = 0.156 nats/dim. Per example -log p / 2 is
  # const + chi^2_2 / 4 (std 0.5), so 40 examples estimate it within 3 SE = 0.24.
  entropy = (np.log(8) + np.log(2 * np.pi * np.e * 0.01)) / 2
  assert abs(saved["true_nll_nats_per_dim"] - entropy) < 0.24
  assert summary["nll_nats_per_dim"] == saved["nll_nats_per_dim"]
  # Chunks of 16 (the last one padded) give the same examples as one chunk of 40, and the same
  # values up to the solver's tolerance: another batch size fuses float32 arithmetic differently,
  # which can flip a step's accept/reject decision (differences of ~4e-4 nats seen at 1e-5).
  whole = likelihood_eval.run(_config(batch_size=40), trained)
  rerun = np.load(f"{stem}.npz")  # the same file: batch size is not part of the name
  np.testing.assert_array_equal(rerun["x"], values["x"])
  np.testing.assert_allclose(rerun["logp"], values["logp"], atol=2e-3)
  assert whole["num_samples"] == 40


class _Traces:
  """A trace counter (hashed by identity, so it can be a static field of a pytree)."""
  count = 0


class _CountingScore(flax.struct.PyTreeNode):
  """A score function that counts how often JAX traces it (a Python side effect at trace time)."""
  inner: object
  traces: _Traces = flax.struct.field(pytree_node=False)

  def __call__(self, x, t):
    self.traces.count += 1
    return self.inner(x, t)


def test_two_checkpoints_share_one_compilation(trained):
  """The score function is an argument of the compiled estimate, not a constant inside it: a
  second checkpoint (new parameters, same structure) is not traced again. Fails with the
  parameters closed into the jitted function (one trace per checkpoint)."""
  config = _config(num_samples=8, batch_size=8, rtol=1e-3, atol=1e-3)
  dataset = data.eight_gaussians()
  traces, values, counts = _Traces(), [], []
  score_fn, sde, _ = run_lib.restore_model(config, trained, step=4)
  for step in (4, 6):
    # One network definition, the parameters of each checkpoint (restore_model builds a new
    # flax module per call, and a bound method of a new module is a new static field).
    params = run_lib.restore_model(config, trained, step=step)[0].params
    values.append(likelihood_eval.evaluate_likelihood(
        config, _CountingScore(score_fn.replace(params=params), traces), sde, dataset,
        progress=False))
    counts.append(traces.count)
  assert counts[0] > 0 and counts[1] == counts[0]  # traced for the first checkpoint only
  # ...and the second checkpoint's own parameters were used (not the first's, baked in).
  assert not np.array_equal(values[0]["logp"], values[1]["logp"])


def test_output_files_are_named_by_their_settings(trained):
  """Two evaluations that differ in one setting write two files; neither overwrites the other."""
  names = set()
  for settings in [dict(), dict(rtol=1e-3), dict(divergence="hutchinson", num_probes=2),
                   dict(t_min=1e-3)]:
    config = _config(num_samples=8, batch_size=8, **settings)
    likelihood_eval.run(config, trained, step=4)
    score_fn, sde, _ = run_lib.restore_model(config, trained, step=4)
    names.add(likelihood_eval.output_stem(config, sde, 4))
  assert len(names) == 4
  written = {p.stem for p in (trained / "likelihood").glob("*_n8_seed0_step4.json")}
  assert names <= written
  assert "ode_hutchinson-rademacher2_in-t_rtol1e-05_atol1e-05_tmin1e-05_n8_seed0_step4" in names


def test_exact_score_recovers_the_true_test_nll():
  """With the analytic score in place of a network, the estimated test NLL is the true one: the
  plumbing (keys, padding, the prior) adds nothing beyond the ODE error and the prior mismatch."""
  config = _config(num_samples=32, batch_size=32)
  sde = sdes.VPSDE()
  dataset = data.eight_gaussians()
  oracle = analytic.DiffusedMixture(dataset.mixture, sde)
  values = likelihood_eval.evaluate_likelihood(config, oracle, sde, dataset, progress=False)
  true = jax.vmap(dataset.mixture.log_prob)(jnp.asarray(values["x"]))
  # ODE error ~1e-5 nats/dim at rtol = atol = 1e-5, prior mismatch ~1e-5, and p_t_min differs
  # from p_0 by sigma(t_min)^2 / (2 * 0.01) ~ 1e-4 per dimension.
  np.testing.assert_allclose(values["logp"] / 2, np.asarray(true) / 2, atol=1e-3)


def test_ddpm_elbo_on_discrete_data_bounds_the_entropy():
  """Discrete data (4 levels per pixel, independent): with the exact score of the discrete law the
  DDPM bound in bits/dim lies above the entropy, and close to it."""
  probs = np.array([0.1, 0.2, 0.3, 0.4])
  grid = np.array(list(itertools.product(range(4), repeat=2)))
  # Level k at the centre of its cell, -1 + 2 (k + 1/2) / 4 (likelihood.level_centres).
  mixture = analytic.GaussianMixture.create(np.prod(probs[grid], axis=1), -1 + (2 * grid + 1) / 4,
                                            1e-8)
  dataset = data.ToyDataset(
      lambda key: -1 + (2 * jr.choice(key, 4, (2,), p=jnp.asarray(probs)) + 1) / 4, 2)
  sde = sdes.VPSDE()
  config = _config(estimator="ddpm_elbo", num_levels=4, data_range=(-1.0, 1.0), elbo_steps=1000,
                   num_samples=128, batch_size=128)
  values = likelihood_eval.evaluate_likelihood(config, analytic.DiffusedMixture(mixture, sde), sde,
                                               dataset, progress=False)
  entropy = -np.sum(probs * np.log2(probs))
  mean, se = values["bpd"].mean(), values["bpd"].std() / np.sqrt(128)
  # A bound (up to 3 SE of Monte-Carlo noise), within 0.1 bits/dim at N = 1000 (measured gap
  # ~0.01; tests/test_likelihood.py checks the gap shrinks with N).
  assert entropy - 3 * se < mean < entropy + 0.1 + 3 * se


def test_continuous_data_reject_the_discrete_estimator():
  config = _config(estimator="ddpm_elbo")
  sde = sdes.VPSDE()
  dataset = data.eight_gaussians()
  with pytest.raises(ValueError, match="config.likelihood.estimator"):
    likelihood_eval.evaluate_likelihood(config, analytic.DiffusedMixture(dataset.mixture, sde),
                                        sde, dataset, progress=False)
