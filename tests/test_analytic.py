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


# --- the labelled mixture: exact conditional oracle -------------------------------------------------

ALL_SDES = SDES + [sdes.CosineVPSDE()]
ALL_IDS = IDS + ["cosine"]


def test_sample_is_sample_with_components_without_the_labels():
  xs, k = MIX.sample_with_components(jr.key(5), 100)
  np.testing.assert_array_equal(MIX.sample(jr.key(5), 100), xs)
  assert k.dtype == jnp.int32


@pytest.mark.parametrize("sde", ALL_SDES, ids=ALL_IDS)
def test_conditional_score_obeys_bayes_rule(sde):
  """grad log p(x_t | y) (component y diffused, on its own) = grad log p(x_t) + grad log p(y | x_t)."""
  dm = analytic.DiffusedMixture(MIX, sde)
  xs = jr.normal(jr.key(6), (16, 3)) * 2.0
  ts = jr.uniform(jr.key(7), (16,), minval=0.05, maxval=0.95)
  for y in range(3):
    # Independent route: a one-component mixture holding component y.
    single = analytic.DiffusedMixture(analytic.GaussianMixture.create(
        jnp.ones(1), MIX.means[y:y + 1], MIX.variances[y:y + 1]), sde)
    want = jax.vmap(single.score)(xs, ts)
    cond = analytic.ConditionalDiffusedMixture(MIX, sde, jnp.int32(y))
    got = jax.vmap(cond.score)(xs, ts)
    bayes = jax.vmap(dm.score)(xs, ts) + jax.vmap(lambda x, t: dm.classifier_grad(x, t, y))(xs, ts)
    # float32 scores up to ~1e2 at small t (component variances 0.05); the Bayes sum cancels terms
    # of that size.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(bayes, want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(jax.vmap(cond.log_prob)(xs, ts), jax.vmap(single.log_prob)(xs, ts),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("sde", ALL_SDES, ids=ALL_IDS)
def test_noisy_classifier_is_normalised_and_its_gradient_is_autodiff(sde):
  dm = analytic.DiffusedMixture(MIX, sde)
  xs = jr.normal(jr.key(8), (16, 3)) * 2.0
  ts = jr.uniform(jr.key(9), (16,), minval=0.05, maxval=0.95)
  log_p = jax.vmap(dm.class_log_probs)(xs, ts)
  np.testing.assert_allclose(jnp.sum(jnp.exp(log_p), axis=1), 1.0, rtol=1e-5)  # float32 sum of 3
  # Bayes' rule with SciPy's densities: p(y | x_t) = w_y N_y(x_t) / sum_k w_k N_k(x_t).
  for x, t, lp in zip(np.asarray(xs, np.float64), np.asarray(ts), np.asarray(log_p)):
    p_t = dm.marginal(t)
    dens = [w * stats.multivariate_normal(m, np.diag(v)).pdf(x) for w, m, v in
            zip(np.asarray(p_t.weights), np.asarray(p_t.means), np.asarray(p_t.variances))]
    np.testing.assert_allclose(np.exp(lp), np.array(dens) / np.sum(dens), rtol=1e-4, atol=1e-6)
  for y in range(3):
    closed = jax.vmap(lambda x, t: dm.classifier_grad(x, t, y))(xs, ts)
    auto = jax.vmap(jax.grad(lambda x, t: dm.class_log_probs(x, t)[y]))(xs, ts)
    np.testing.assert_allclose(closed, auto, rtol=1e-4, atol=1e-4)  # two float32 routes


def test_null_label_gives_the_unconditional_score_and_cond_can_be_traced():
  sde = sdes.VPSDE()
  dm = analytic.DiffusedMixture(MIX, sde)
  cond = analytic.ConditionalDiffusedMixture(MIX, sde, jnp.int32(3))
  x, t = jnp.array([0.4, -0.3, 0.8]), 0.35
  np.testing.assert_array_equal(cond.score(x, t), dm.score(x, t))
  np.testing.assert_array_equal(analytic.ConditionalDiffusedMixture(MIX, sde).score(x, t),
                                dm.score(x, t))  # cond=None means the null label too
  # A per-example condition under vmap, as sample_batch binds it: equal to one call per class.
  labels = jnp.array([0, 1, 2, 3, 1], jnp.int32)
  batched = jax.jit(jax.vmap(lambda y: cond.replace(cond=y).score(x, t)))(labels)
  for row, y in zip(batched, labels):
    np.testing.assert_allclose(row, cond.replace(cond=y).score(x, t), rtol=1e-6, atol=1e-6)
  # Tweedie given y is the posterior mean of component y alone (Gaussian conjugacy).
  alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
  mu, v = np.asarray(MIX.means[1]), np.asarray(MIX.variances[1])
  post = mu + v * alpha / (alpha**2 * v + sigma**2) * (np.asarray(x) - alpha * mu)
  np.testing.assert_allclose(cond.replace(cond=jnp.int32(1)).denoised(x, t), post, rtol=1e-5)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_conditional_marginal_matches_simulated_forward_noising(sde):
  """x_t | y from x0 ~ component y pushed through the SDE's kernel: moments vs the oracle."""
  n = 100_000
  x0, k = MIX.sample_with_components(jr.key(10), n)
  y, t = 2, 0.3
  x0 = x0[np.asarray(k) == y]  # the x0 of class y, about 30,000
  x_t = np.asarray(jax.vmap(lambda kk, x: sde.marginal_sample(kk, x, t))(
      jr.split(jr.key(11), x0.shape[0]), x0), np.float64)
  p_t = analytic.ConditionalDiffusedMixture(MIX, sde, jnp.int32(y)).marginal(t)
  mean, var = np.asarray(p_t.mean()), np.diag(np.asarray(p_t.covariance()))
  m = x_t.shape[0]
  # 5 standard errors for the mean; the variance of a Gaussian coordinate has SE var sqrt(2/m).
  assert np.all(np.abs(x_t.mean(0) - mean) < 5 * np.sqrt(var / m))
  assert np.all(np.abs(x_t.var(0) - var) < 5 * var * np.sqrt(2 / m))
  np.testing.assert_allclose(var, float(sde.alpha(t)) ** 2 * MIX.variances[y] + float(
      sde.sigma(t)) ** 2, rtol=1e-5)  # and it is component y diffused


def test_random_mixture_gives_unequal_overlapping_anisotropic_classes():
  gmm = analytic.random_mixture(jr.key(0), 2, num_components=3, mean_scale=0.8, min_variance=0.2,
                                max_variance=0.5, min_weight=0.2, max_weight=1.0, anisotropy=4.0)
  w, v = np.asarray(gmm.weights), np.asarray(gmm.variances)
  assert gmm.means.shape == (3, 2) and w.max() / w.min() > 1.2  # unequal classes
  np.testing.assert_allclose(v.max(1) / v.min(1), 4.0, rtol=1e-5)  # anisotropic by exactly 4
  # The geometric mean of a component's variances is its base level, inside [min, max].
  base = np.exp(np.log(v).mean(1))
  assert np.all((base >= 0.2 * (1 - 1e-5)) & (base <= 0.5 * (1 + 1e-5)))
  wide = analytic.random_mixture(jr.key(3), 5, num_components=6, anisotropy=10.0)
  np.testing.assert_allclose(np.asarray(wide.variances).max(1) / np.asarray(wide.variances).min(1),
                             10.0, rtol=1e-5)  # float32 powers
  # Overlap: the Bayes classifier p(y | x0) errs on a clear fraction of exact draws.
  x, k = gmm.sample_with_components(jr.key(1), 20_000)
  guess = np.argmax(np.asarray(jax.vmap(gmm.responsibilities)(x)), axis=1)
  error = np.mean(guess != np.asarray(k))
  assert 0.02 < error < 0.5, error  # MC error of a rate ~0.003 at this size
  # The well-separated defaults: almost no overlap.
  sep = analytic.random_mixture(jr.key(0), 8)
  xs, ks = sep.sample_with_components(jr.key(2), 5000)
  assert np.mean(np.argmax(np.asarray(jax.vmap(sep.responsibilities)(xs)), 1) != np.asarray(ks)) < 0.01


def test_random_mixture_errors():
  with pytest.raises(ValueError, match="dim must be an int >= 1"):
    analytic.random_mixture(jr.key(0), 0)
  with pytest.raises(ValueError, match="num_components must be an int >= 1"):
    analytic.random_mixture(jr.key(0), 2, num_components=2.0)
  with pytest.raises(ValueError, match="min_variance <= max_variance"):
    analytic.random_mixture(jr.key(0), 2, min_variance=0.5, max_variance=0.1)
  with pytest.raises(ValueError, match="anisotropy must be >= 1"):
    analytic.random_mixture(jr.key(0), 2, anisotropy=0.5)


def test_benchmark_mixture_is_the_shared_problem():
  np.testing.assert_array_equal(analytic.benchmark_mixture(2).means, analytic.eight_gaussians().means)
  for dim in (1, 16):
    gmm = analytic.benchmark_mixture(dim)
    ref = analytic.random_mixture(jr.key(dim), dim)
    jax.tree.map(np.testing.assert_array_equal, gmm, ref)
    assert gmm.means.shape == (4, dim)
