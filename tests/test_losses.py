"""Denoising score matching: closed-form expected loss, exact score is optimal, zero gradient at the truth."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import analytic, losses, sdes
from diffusion_jax.parameterization import Prediction

N = 20_000
D = 2
M_TRUE, V_TRUE = jnp.array([0.8, -0.5]), 0.3


def gaussian_score_model(sde):
  """score(x_t) = -(x_t - alpha m) / (alpha^2 v + sigma^2): exact for data N(m, v I)."""

  def model_fn(params, x, t):
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    return -(x - alpha * params["m"]) / (alpha**2 * jnp.exp(params["log_v"]) + sigma**2)

  return model_fn


TRUE = {"m": M_TRUE, "log_v": jnp.log(V_TRUE)}


def data(key, n=N):
  return M_TRUE + jnp.sqrt(V_TRUE) * jr.normal(key, (n, D))


@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.VESDE(sigma_max=10.0)], ids=["vp", "ve"])
def test_expected_loss_of_exact_score_has_closed_form(sde):
  # For Gaussian data, E ||sigma s*(x_t) + noise||^2 = D alpha^2 v / (alpha^2 v + sigma^2).
  model_fn = gaussian_score_model(sde)
  x0 = data(jr.key(0))
  noise = jr.normal(jr.key(1), x0.shape)
  for t in (0.1, 0.5):
    out = jax.vmap(lambda x, z: losses.dsm_loss_at(model_fn, TRUE, x, t, z, sde=sde,
                                                   prediction=Prediction.SCORE))(x0, noise)
    a2v = float(sde.alpha(t)) ** 2 * V_TRUE
    expected = D * a2v / (a2v + float(sde.sigma(t)) ** 2)
    se = float(jnp.std(out.loss)) / np.sqrt(N)
    assert abs(float(jnp.mean(out.loss)) - expected) < 4 * se  # 4 Monte-Carlo standard errors


@pytest.mark.parametrize("weighting", list(losses.Weighting))
@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.SubVPSDE(), sdes.VESDE(sigma_max=10.0)],
                         ids=["vp", "subvp", "ve"])
def test_gradient_vanishes_at_the_true_parameters(sde, weighting):
  model_fn = gaussian_score_model(sde)
  x0 = data(jr.key(2))
  keys = jr.split(jr.key(3), N)

  def per_example_grad(params):
    fn = lambda p, x, k: losses.dsm_loss(model_fn, p, x, k, sde=sde, prediction=Prediction.SCORE,
                                         weighting=weighting, t_min=1e-2).loss
    return jax.vmap(jax.grad(fn), (None, 0, 0))(params, x0, keys)

  grads = jax.jit(per_example_grad)
  for params, should_vanish in ((TRUE, True), ({**TRUE, "m": M_TRUE + 0.3}, False)):
    g = jnp.concatenate([grads(params)["m"], grads(params)["log_v"][:, None]], axis=1)
    z = np.abs(np.asarray(jnp.mean(g, 0) / (jnp.std(g, 0) / np.sqrt(N))))
    if should_vanish:
      assert np.all(z < 4.5), z  # mean gradient within 4.5 standard errors of zero (3 coordinates)
    else:
      assert np.any(z > 10), z  # and clearly not zero away from the truth: the test has power


SDES = [sdes.VPSDE(), sdes.VESDE()]


@pytest.mark.parametrize("sde", SDES, ids=["vp", "ve"])
def test_exact_gmm_score_beats_perturbed_scores(sde):
  dm = analytic.DiffusedMixture(analytic.eight_gaussians(), sde)
  x0 = dm.data.sample(jr.key(4), N)
  keys = jr.split(jr.key(5), N)
  exact = lambda p, x, t: dm.score(x, t)
  scaled = lambda p, x, t: 1.2 * dm.score(x, t)
  shifted = lambda p, x, t: dm.score(x, t) + 0.2 / sde.sigma(t)

  def mean_loss(model_fn):
    f = lambda x, k: losses.dsm_loss(model_fn, None, x, k, sde=sde, prediction=Prediction.SCORE).loss
    return jax.jit(jax.vmap(f))(x0, keys)

  base = mean_loss(exact)
  for other in (scaled, shifted):
    diff = mean_loss(other) - base  # same keys: common random numbers
    assert float(jnp.mean(diff)) > 5 * float(jnp.std(diff)) / np.sqrt(N)


def test_loss_is_the_same_for_every_reading_of_the_exact_model():
  sde = sdes.VPSDE()
  dm = analytic.DiffusedMixture(analytic.eight_gaussians(), sde)
  x0 = dm.data.sample(jr.key(6), 64)
  keys = jr.split(jr.key(7), 64)
  readings = {
      Prediction.SCORE: dm.score,
      Prediction.EPS: dm.eps,
      Prediction.X0: dm.denoised,
      Prediction.V: lambda x, t: sde.alpha(t) * dm.eps(x, t) - sde.sigma(t) * dm.denoised(x, t),
  }
  values = {}
  for pred, fn in readings.items():
    f = lambda x, k: losses.dsm_loss(lambda p, y, t: fn(y, t), None, x, k, sde=sde,
                                     prediction=pred, weighting=losses.Weighting.LIKELIHOOD).loss
    values[pred] = jax.vmap(f)(x0, keys)
  for pred in readings:
    # Conversions divide by sigma and alpha (>= 3e-3 and 7e-3 here): float32 error grows accordingly.
    np.testing.assert_allclose(values[pred], values[Prediction.EPS], rtol=2e-3, atol=1e-3)


def test_likelihood_weighting_is_g2_over_sigma2():
  sde = sdes.VPSDE()
  t = jnp.array(0.4)
  beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
  np.testing.assert_allclose(losses.weight(sde, t, losses.Weighting.LIKELIHOOD),
                             beta / sde.sigma(t) ** 2, rtol=1e-4)  # jvp-derived g^2 in float32


def test_ncsn_loss():
  sde = sdes.VESDE(sigma_min=0.01, sigma_max=10.0)
  dm = analytic.DiffusedMixture(analytic.eight_gaussians(), sde)
  x0 = dm.data.sample(jr.key(8), N)
  keys = jr.split(jr.key(9), N)

  def run(model_fn):
    f = lambda x, k: losses.ncsn_loss(model_fn, None, x, k, sde=sde, num_scales=10)
    return jax.jit(jax.vmap(f))(x0, keys)

  exact = run(lambda p, x, t: dm.score(x, t))
  # Times are exactly the ladder's levels.
  ladder_ts = np.linspace(1.0, 0.0, 10)
  assert np.all(np.min(np.abs(np.asarray(exact.t)[:, None] - ladder_ts), axis=1) < 1e-5)
  diff = run(lambda p, x, t: 0.8 * dm.score(x, t)).loss - exact.loss
  assert float(jnp.mean(diff)) > 5 * float(jnp.std(diff)) / np.sqrt(N)


def test_noise_shape_mismatch():
  sde = sdes.VPSDE()
  with pytest.raises(ValueError, match="noise must have the shape of x0"):
    losses.dsm_loss_at(lambda p, x, t: x, None, jnp.ones(3), 0.5, jnp.ones(2), sde=sde)
