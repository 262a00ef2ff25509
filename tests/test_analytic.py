"""The analytic Gaussian-mixture oracle against autodiff, SciPy densities, quadrature and Monte Carlo."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import integrate, stats

from diffusion_jax import analytic, sdes

MIX = analytic.GaussianMixture.create(
    weights=[0.2, 0.5, 0.3],
    means=[[-2.0, 0.5, 1.0], [1.0, -1.0, 0.0], [3.0, 2.0, -1.5]],
    variances=[[0.1, 0.4, 0.2], [0.3, 0.05, 0.5], [0.2, 0.2, 1.0]],
)
SDES = [sdes.VPSDE(), sdes.SubVPSDE(), sdes.VESDE(sigma_min=0.01, sigma_max=20.0)]
IDS = ["vp", "subvp", "ve"]


def scipy_log_prob(gmm, x):
  """The same density through SciPy's multivariate normal: an independent implementation."""
  dens = sum(
      w * stats.multivariate_normal(mean=m, cov=np.diag(v)).pdf(x)
      for w, m, v in zip(np.asarray(gmm.weights), np.asarray(gmm.means), np.asarray(gmm.variances)))
  return np.log(dens)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_log_prob_matches_scipy(sde):
  dm = analytic.DiffusedMixture(MIX, sde)
  xs = jr.normal(jr.key(0), (20, 3)) * 2.0
  for t in (0.0, 0.3, 0.9):
    ours = jax.vmap(dm.log_prob, (0, None))(xs, t)
    ref = scipy_log_prob(dm.marginal(t), np.asarray(xs, np.float64))
    # float32 evaluation of log-densities of size up to ~100: relative 1e-5.
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_score_is_gradient_of_log_prob(sde):
  dm = analytic.DiffusedMixture(MIX, sde)
  xs = jr.normal(jr.key(1), (64, 3)) * 2.5
  ts = jr.uniform(jr.key(2), (64,), minval=1e-3, maxval=1.0)
  score = jax.jit(jax.vmap(dm.score))(xs, ts)
  grad = jax.jit(jax.vmap(jax.grad(dm.log_prob)))(xs, ts)
  # Two float32 routes to the same number (closed form vs reverse-mode autodiff); scores reach ~100
  # near t_min where component variances are 0.05.
  np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-4)


def test_density_integrates_to_one_in_1d():
  gmm = analytic.GaussianMixture.create([0.3, 0.7], [[-1.0], [2.0]], [[0.2], [0.5]])
  dm = analytic.DiffusedMixture(gmm, sdes.VPSDE())
  for t in (0.0, 0.5):
    f = jax.jit(lambda x: jnp.exp(dm.log_prob(jnp.array([x]), t)))
    mass, _ = integrate.quad(lambda x: float(f(x)), -15, 15, limit=200)
    assert mass == pytest.approx(1.0, abs=1e-5)  # float32 density values, adaptive quadrature


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_exact_samples_match_moments(sde):
  dm = analytic.DiffusedMixture(MIX, sde)
  n = 200_000
  for t in (0.0, 0.2, 0.6):
    xs = np.asarray(dm.sample(jr.key(3), t, n), np.float64)
    p_t = dm.marginal(t)
    cov = np.asarray(p_t.covariance(), np.float64)
    mean_se = np.sqrt(np.diag(cov) / n)
    # 5 standard errors per coordinate; covariance entries within 5 SE of a sample covariance
    # (SE ~ sqrt(2/n) * scale for these near-Gaussian marginals, inflated 3x for the mixture's tails).
    assert np.all(np.abs(xs.mean(0) - np.asarray(p_t.mean())) < 5 * mean_se)
    scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert np.all(np.abs(np.cov(xs.T) - cov) < 15 * np.sqrt(2.0 / n) * scale)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_denoised_is_the_posterior_mean(sde):
  dm = analytic.DiffusedMixture(MIX, sde)
  x, t = jnp.array([0.4, -0.3, 0.8]), 0.35
  alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
  # Per component, E[x0 | x_t, k] = mu_k + v_k alpha / (alpha^2 v_k + sigma^2) (x_t - alpha mu_k),
  # weighted by the posterior component probabilities.
  mu, v, w = (np.asarray(a, np.float64) for a in (MIX.means, MIX.variances, MIX.weights))
  var_t = alpha**2 * v + sigma**2
  logp = np.log(w) + stats.norm(alpha * mu, np.sqrt(var_t)).logpdf(np.asarray(x)).sum(-1)
  r = np.exp(logp - logp.max())
  r /= r.sum()
  post = mu + v * alpha / var_t * (np.asarray(x) - alpha * mu)
  np.testing.assert_allclose(dm.denoised(x, t), r @ post, rtol=1e-4, atol=1e-5)  # float32
  np.testing.assert_allclose(dm.eps(x, t), -sigma * dm.score(x, t), rtol=1e-6)


def test_sample_with_components_weights():
  xs, k = MIX.sample_with_components(jr.key(4), 100_000)
  freq = np.bincount(np.asarray(k), minlength=3) / 100_000
  # Binomial SE <= sqrt(0.25 / 1e5) = 1.6e-3; 4 SE.
  np.testing.assert_allclose(freq, MIX.weights, atol=6.4e-3)
  assert xs.shape == (100_000, 3)


def test_bad_mixture_arguments():
  with pytest.raises(ValueError, match=r"means must have shape \(K, D\)"):
    analytic.GaussianMixture.create([1.0], [0.0, 1.0], 1.0)
  with pytest.raises(ValueError, match="weights must have shape"):
    analytic.GaussianMixture.create([0.5, 0.5, 0.1], [[0.0], [1.0]], 1.0)
  with pytest.raises(ValueError, match="variances must be > 0"):
    analytic.GaussianMixture.create([0.5, 0.5], [[0.0], [1.0]], [[1.0], [0.0]])
  with pytest.raises(ValueError, match="weights must be non-negative"):
    analytic.GaussianMixture.create([-0.5, 0.5], [[0.0], [1.0]], 1.0)


def test_eight_gaussians():
  gmm = analytic.eight_gaussians(radius=2.0, std=0.1)
  np.testing.assert_allclose(np.linalg.norm(gmm.means, axis=1), 2.0, rtol=1e-6)
  np.testing.assert_allclose(gmm.mean(), 0.0, atol=1e-6)
