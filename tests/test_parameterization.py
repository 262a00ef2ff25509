"""Score / eps / x0 / v conversions: round trips, and agreement with the exact oracle."""

import itertools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import analytic, sdes
from diffusion_jax.parameterization import Prediction, convert

SDES = [sdes.VPSDE(), sdes.SubVPSDE(), sdes.VESDE()]
IDS = ["vp", "subvp", "ve"]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("source, target", list(itertools.permutations(Prediction, 2)))
def test_round_trip(sde, source, target):
  x = jr.normal(jr.key(0), (5,))
  pred = jr.normal(jr.key(1), (5,))
  for t in (0.05, 0.5, 0.95):
    alpha, sigma = sde.marginal(t)
    there = convert(pred, x, alpha, sigma, source=source, target=target)
    back = convert(there, x, alpha, sigma, source=target, target=source)
    # Conversions mix x and pred with factors alpha, sigma, 1/alpha, 1/sigma, and the way back cancels
    # what the way there added (e.g. score = (alpha x0 - x) / sigma^2): float32 rounding of the
    # intermediates (eps * (|x| + |pred|)) is amplified by up to kappa = max(alpha, sigma, 1/alpha,
    # 1/sigma)^2 (sub-VP's sigma is 0.03 at t = 0.05, VE's is 33 at t = 0.95). Allow 4x that bound.
    kappa = max(float(alpha), float(sigma), 1 / float(alpha), 1 / float(sigma)) ** 2
    size = 1 + float(jnp.max(jnp.abs(x))) + float(jnp.max(jnp.abs(pred)))
    bound = 4 * np.finfo(np.float32).eps * size * kappa
    np.testing.assert_allclose(back, pred, rtol=1e-5, atol=bound)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_conversions_of_the_exact_model(sde):
  dm = analytic.DiffusedMixture(analytic.eight_gaussians(), sde)
  x, t = jnp.array([0.7, -1.1]), 0.3
  alpha, sigma = sde.marginal(t)
  eps = dm.eps(x, t)
  # score and x0 from eps reproduce the oracle's score and Tweedie posterior mean.
  np.testing.assert_allclose(convert(eps, x, alpha, sigma, source=Prediction.EPS,
                                     target=Prediction.SCORE), dm.score(x, t), rtol=1e-5)
  np.testing.assert_allclose(convert(eps, x, alpha, sigma, source=Prediction.EPS,
                                     target=Prediction.X0), dm.denoised(x, t), rtol=1e-5, atol=1e-6)
  # v = alpha eps - sigma x0 (Salimans & Ho 2022), written out here independently.
  v = convert(eps, x, alpha, sigma, source=Prediction.EPS, target=Prediction.V)
  np.testing.assert_allclose(v, alpha * eps - sigma * dm.denoised(x, t), rtol=1e-5, atol=1e-6)


def test_convert_is_jittable_and_vmappable():
  sde = sdes.VPSDE()
  xs = jr.normal(jr.key(2), (7, 3))
  ts = jnp.linspace(0.1, 0.9, 7)
  f = lambda x, t: convert(x * 0.5, x, sde.alpha(t), sde.sigma(t), source=Prediction.X0,
                           target=Prediction.SCORE)
  np.testing.assert_allclose(jax.jit(jax.vmap(f))(xs, ts),
                             jnp.stack([f(xs[i], ts[i]) for i in range(7)]), rtol=1e-6)


def test_bad_prediction_type():
  with pytest.raises(ValueError, match="source must be a Prediction"):
    convert(jnp.ones(2), jnp.ones(2), 1.0, 1.0, source="eps", target=Prediction.SCORE)
