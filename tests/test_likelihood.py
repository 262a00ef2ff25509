"""Probability-flow ODE likelihoods, bits/dim and the DDPM bound against closed forms.

References: the analytic GMM oracle (exact log p_t and score at every t), closed-form Gaussian
flows, a discrete distribution with known entropy scored through an exact model, and a
Monte-Carlo estimate of the DDPM bound through the forward chain.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.scipy.special import log_ndtr

from diffusion_jax import analytic, sdes
from diffusion_jax import likelihood as lk


def _mixture(dim: int) -> analytic.GaussianMixture:
  """2-D: eight Gaussians on a ring; otherwise 4 components with random means and per-dimension
  variances between 0.01 and 0.1 (log-uniform): well-separated modes at several scales."""
  if dim == 2:
    return analytic.eight_gaussians()
  return analytic.random_mixture(jr.key(dim), dim)


_SDES = {"vp": sdes.VPSDE(), "subvp": sdes.SubVPSDE(), "ve": sdes.VESDE()}


@functools.partial(jax.jit, static_argnames=("sde", "variable", "divergence", "exact_prior"))
def _batch_logp(x, keys, oracle, *, sde, variable=lk.InTime(), divergence=lk.ExactDivergence(),
                exact_prior=True, rtol=1e-5, atol=1e-5):
  """log_likelihood over a batch with the exact score; the exact p_T as prior isolates the ODE."""
  prior = (lambda z: oracle.log_prob(z, sde.T)) if exact_prior else None
  fn = lambda x, key: lk.log_likelihood(sde, oracle.score, x, key=key, divergence=divergence,
                                        variable=variable, prior_logp_fn=prior, rtol=rtol,
                                        atol=atol)
  return jax.vmap(fn)(x, keys)


def _problem(sde_name, dim, num, seed=1):
  sde = _SDES[sde_name]
  oracle = analytic.DiffusedMixture(_mixture(dim), sde)
  t_min = sde.t_min_default
  x = oracle.sample(jr.key(seed), t_min, num)
  true = jax.vmap(lambda x: oracle.log_prob(x, t_min))(x)
  return sde, oracle, x, true


# One batch size everywhere, so tests with the same static arguments share one compilation.
_NUM = 32


@pytest.mark.parametrize("sde_name, variable, dim", [
    *[(name, lk.InTime(), dim) for name in ("vp", "subvp") for dim in (2, 16, 64)],
    *[("ve", lk.InSigma(), dim) for dim in (2, 16, 64)],
    ("ve", lk.InTime(), 2),
])
def test_ode_integration_error_with_exact_score(sde_name, variable, dim):
  """Issue target: at rtol = atol = 1e-5 with the exact divergence and the exact marginal at T
  as prior, the error against the analytic log p_t_min is at most 1e-4 nats per dimension."""
  sde, oracle, x, true = _problem(sde_name, dim, num=_NUM)
  out = _batch_logp(x, jr.split(jr.key(0), _NUM), oracle, sde=sde, variable=variable)
  assert bool(jnp.all(out.success))
  err = np.abs(np.asarray(out.logp - true)) / dim
  assert err.mean() <= 1e-4, err
  # The record is consistent: logp = prior term + divergence integral.
  np.testing.assert_allclose(out.logp, out.prior_logp + out.delta_logp, rtol=1e-6, atol=1e-5)


def test_standard_prior_error_is_the_prior_mismatch():
  """With the N(0, I) prior the extra error is exactly log N(z; 0, I) - log p_T(z) at the same z,
  and it is small but visible for VP (alpha(T)^2 = 4e-5 of the data variance survives)."""
  sde, oracle, x, true = _problem("vp", 2, num=_NUM)
  keys = jr.split(jr.key(0), _NUM)
  exact = _batch_logp(x, keys, oracle, sde=sde)
  standard = _batch_logp(x, keys, oracle, sde=sde, exact_prior=False)
  mismatch = jax.vmap(sde.prior_logp)(standard.z) - jax.vmap(lambda z: oracle.log_prob(z, sde.T))(standard.z)
  # Same ODE and steps (the prior enters after the solve): identical up to float32 round-off.
  np.testing.assert_allclose(standard.logp - exact.logp, mismatch, atol=1e-4)
  assert 1e-7 < float(jnp.mean(jnp.abs(mismatch))) < 1e-2


@pytest.mark.parametrize("sde, variable", [(sdes.VPSDE(), lk.InTime()), (sdes.VESDE(), lk.InSigma())])
def test_single_gaussian_to_float64_precision(sde, variable):
  """Data N(m, s^2 I): p_t = N(alpha m, (alpha^2 s^2 + sigma^2) I) and the score is linear, so the
  ODE is smooth and tight tolerances reach near float64 round-off."""
  with jax.enable_x64(True):
    gmm = analytic.GaussianMixture.create(jnp.ones(1), jnp.array([[0.5, -1.0, 2.0]]),
                                          jnp.array([[0.3, 1.0, 2.0]]))
    oracle = analytic.DiffusedMixture(gmm, sde)
    t_min = sde.t_min_default
    x = jnp.array([[0.1, 0.2, 0.3], [1.5, -2.0, 4.0]], jnp.float64)
    fn = jax.jit(jax.vmap(lambda x: lk.log_likelihood(
        sde, oracle.score, x, key=None, variable=variable, rtol=1e-12, atol=1e-12,
        prior_logp_fn=lambda z: oracle.log_prob(z, sde.T))))
    out = fn(x)
    true = jax.vmap(lambda x: oracle.log_prob(x, t_min))(x)
    assert out.logp.dtype == jnp.float64
    # 1e-9 nats/dim: about 1e3 steps of local error 1e-12 plus round-off in log-densities of size ~10.
    np.testing.assert_allclose(out.logp, true, atol=3e-9)


@pytest.mark.parametrize("probe", [lk.Probe.RADEMACHER, lk.Probe.GAUSSIAN])
def test_hutchinson_agrees_with_exact_within_its_standard_error(probe):
  sde, oracle, x, _ = _problem("vp", 16, num=_NUM)
  keys = jr.split(jr.key(3), _NUM)
  exact = _batch_logp(x, keys, oracle, sde=sde)
  hutch = _batch_logp(x, keys, oracle, sde=sde, divergence=lk.Hutchinson(16, probe))
  assert hutch.delta_logp_probes.shape == (_NUM, 16)
  zscores = np.asarray((hutch.logp - exact.logp) / hutch.logp_se)
  # With 16 probes the z-score follows roughly a t-distribution with 15 degrees of freedom:
  # |z| > 5 has probability ~2e-4 per example, so over 32 examples this fails only on a real bias.
  # (With 8 probes the per-probe estimates are skewed enough that the SE is sometimes far too small.)
  assert np.all(np.abs(zscores) < 5), zscores
  # The standard error is calibrated: E[z^2] = 15/13 for t_15; 32 draws put the mean within
  # [0.5, 2.5] unless the reported SE is off by a factor of ~1.4 or more.
  assert 0.5 < np.mean(zscores**2) < 2.5, zscores


def test_vmap_runs_each_example_with_its_own_steps():
  sde, oracle, x, _ = _problem("vp", 2, num=_NUM)
  batched = _batch_logp(x, jr.split(jr.key(0), _NUM), oracle, sde=sde)
  single = jax.jit(lambda x: lk.log_likelihood(sde, oracle, x, key=None,
                                               prior_logp_fn=lambda z: oracle.log_prob(z, sde.T)))
  for i in range(3):
    one = single(x[i])
    assert int(one.nfe) == int(batched.nfe[i])
    # Same steps; only XLA's fusion differs: float32 round-off of log-densities of size ~5.
    np.testing.assert_allclose(one.logp, batched.logp[i], atol=1e-5)
  assert len(set(np.asarray(batched.nfe).tolist())) > 1  # the examples really took different paths


@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.SubVPSDE(), sdes.VESDE()])
def test_sigma_variable_inverts_to_time(sde):
  """InSigma needs t(s) for s = sigma/alpha: closed form for VE, bisection in log t otherwise."""
  variable = lk.InSigma()
  ss = variable.variable(sde, jnp.array([1e-5, 1e-3, 0.1, 0.5, 1.0]) * sde.T)
  # Bisection to float32 resolution in log t: s comes back within a few ulps. (t itself is
  # ill-conditioned near 0 for VE, where ds/dt = s log(sigma_max/sigma_min) and s ~ sigma_min.)
  np.testing.assert_allclose(variable.variable(sde, variable.time(sde, ss)), ss, rtol=2e-6)


@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.VESDE()])
def test_encoder_matches_the_closed_form_gaussian_flow(sde):
  """For data N(m, s^2 I), the flow keeps (x_t - alpha m) / sqrt(alpha^2 s^2 + sigma^2) constant,
  so z is an affine map of x; decode inverts it."""
  m, s2 = jnp.array([0.5, -1.0]), jnp.array([0.3, 2.0])
  oracle = analytic.DiffusedMixture(analytic.GaussianMixture.create(jnp.ones(1), m[None], s2[None]),
                                    sde)
  t_min, T = sde.t_min_default, sde.T
  std = lambda t: jnp.sqrt(sde.alpha(t) ** 2 * s2 + sde.sigma(t) ** 2)
  x = jnp.array([[0.3, 1.0], [-2.0, 0.0]])
  expected = sde.alpha(T) * m + std(T) * (x - sde.alpha(t_min) * m) / std(t_min)
  trip = jax.jit(jax.vmap(lambda x: lk.round_trip(sde, oracle.score, x, rtol=1e-6, atol=1e-6)))(x)
  # rtol 1e-6 on |z| up to ~3 (VP) or ~150 (VE): errors of a few 1e-6 relative.
  np.testing.assert_allclose(trip.z, expected, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(trip.x_reconstructed, x, atol=1e-4)
  assert float(jnp.max(trip.max_abs_error)) < 1e-4


def test_round_trip_error_shrinks_with_tolerance():
  sde, oracle, x, _ = _problem("vp", 2, num=8)
  trip = jax.jit(jax.vmap(lambda x, tol: lk.round_trip(sde, oracle.score, x, rtol=tol, atol=tol)),
                 )
  loose = trip(x, jnp.full((8,), 1e-3))
  tight = trip(x, jnp.full((8,), 1e-6))
  assert float(jnp.mean(tight.rms_error)) < 0.1 * float(jnp.mean(loose.rms_error))
  assert float(jnp.mean(tight.nfe)) > float(jnp.mean(loose.nfe))


# -------------------------------------------------------------------------------------------
# bits/dim of discrete data
# -------------------------------------------------------------------------------------------

_PROBS = np.array([0.1, 0.2, 0.3, 0.4])  # per-pixel level probabilities, independent pixels
_LEVELS = len(_PROBS)


def _box_logp(x, lo, hi, alpha=1.0, sigma=None):
  """log-density of the dequantized independent-pixel distribution (a mixture of boxes, one per
  level), or of alpha x + sigma noise when sigma is given: a sum of Gaussian-CDF differences."""
  width = (hi - lo) / _LEVELS
  left = lo + width * jnp.arange(_LEVELS)
  log_w = jnp.log(jnp.asarray(_PROBS, x.dtype)) - jnp.log(alpha * width)
  if sigma is None:
    inside = (x[:, None] >= left) & (x[:, None] < left + width)
    per_dim = jnp.max(jnp.where(inside, log_w, -jnp.inf), axis=-1)
  else:
    upper = (x[:, None] - alpha * left) / sigma
    lower = (x[:, None] - alpha * (left + width)) / sigma
    # log(Phi(upper) - Phi(lower)), written on the lower tail where log_ndtr is accurate.
    flip = lower + upper > 0
    a, b = jnp.where(flip, -upper, lower), jnp.where(flip, -lower, upper)
    log_mass = log_ndtr(b) + jnp.log1p(-jnp.exp(log_ndtr(a) - log_ndtr(b)))
    per_dim = jax.nn.logsumexp(log_w + log_mass, axis=-1)
  return jnp.sum(per_dim)


@pytest.mark.parametrize("data_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_bits_per_dim_of_exact_discrete_model_is_its_entropy(data_range):
  """The exact dequantized model has density P(k) / bin volume on each bin, so every draw gives
  -log2 P(k) / D exactly: this pins the data-scaling term for both ranges."""
  lo, hi = data_range
  pixels = jr.choice(jr.key(0), _LEVELS, (512, 6), p=jnp.asarray(_PROBS))
  bpd = jax.vmap(lambda p, key: lk.bits_per_dim(lambda x, _: _box_logp(x, lo, hi), p, key=key,
                                                num_draws=4, num_levels=_LEVELS,
                                                data_range=data_range))(pixels, jr.split(jr.key(1), 512))
  expected = -np.sum(np.log2(_PROBS[np.asarray(pixels)]), axis=1) / 6
  np.testing.assert_allclose(bpd.bpd, expected, rtol=1e-5)  # float32 logs
  np.testing.assert_allclose(bpd.bpd_se, 0.0, atol=1e-5)  # the density is flat on every bin
  entropy = -np.sum(_PROBS * np.log2(_PROBS))
  # 512 x 6 independent pixels: the Monte-Carlo SE of the mean of -log2 p is ~0.012 bits.
  assert abs(float(jnp.mean(bpd.bpd)) - entropy) < 0.05


def test_bits_per_dim_through_the_ode_matches_entropy():
  """The same discrete distribution, scored through the probability-flow ODE with the exact score
  of its diffused dequantized density: the ODE value equals the analytic value at t_min, and that
  equals -log2 P(k)/D up to the blur of the bin edges by sigma(t_min)."""
  sde = sdes.VPSDE()
  lo, hi, dims = -1.0, 1.0, 3
  t_min = sde.t_min_default

  def logp_t(x, t):
    return _box_logp(x, lo, hi, sde.alpha(t), sde.sigma(t))

  score = lambda x, t: jax.grad(logp_t)(x, t)
  # The bin edges make p_t_min nearly discontinuous (width sigma(t_min) = 1.4e-3), and a solver
  # can step over such a feature without its error estimate noticing: at rtol = atol = 1e-5 the
  # error was ~2e-3 bits/dim on average (up to 2e-2), at 1e-7 ~1e-5. So this test runs at 1e-7.
  ode_logp = lambda x, key: lk.log_likelihood(sde, score, x, key=key, rtol=1e-7, atol=1e-7,
                                              prior_logp_fn=lambda z: logp_t(z, sde.T)).logp
  exact_logp = lambda x, key: logp_t(x, jnp.asarray(t_min))
  pixels = jr.choice(jr.key(0), _LEVELS, (8, dims), p=jnp.asarray(_PROBS))
  keys = jr.split(jr.key(1), 8)
  run = lambda fn: jax.jit(jax.vmap(lambda p, key: lk.bits_per_dim(
      fn, p, key=key, num_draws=2, num_levels=_LEVELS, data_range=(lo, hi))))(pixels, keys)
  via_ode, via_density = run(ode_logp), run(exact_logp)
  # Measured at 1e-7: at most 4e-5 bits/dim; 2e-4 leaves room for other float32 round-off.
  np.testing.assert_allclose(via_ode.bpd_draws, via_density.bpd_draws, atol=2e-4)
  expected = -np.sum(np.log2(_PROBS[np.asarray(pixels)]), axis=1) / dims
  # sigma(t_min) = 1.4e-3 blurs each bin edge: a coordinate within ~sigma of an edge (0.6% of
  # draws for bins of width 0.5) loses up to 1 bit there, so the average bias is <~ 0.006 bits/dim.
  assert abs(float(jnp.mean(via_density.bpd_draws)) - float(np.mean(expected))) < 0.02


def test_bits_per_dim_offset():
  # log2(L / (hi - lo)): the "+8" of score_sde for [0, 1] and "+7" for [-1, 1] at 256 levels.
  assert lk.bits_per_dim_offset(256, (0.0, 1.0)) == pytest.approx(8.0)
  assert lk.bits_per_dim_offset(256, (-1.0, 1.0)) == pytest.approx(7.0)
  x = lk.dequantize(jr.key(0), jnp.array([0, 255, 17]), num_levels=256, data_range=(-1.0, 1.0))
  assert bool(jnp.all((x >= -1.0) & (x < 1.0)))
  np.testing.assert_array_equal(np.floor((np.asarray(x) + 1) * 128), [0, 255, 17])


# -------------------------------------------------------------------------------------------
# The DDPM bound
# -------------------------------------------------------------------------------------------


def _dirac_mixture(levels, dims, data_range=(-1.0, 1.0)):
  """The discrete independent-pixel distribution on x0 = lo + (hi-lo) k/(L-1), as a mixture of
  (nearly) Dirac components: its diffused score is exact for the DDPM chain."""
  lo, hi = data_range
  grid = np.array(list(itertools.product(range(levels), repeat=dims)))
  weights = np.prod(_PROBS[grid], axis=1)
  return analytic.GaussianMixture.create(weights, lo + (hi - lo) * grid / (levels - 1), 1e-8)


def test_ddpm_elbo_equals_monte_carlo_through_the_forward_chain():
  """E_q[log q(x_1:N | x0) - log p(x_0:N)] sampled through the forward kernels q(x_n | x_{n-1})
  equals the closed-form KL sum: the same bound computed two independent ways."""
  sde, num_steps, dims = sdes.VPSDE(), 8, 2
  # A deliberately imperfect model (a blurred score), so the KL terms are not all near zero.
  oracle = analytic.DiffusedMixture(_dirac_mixture(_LEVELS, dims), sde)
  score = lambda x, t: 0.8 * oracle.score(x, t)
  pixels = jnp.array([1, 3])
  x0 = -1.0 + 2.0 * pixels / (_LEVELS - 1)
  n_mc = 20000

  elbo = jax.jit(jax.vmap(lambda key: lk.ddpm_elbo(sde, score, pixels, key=key,
                                                   num_steps=num_steps, num_levels=_LEVELS)))
  closed = elbo(jr.split(jr.key(0), 4000)).bpd * dims * math.log(2)

  ts = np.arange(1, num_steps + 1) / num_steps
  abar = np.exp(2 * np.asarray(sde.log_alpha(jnp.asarray(ts)), np.float64))
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  betas = 1 - abar / abar_prev
  post_var = (1 - abar_prev) * betas / (1 - abar)

  def chain(key):
    noises = jr.normal(key, (num_steps, dims))
    xs, x = [], x0
    log_q = 0.0
    for n in range(num_steps):  # forward kernels q(x_n | x_{n-1}) = N(sqrt(1 - beta_n) x, beta_n)
      mean = jnp.sqrt(1 - betas[n]) * x
      x = mean + jnp.sqrt(betas[n]) * noises[n]
      log_q += jnp.sum(jax.scipy.stats.norm.logpdf(x, mean, jnp.sqrt(betas[n])))
      xs.append(x)
    log_p = jnp.sum(jax.scipy.stats.norm.logpdf(xs[-1]))
    for n in range(num_steps, 0, -1):  # reverse kernels p(x_{n-1} | x_n), n is 1-based
      x_n = xs[n - 1]
      eps = -jnp.sqrt(1 - abar[n - 1]) * score(x_n, ts[n - 1])
      x0_hat = (x_n - jnp.sqrt(1 - abar[n - 1]) * eps) / jnp.sqrt(abar[n - 1])
      mean = (jnp.sqrt(abar_prev[n - 1]) * betas[n - 1] * x0_hat
              + jnp.sqrt(1 - betas[n - 1]) * (1 - abar_prev[n - 1]) * x_n) / (1 - abar[n - 1])
      if n > 1:
        log_p += jnp.sum(jax.scipy.stats.norm.logpdf(xs[n - 2], mean, jnp.sqrt(post_var[n - 1])))
      else:  # the discretized Gaussian decoder over bins of half-width 1/(L-1)
        half = 1.0 / (_LEVELS - 1)
        cdf = lambda v: jax.scipy.stats.norm.cdf(v, mean, jnp.sqrt(betas[0]))
        upper = jnp.where(pixels == _LEVELS - 1, 1.0, cdf(x0 + half))
        lower = jnp.where(pixels == 0, 0.0, cdf(x0 - half))
        log_p += jnp.sum(jnp.log(upper - lower))
    return log_q - log_p

  mc = jax.jit(jax.vmap(chain))(jr.split(jr.key(1), n_mc))
  se = math.sqrt(float(jnp.var(mc)) / n_mc + float(jnp.var(closed)) / closed.size)
  # Two unbiased estimates of one number: they agree within 4 combined standard errors.
  assert abs(float(jnp.mean(mc)) - float(jnp.mean(closed))) < 4 * se, (jnp.mean(mc), jnp.mean(closed), se)


def test_ddpm_elbo_with_exact_score_bounds_the_discrete_nll():
  """With the exact score the bound lies above -log2 P(k)/D and closes in on it as N grows."""
  sde, dims = sdes.VPSDE(), 2
  oracle = analytic.DiffusedMixture(_dirac_mixture(_LEVELS, dims), sde)
  pixels = jr.choice(jr.key(0), _LEVELS, (256, dims), p=jnp.asarray(_PROBS))
  keys = jr.split(jr.key(1), 256)
  nll = -np.sum(np.log2(_PROBS[np.asarray(pixels)]), axis=1) / dims
  gaps = {}
  for num_steps in (100, 1000):
    out = jax.jit(jax.vmap(lambda p, key: lk.ddpm_elbo(sde, oracle.score, p, key=key,
                                                       num_steps=num_steps,
                                                       num_levels=_LEVELS)))(pixels, keys)
    gap = np.asarray(out.bpd) - nll
    gaps[num_steps] = (gap.mean(), gap.std() / math.sqrt(gap.size))
  # A bound: the mean gap is non-negative up to 3 standard errors of its Monte-Carlo estimate.
  for mean, se in gaps.values():
    assert mean > -3 * se
  # Finer chains have Gaussian reverse kernels closer to the true ones: the gap shrinks, and at
  # N = 1000 it is a small fraction of a bit per dimension.
  assert gaps[1000][0] < gaps[100][0] - 3 * gaps[100][1]
  assert gaps[1000][0] < 0.1


# -------------------------------------------------------------------------------------------
# Bad input
# -------------------------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
  sde = sdes.VPSDE()
  score = lambda x, t: -x
  x = jnp.zeros(2)
  with pytest.raises(ValueError, match="t_min"):
    lk.log_likelihood(sde, score, x, key=None, t_min=0.0)
  with pytest.raises(ValueError, match="t_min"):
    lk.log_likelihood(sde, score, x, key=None, t_max=2.0)
  with pytest.raises(ValueError, match="key"):
    lk.log_likelihood(sde, score, x, key=None, divergence=lk.Hutchinson(2))
  with pytest.raises(ValueError, match="num_probes"):
    lk.Hutchinson(0)
  with pytest.raises(ValueError, match="x must be a floating-point"):
    lk.log_likelihood(sde, score, jnp.zeros(2, jnp.int32), key=None)
  with pytest.raises(ValueError, match="num_levels"):
    lk.dequantize(jr.key(0), jnp.zeros(2, jnp.int32), num_levels=1)
  with pytest.raises(ValueError, match="data_range"):
    lk.bits_per_dim_offset(256, (1.0, 0.0))
  with pytest.raises(ValueError, match="pixels"):
    lk.bits_per_dim(lambda x, k: 0.0, jnp.zeros(2), key=jr.key(0))
  with pytest.raises(ValueError, match="num_draws"):
    lk.bits_per_dim(lambda x, k: 0.0, jnp.zeros(2, jnp.int32), key=jr.key(0), num_draws=0)
  with pytest.raises(ValueError, match="variance preserving"):
    lk.ddpm_elbo(sdes.VESDE(), score, jnp.zeros(2, jnp.int32), key=jr.key(0))
  with pytest.raises(ValueError, match="num_steps"):
    lk.ddpm_elbo(sde, score, jnp.zeros(2, jnp.int32), key=jr.key(0), num_steps=1)
