"""Probability-flow ODE likelihoods, the diffrax driver, bits/dim and the DDPM bound against closed forms.

References: the analytic GMM oracle (exact log p_t and score at every t), closed-form Gaussian
flows (the flow of N(m, s^2 I) data is affine in x), closed-form ODE solutions, a counting vector
field (host callback), central finite differences in float64, a discrete distribution with known
entropy scored through an exact model, and a Monte-Carlo estimate of the DDPM bound through the
forward chain.
"""

import functools
import itertools
import math

import diffrax
import flax.struct
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.scipy.special import log_ndtr

from diffusion_jax import analytic, sampling, sdes
from diffusion_jax import likelihood as lk
from diffusion_jax.samplers import AdaptiveODE
import harness as H


_mixture = analytic.benchmark_mixture  # eight Gaussians in 2-D, random_mixture(key(dim), dim) else


_SDES = dict(zip(("vp", "subvp", "ve", "cosine"), H.SDES))


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


def _gaussian(sde, m, s2):
  return analytic.DiffusedMixture(analytic.GaussianMixture.create(jnp.ones(1), m[None], s2[None]),
                                  sde)


def _gaussian_flow(sde, m, s2, x, t_from, t_to):
  """The exact flow of N(m, s2) data: (x - alpha m)/std is constant along the PF-ODE."""
  std = lambda t: jnp.sqrt(sde.alpha(t) ** 2 * s2 + sde.sigma(t) ** 2)
  return sde.alpha(t_to) * m + std(t_to) * (x - sde.alpha(t_from) * m) / std(t_from)


# One batch size everywhere, so tests with the same static arguments share one compilation.
_NUM = 32


@pytest.mark.parametrize("sde_name, variable, dim", [
    *[(name, lk.InTime(), dim) for name in ("vp", "subvp", "cosine") for dim in (2, 16)],
    *[("ve", lk.InSigma(), dim) for dim in (2, 16)],
    ("vp", lk.InTime(), 64), ("ve", lk.InTime(), 2),
])
def test_ode_integration_error_with_exact_score(sde_name, variable, dim):
  """At rtol = atol = 1e-5 with the exact divergence and the exact marginal at T as prior, the
  error against the analytic log p_t_min is the ODE error alone."""
  sde, oracle, x, true = _problem(sde_name, dim, num=_NUM)
  out = _batch_logp(x, jr.split(jr.key(0), _NUM), oracle, sde=sde, variable=variable)
  assert bool(jnp.all(out.success))
  err = np.abs(np.asarray(out.logp - true)) / dim
  # Local control at 1e-5 nats/dim per step over ~15-25 steps: measured means 0.5-3e-5 nats/dim
  # on these problems (benchmarks/likelihood.py); 6e-5 fails on a solver that is 2x worse.
  assert err.mean() <= 6e-5, err
  # The record is consistent: logp = prior term + divergence integral.
  np.testing.assert_allclose(out.logp, out.prior_logp + out.delta_logp, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "cosine"])
def test_standard_prior_log_likelihood_is_the_closed_form(sde_name):
  """Data N(m, s^2): with the SDE's own prior, log p_ode(x) = log N(z*; 0, prior_std^2) + sum log
  (std_T / std_t_min) with z* the exact affine flow of x; the prior mismatch is thereby exact too."""
  sde = _SDES[sde_name]
  m, s2 = jnp.array([0.5, -1.0, 0.2]), jnp.array([0.3, 2.0, 0.05])
  oracle = _gaussian(sde, m, s2)
  t_min, T = sde.t_min_default, sde.T
  x = oracle.sample(jr.key(4), t_min, 8)
  std = lambda t: jnp.sqrt(sde.alpha(t) ** 2 * s2 + sde.sigma(t) ** 2)
  z_star = jax.vmap(lambda x: _gaussian_flow(sde, m, s2, x, t_min, T))(x)
  expected = (jax.vmap(sde.prior_logp)(z_star) + jnp.sum(jnp.log(std(T) / std(t_min))))
  out = jax.jit(jax.vmap(lambda x: lk.log_likelihood(sde, oracle, x, rtol=1e-6, atol=1e-6)))(x)
  assert bool(jnp.all(out.success))
  # The score is linear, so the ODE is smooth: at 1e-6 the solve is good to ~1e-5 in z (|z| < 50
  # for VE) and in logp; float32 log-densities of size ~20 carry ~2e-6 of round-off.
  np.testing.assert_allclose(out.z, z_star, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(out.logp, expected, rtol=0, atol=5e-5)


@pytest.mark.parametrize("sde, variable", [(sdes.VPSDE(), lk.InTime()), (sdes.VESDE(), lk.InSigma()),
                                           (sdes.VPSDE(2.0, 2.0), lk.InSigma())])
def test_single_gaussian_to_float64_precision(sde, variable):
  """Data N(m, s^2 I): p_t = N(alpha m, (alpha^2 s^2 + sigma^2) I) and the score is linear, so the
  ODE is smooth and tight tolerances reach near float64 round-off (a constant-beta VP included)."""
  with jax.enable_x64(True):
    oracle = _gaussian(sde, jnp.array([0.5, -1.0, 2.0]), jnp.array([0.3, 1.0, 2.0]))
    t_min = sde.t_min_default
    x = jnp.array([[0.1, 0.2, 0.3], [1.5, -2.0, 4.0]], jnp.float64)
    fn = jax.jit(jax.vmap(lambda x: lk.log_likelihood(
        sde, oracle.score, x, variable=variable, rtol=1e-12, atol=1e-12, max_steps=8192,
        prior_logp_fn=lambda z: oracle.log_prob(z, sde.T))))
    out = fn(x)
    true = jax.vmap(lambda x: oracle.log_prob(x, t_min))(x)
    assert out.logp.dtype == jnp.float64 and bool(jnp.all(out.success))
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
  assert np.all(np.abs(zscores) < 5), zscores
  # The standard error is calibrated: E[z^2] = 15/13 for t_15; 32 draws put the mean within
  # [0.5, 2.5] unless the reported SE is off by a factor of ~1.4 or more.
  assert 0.5 < np.mean(zscores**2) < 2.5, zscores


def test_given_probes_give_the_same_estimate_everywhere():
  """The same probes, passed as probes=, as GivenProbes or drawn from the same key, give the same
  log-likelihood, call after call."""
  sde, oracle, x, _ = _problem("vp", 16, num=4)
  hutch = lk.Hutchinson(3)
  key = jr.key(9)
  probes = hutch.draw(key, x[0])
  run = jax.jit(lambda x, probes: lk.log_likelihood(sde, oracle, x, divergence=hutch,
                                                    probes=probes).logp)
  first, again = run(x[0], probes), run(x[0], probes)
  given = jax.jit(lambda x, d: lk.log_likelihood(sde, oracle, x, divergence=d).logp)(
      x[0], lk.GivenProbes(probes))
  drawn = jax.jit(lambda x, k: lk.log_likelihood(sde, oracle, x, key=k, divergence=hutch).logp)(
      x[0], key)
  assert float(first) == float(again)  # deterministic given the probes: bitwise
  np.testing.assert_allclose(given, first, rtol=1e-6)  # the same program, compiled twice
  # Drawn inside the solve from the same key: the same probes, bit for bit ...
  np.testing.assert_array_equal(jax.jit(hutch.init)(key, x[0]), probes)
  # ... but another program, whose float32 round-off may flip an accept/reject decision: the
  # two then agree to the solver's tolerance, atol * D = 1.6e-4 nats per step.
  np.testing.assert_allclose(drawn, first, atol=2e-4)
  other = run(x[0], hutch.draw(jr.key(10), x[0]))
  assert float(other) != float(first)  # the probes do matter


@pytest.mark.parametrize("probe", [lk.Probe.RADEMACHER, lk.Probe.GAUSSIAN])
def test_hutchinson_mean_over_many_probes_is_the_exact_divergence(probe):
  """On v(x) = A x + sin(x) the divergence is tr(A) + sum cos(x_i); the mean of 20,000 probe
  estimates lands within 4 standard errors (computed from the same estimates) of it."""
  a = jr.normal(jr.key(0), (6, 6))
  x = jr.normal(jr.key(1), (6,))
  velocity = lambda y: a @ y + jnp.sin(y)
  exact_v, exact_div = lk.ExactDivergence()(velocity, x, None)
  truth = float(jnp.trace(a) + jnp.sum(jnp.cos(x)))
  np.testing.assert_allclose(exact_div, [truth], rtol=1e-5)  # float32 trace of a 6x6 Jacobian
  probes = lk.Hutchinson(20_000, probe).draw(jr.key(2), x)
  v, estimates = lk.GivenProbes(probes)(velocity, x, probes)
  np.testing.assert_allclose(v, exact_v, rtol=1e-6)
  se = float(jnp.std(estimates)) / math.sqrt(estimates.size)
  assert abs(float(jnp.mean(estimates)) - truth) < 4 * se


def test_vmap_runs_each_example_with_its_own_steps():
  sde, oracle, x, _ = _problem("vp", 2, num=_NUM)
  batched = _batch_logp(x, jr.split(jr.key(0), _NUM), oracle, sde=sde)
  single = jax.jit(lambda x: lk.log_likelihood(sde, oracle, x,
                                               prior_logp_fn=lambda z: oracle.log_prob(z, sde.T)))
  for i in range(3):
    one = single(x[i])
    assert int(one.nfe) == int(batched.nfe[i])
    # Same steps; only XLA's fusion differs: float32 round-off of log-densities of size ~5.
    np.testing.assert_allclose(one.logp, batched.logp[i], atol=1e-5)
  assert len(set(np.asarray(batched.nfe).tolist())) > 1  # the examples really took different paths


# -------------------------------------------------------------------------------------------
# The diffrax driver: exact evaluation counts, failures, closed-form ODEs
# -------------------------------------------------------------------------------------------


_COUNT_SDE = sdes.VPSDE()
_COUNT_ORACLE = analytic.DiffusedMixture(_mixture(2), _COUNT_SDE)
_CALLS = []


def _counted_score(x, t):
  """The exact score plus a host-side count of how often it is really evaluated."""
  jax.debug.callback(lambda: _CALLS.append(1))
  return _COUNT_ORACLE.score(x, t)


# Module-level jits with the tolerance traced: one compilation for every tolerance.
_count_logp = jax.jit(lambda x, tol: lk.log_likelihood(_COUNT_SDE, _counted_score, x, rtol=tol,
                                                       atol=tol))
_count_encode = jax.jit(lambda x, tol: lk.encode(_COUNT_SDE, _counted_score, x, rtol=tol, atol=tol))


def _host_count(fn, *args):
  _CALLS.clear()
  out = fn(*args)
  jax.effects_barrier()
  return out, len(_CALLS)


@pytest.mark.parametrize("tol", [1e-3, 1e-7])
def test_nfe_is_exactly_the_number_of_score_evaluations(tol):
  """Counted on the host: log_likelihood, encode and AdaptiveODE report every evaluation they
  make, at a tolerance where the first step is accepted and one where it is rejected (there
  diffrax's own 1 + 6 num_steps undercounts by one evaluation per rejection of the first step)."""
  x = _COUNT_ORACLE.sample(jr.key(1), _COUNT_SDE.t_min_default, 1)[0]
  out, calls = _host_count(_count_logp, x, tol)
  assert int(out.nfe) == calls and bool(out.success)
  enc, calls = _host_count(_count_encode, x, tol)
  assert int(enc.nfe) == calls
  sampler = AdaptiveODE(rtol=tol, atol=tol)
  run = jax.jit(jax.vmap(lambda z: sampling.sample(_COUNT_SDE, _counted_score, sampler,
                                                   jnp.array([1.0, 1e-3]), z, key=jr.key(0)).nfe))
  rejected_first = False
  for i in range(3):
    z = jr.normal(jr.key(i), (1, 2))
    nfe, calls = _host_count(run, z)
    assert int(nfe[0]) == calls
    sol = sampler.solve(_COUNT_SDE, _COUNT_ORACLE, jnp.float32(1.0), jnp.float32(1e-3), z[0])
    rejected_first |= int(sol.num_rejected) > 0
  assert calls >= 7  # at least one step (1 + 6): the count is not trivially zero
  if tol == 1e-7:
    assert rejected_first  # the case the count used to get wrong is exercised


def test_solve_ode_against_a_closed_form_and_backwards():
  """y' = -y + cos t from y(0) = a0: a(t) = (a0 - 1/2) e^-t + (cos t + sin t)/2; a harmonic
  oscillator solved forwards and back returns to its start."""
  exact = lambda a0, t: (a0 - 0.5) * np.exp(-t) + 0.5 * (np.cos(t) + np.sin(t))
  solve = jax.jit(lambda fn_id, y, s0, s1, tol: lk.solve_ode(
      [lambda t, y: -y + jnp.cos(t), lambda t, y: jnp.stack([y[1], -y[0]])][fn_id], y, s0, s1,
      rtol=tol, atol=tol), static_argnums=0)
  y0 = jnp.array([1.0, 2.0])
  for tol in (1e-4, 1e-6):
    sol = solve(0, y0, 0.0, 5.0, tol)
    assert bool(sol.success)
    # A contracting ODE: the global error stays within a small multiple of the tolerance;
    # float32 round-off (~1e-7 relative) sets the floor.
    assert np.max(np.abs(np.asarray(sol.y) - exact(np.asarray(y0), 5.0))) < 10 * tol + 1e-6
    assert int(sol.nfe) == 2 + 6 * (int(sol.num_steps) + int(sol.num_rejected))
  start = jnp.array([1.0, -0.5])
  fwd = solve(1, start, 0.0, 3.0, 1e-7)
  np.testing.assert_allclose(fwd.y, [np.cos(3) - 0.5 * np.sin(3), -np.sin(3) - 0.5 * np.cos(3)],
                             atol=1e-5)  # a few times the tolerance, accumulated over ~3 radians
  back = solve(1, fwd.y, 3.0, 0.0, 1e-7)
  np.testing.assert_allclose(back.y, start, atol=1e-5)


def test_running_out_of_steps_is_reported():
  """max_steps too small: every entry point says so in its success flag (and AdaptiveODE returns
  NaN for the example rather than a half-integrated sample)."""
  sde, oracle, x, _ = _problem("vp", 2, num=1)
  out = jax.jit(lambda x: lk.log_likelihood(sde, oracle, x, max_steps=3))(x[0])
  assert not bool(out.success)
  trip = jax.jit(lambda x: lk.round_trip(sde, oracle, x, max_steps=3))(x[0])
  assert not bool(trip.success)
  t, t_next = jnp.float32(1.0), jnp.float32(1e-3)

  @jax.jit
  def adaptive(x):
    short, long = AdaptiveODE(max_steps=3), AdaptiveODE()
    return (short.solve(sde, oracle, t, t_next, x).success,
            short.step(sde, oracle, t, t_next, x, (), key=jr.key(0))[:2],
            long.step(sde, oracle, t, t_next, x, (), key=jr.key(0))[:2])

  solved, (x_short, aux_short), (x_long, aux_long) = adaptive(x[0])
  assert not bool(solved)
  assert not bool(aux_short.success) and bool(jnp.all(jnp.isnan(x_short)))
  assert bool(aux_long.success) and bool(jnp.all(jnp.isfinite(x_long)))


@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.VESDE(), sdes.CosineVPSDE()])
def test_adaptive_sampler_follows_the_closed_form_gaussian_flow(sde):
  """AdaptiveODE in (lambda, x/alpha) lands on the exact affine flow of N(m, s^2) data."""
  m, s2 = jnp.array([0.5, -1.0]), jnp.array([0.3, 2.0])
  oracle = _gaussian(sde, m, s2)
  x_T = jnp.array([[0.3, 1.0], [-2.0, 0.0]]) * sde.prior_std()
  t_end = 1e-3
  out = jax.jit(jax.vmap(lambda z: sampling.sample(
      sde, oracle, AdaptiveODE(rtol=1e-6, atol=1e-6), jnp.array([sde.T, t_end]), z,
      key=jr.key(0))))(x_T)
  expected = jax.vmap(lambda z: _gaussian_flow(sde, m, s2, z, sde.T, t_end))(x_T)
  # rtol 1e-6 on a smooth linear ODE: a few 1e-6 relative. The cosine schedule ends where beta =
  # 999 and float32 cos(angle) near pi/2 carries ~3e-5 relative error (see test_sdes.py), which
  # the start of its solve inherits: 2e-4 there.
  tol = 2e-4 if isinstance(sde, sdes.CosineVPSDE) else 2e-5
  np.testing.assert_allclose(out.x, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.VESDE(), sdes.SubVPSDE(), sdes.CosineVPSDE()])
def test_encoder_matches_the_closed_form_gaussian_flow(sde):
  """For data N(m, s^2 I), the flow keeps (x_t - alpha m) / sqrt(alpha^2 s^2 + sigma^2) constant,
  so z is an affine map of x; decode inverts it."""
  m, s2 = jnp.array([0.5, -1.0]), jnp.array([0.3, 2.0])
  oracle = _gaussian(sde, m, s2)
  x = jnp.array([[0.3, 1.0], [-2.0, 0.0]])
  expected = jax.vmap(lambda x: _gaussian_flow(sde, m, s2, x, sde.t_min_default, sde.T))(x)
  trip = jax.jit(jax.vmap(lambda x: lk.round_trip(sde, oracle.score, x, rtol=1e-6, atol=1e-6)))(x)
  assert bool(jnp.all(trip.success))
  # rtol 1e-6 on |z| up to ~3 (VP) or ~150 (VE): errors of a few 1e-6 relative.
  np.testing.assert_allclose(trip.z, expected, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(trip.x_reconstructed, x, atol=1e-4)
  assert float(jnp.max(trip.max_abs_error)) < 1e-4


def test_round_trip_error_shrinks_with_tolerance():
  sde, oracle, x, _ = _problem("vp", 2, num=8)
  trip = jax.jit(jax.vmap(lambda x, tol: lk.round_trip(sde, oracle.score, x, rtol=tol, atol=tol)))
  loose = trip(x, jnp.full((8,), 1e-3))
  tight = trip(x, jnp.full((8,), 1e-6))
  assert float(jnp.mean(tight.rms_error)) < 0.1 * float(jnp.mean(loose.rms_error))
  assert float(jnp.mean(tight.nfe)) > float(jnp.mean(loose.nfe))


# -------------------------------------------------------------------------------------------
# Reverse-mode gradients against finite differences (float64)
# -------------------------------------------------------------------------------------------


class _GaussianScore(flax.struct.PyTreeNode):
  """The score of N(m, exp(log_v)) data diffused by the SDE, with (m, log_v) as parameters."""

  m: jax.Array
  log_v: jax.Array
  sde: sdes.VPSDE = flax.struct.field(pytree_node=False, default=sdes.VPSDE())

  def __call__(self, x, t):
    var = self.sde.alpha(t) ** 2 * jnp.exp(self.log_v) + self.sde.sigma(t) ** 2
    return -(x - self.sde.alpha(t) * self.m) / var


@pytest.mark.parametrize("adjoint", [None, diffrax.BacksolveAdjoint()], ids=["checkpoint", "backsolve"])
def test_gradients_match_finite_differences_and_the_closed_form(adjoint):
  """d logp / d(m, log_v) through the solve equals the gradient of the closed-form log-likelihood
  and central finite differences of the same solve; so do the gradients of encode and decode."""
  with jax.enable_x64(True):
    sde = sdes.VPSDE()
    params = (jnp.array([0.4, -0.7]), jnp.array([-1.0, 0.5]))
    x = jnp.array([0.2, -1.1])
    w = jnp.array([0.7, -1.3])  # a fixed cotangent for the flow maps
    t_min, T = sde.t_min_default, sde.T
    tol = 1e-9
    kwargs = dict(rtol=tol, atol=tol, max_steps=1024, adjoint=adjoint)
    score_of = lambda p: _GaussianScore(m=p[0], log_v=p[1], sde=sde)
    ode_logp = lambda p: lk.log_likelihood(sde, score_of(p), x, **kwargs).logp

    def closed_logp(p):
      m, v = p[0], jnp.exp(p[1])
      std = lambda t: jnp.sqrt(sde.alpha(t) ** 2 * v + sde.sigma(t) ** 2)
      z = sde.alpha(T) * m + std(T) * (x - sde.alpha(t_min) * m) / std(t_min)
      return sde.prior_logp(z) + jnp.sum(jnp.log(std(T) / std(t_min)))

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    value, grad = jax.jit(jax.value_and_grad(lambda f: ode_logp(unravel(f))))(flat)
    closed = jax.grad(lambda f: closed_logp(unravel(f)))(flat)
    np.testing.assert_allclose(value, closed_logp(params), atol=1e-8)
    # The closed form has no discretisation: 1e-9 local tolerance leaves ~1e-8 in the gradient.
    np.testing.assert_allclose(grad, closed, atol=1e-7)
    slope = jnp.sqrt(sde.alpha(T) ** 2 * jnp.exp(params[1]) + sde.sigma(T) ** 2) / jnp.sqrt(
        sde.alpha(t_min) ** 2 * jnp.exp(params[1]) + sde.sigma(t_min) ** 2)
    enc_grad = jax.jit(jax.grad(lambda x: jnp.vdot(w, lk.encode(sde, score_of(params), x, **kwargs).y)))(x)
    np.testing.assert_allclose(enc_grad, w * slope, atol=1e-7)  # the flow is affine: slope per dim
    if adjoint is not None:
      return  # the finite differences do not depend on the adjoint: run them once
    h = 1e-5
    logp_flat = jax.jit(lambda f: ode_logp(unravel(f)))
    fd = np.array([(logp_flat(flat + h * e) - logp_flat(flat - h * e)) / (2 * h)
                   for e in np.eye(flat.size)])
    # Central differences: O(h^2) truncation ~1e-10 plus solver noise / h ~ 1e-10 / 1e-5 = 1e-5
    # (the adaptive steps move with the parameters).
    np.testing.assert_allclose(grad, fd, atol=1e-5)
    dec = jax.jit(lambda z: jnp.vdot(w, lk.decode(sde, score_of(params), z, **kwargs).y))
    dec_grad = jax.jit(jax.grad(lambda z: jnp.vdot(w, lk.decode(sde, score_of(params), z, **kwargs).y)))(x)
    fd_dec = np.array([(dec(x + h * e) - dec(x - h * e)) / (2 * h) for e in np.eye(2)])
    np.testing.assert_allclose(dec_grad, fd_dec, atol=1e-5)  # as above
    np.testing.assert_allclose(dec_grad, w / slope, atol=1e-7)


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
  assert bool(jnp.all(bpd.success))
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
  return analytic.GaussianMixture.create(weights, lo + (hi - lo) * (grid + 0.5) / levels, 1e-8)


def test_ddpm_elbo_equals_monte_carlo_through_the_forward_chain():
  """E_q[log q(x_1:N | x0) - log p(x_0:N)] sampled through the forward kernels q(x_n | x_{n-1})
  equals the closed-form KL sum: the same bound computed two independent ways."""
  sde, num_steps, dims = sdes.VPSDE(), 8, 2
  # A deliberately imperfect model (a blurred score), so the KL terms are not all near zero.
  oracle = analytic.DiffusedMixture(_dirac_mixture(_LEVELS, dims), sde)
  score = lambda x, t: 0.8 * oracle.score(x, t)
  pixels = jnp.array([1, 3])
  x0 = -1.0 + 2.0 * (pixels + 0.5) / _LEVELS  # level k at the centre of its cell
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
      else:  # the discretized Gaussian decoder over the cells, of half-width 1/L on [-1, 1]
        half = 1.0 / _LEVELS
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
    assert bool(jnp.all(out.success))
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
# Bad input: one case per class, raised before tracing and naming the argument
# -------------------------------------------------------------------------------------------

_SCORE = lambda x, t: -x
_X = jnp.zeros(2)
_PIX = jnp.zeros(2, jnp.int32)


@pytest.mark.parametrize("call, error, match", [
    # times outside (0, T]
    (lambda: lk.log_likelihood(sdes.VPSDE(), _SCORE, _X, t_min=0.0), ValueError, "t_min"),
    (lambda: lk.encode(sdes.VPSDE(), _SCORE, _X, t_max=2.0), ValueError, "t_min and t_max"),
    # a stochastic estimator without a key; an exact one given probes
    (lambda: lk.log_likelihood(sdes.VPSDE(), _SCORE, _X, divergence=lk.Hutchinson(2)), ValueError, "key"),
    (lambda: lk.log_likelihood(sdes.VPSDE(), _SCORE, _X, probes=jnp.ones((1, 2))), ValueError, "probes"),
    (lambda: lk.log_likelihood(sdes.VPSDE(), _SCORE, _X, divergence=lk.Hutchinson(2),
                               probes=jnp.ones((2, 3))), ValueError, "probes must have shape"),
    # integer hyperparameters given as floats or bools, or too small
    (lambda: lk.Hutchinson(0), ValueError, "num_probes"),
    (lambda: lk.Hutchinson(2.0), ValueError, "num_probes"),
    (lambda: lk.log_likelihood(sdes.VPSDE(), _SCORE, _X, max_steps=10.0), ValueError, "max_steps"),
    (lambda: lk.bits_per_dim(lambda x, k: 0.0, _PIX, key=jr.key(0), num_draws=True), ValueError, "num_draws"),
    (lambda: lk.ddpm_elbo(sdes.VPSDE(), _SCORE, _PIX, key=jr.key(0), num_steps=1), ValueError, "num_steps"),
    (lambda: lk.dequantize(jr.key(0), _PIX, num_levels=1), ValueError, "num_levels"),
    # wrong kinds of object
    (lambda: lk.log_likelihood(sdes.VPSDE, _SCORE, _X), TypeError, "sde must be an instance"),
    (lambda: lk.log_likelihood("vp", _SCORE, _X), TypeError, "sde must be an instance"),
    (lambda: lk.log_likelihood(sdes.VPSDE(), _SCORE, _X, divergence=lk.ExactDivergence),
     TypeError, "divergence must be an instance"),
    (lambda: lk.encode(sdes.VPSDE(), _SCORE, _X, variable="t"), TypeError, "variable"),
    (lambda: lk.log_likelihood(sdes.VPSDE(), _SCORE, _X, solver=diffrax.Euler()), ValueError, "solver"),
    # tolerances
    (lambda: lk.log_likelihood(sdes.VPSDE(), _SCORE, _X, rtol=-1.0), ValueError, "rtol"),
    (lambda: lk.log_likelihood(sdes.VPSDE(), _SCORE, _X, atol=float("nan")), ValueError, "atol"),
    # the example and the score function (checked with jax.eval_shape)
    (lambda: lk.log_likelihood(sdes.VPSDE(), _SCORE, jnp.zeros(2, jnp.int32)), ValueError,
     "x must be a floating-point"),
    (lambda: lk.log_likelihood(sdes.VPSDE(), lambda x, t: jnp.sum(x), _X), ValueError,
     "score_fn must return an array of the example's shape"),
    (lambda: lk.decode(sdes.VPSDE(), lambda x, t: (x > 0).astype(jnp.int32), _X), ValueError,
     "score_fn must return a floating-point"),
    (lambda: lk.log_likelihood(sdes.VPSDE(), "score", _X), TypeError, "score_fn must be a callable"),
    (lambda: lk.ddpm_elbo(sdes.VPSDE(), lambda x, t: x[:1], _PIX, key=jr.key(0)), ValueError, "score_fn"),
    # pixels: not integers, or outside [0, num_levels)
    (lambda: lk.bits_per_dim(lambda x, k: 0.0, jnp.zeros(2), key=jr.key(0)), ValueError, "pixels"),
    (lambda: lk.bits_per_dim(lambda x, k: 0.0, jnp.array([0, 256]), key=jr.key(0)), ValueError,
     r"pixels must lie in \[0, num_levels=256\)"),
    (lambda: lk.ddpm_elbo(sdes.VPSDE(), _SCORE, jnp.array([-1, 3]), key=jr.key(0)), ValueError,
     "pixels must lie in"),
    (lambda: lk.bits_per_dim_offset(256, (1.0, 0.0)), ValueError, "data_range"),
    (lambda: lk.ddpm_elbo(sdes.VESDE(), _SCORE, _PIX, key=jr.key(0)), ValueError, "variance preserving"),
])
def test_bad_arguments_raise_clear_errors(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_a_batch_where_one_example_is_expected_is_named():
  """x of shape (B, D) given to the per-example entry point: the mixture's score cannot take it,
  and eval_shape says so before anything is traced."""
  oracle = analytic.DiffusedMixture(_mixture(16), sdes.VPSDE())
  x = jnp.zeros((5, 16))
  with pytest.raises(ValueError, match="score_fn.*ONE example"):
    lk.log_likelihood(sdes.VPSDE(), oracle, x)


def test_legitimate_inputs_are_accepted():
  """key=None for the exact divergence, NumPy integer counts, a constant-beta VP SDE."""
  sde = sdes.VPSDE(1.0, 1.0)
  out = jax.jit(lambda x: lk.log_likelihood(sde, _SCORE, x, key=None, max_steps=np.int64(64)))(_X)
  assert bool(out.success)
  assert lk.Hutchinson(np.int32(3)).num_probes == 3
  bpd = lk.bits_per_dim(lambda x, k: jnp.zeros(()), _PIX, key=jr.key(0), num_draws=np.int64(2),
                        num_levels=np.int64(4))
  assert bpd.bpd_draws.shape == (2,)


def test_out_of_range_pixels_under_jit_are_flagged():
  """Under jit the levels cannot be checked before tracing: the outputs carry success = False."""
  bpd = jax.jit(lambda p: lk.bits_per_dim(lambda x, k: jnp.zeros(()), p, key=jr.key(0),
                                          num_levels=4))(jnp.array([0, 7]))
  assert not bool(bpd.success)
  elbo = jax.jit(lambda p: lk.ddpm_elbo(sdes.VPSDE(), _SCORE, p, key=jr.key(0), num_steps=4,
                                        num_levels=4))
  assert not bool(elbo(jnp.array([0, 7])).success)
  assert bool(elbo(jnp.array([0, 3])).success)


def test_the_condition_reaches_the_likelihood_example_by_example():
  """A conditional score function is bound per example (``replace(cond=y)``) under vmap: each
  example's PF-ODE log-density is log p(x | y) of its own class, the closed form of component y,
  and differs from the other classes' (the mixture's components overlap only a little)."""
  sde = _SDES["vp"]
  gmm = analytic.GaussianMixture.create([0.5, 0.3, 0.2], [[-1.0, 0.0], [1.0, 1.0], [1.0, -1.0]],
                                        [[0.2, 0.1], [0.1, 0.3], [0.15, 0.15]])
  cond_fn = analytic.ConditionalDiffusedMixture(gmm, sde)
  labels = jnp.array([0, 1, 2, 0, 1, 2], jnp.int32)
  x = jax.vmap(lambda k, y: cond_fn.replace(cond=y).sample(k, 1e-5, 1)[0])(
      jr.split(jr.key(0), labels.size), labels)

  @jax.jit
  def logp(x, labels):
    def one(x, y):
      fn = cond_fn.replace(cond=y)
      return lk.log_likelihood(sde, fn, x, prior_logp_fn=lambda z: fn.log_prob(z, sde.T)).logp
    return jax.vmap(one)(x, labels)

  exact = jax.vmap(lambda x, y: cond_fn.replace(cond=y).log_prob(x, 1e-5))(x, labels)
  # rtol = atol = 1e-5 holds the ODE error near 1e-5 nats/dim (benchmarks/likelihood.py); 2-D: 1e-3
  # total leaves a 50x margin and is far below the gaps between classes checked next.
  np.testing.assert_allclose(logp(x, labels), exact, atol=1e-3)
  assert np.all(np.abs(logp(x, (labels + 1) % 3) - exact) > 0.1)


@H.x64
def test_gradient_with_respect_to_network_parameters_matches_finite_differences():
  """d logp / d params of a ScoreMLP behind NetworkScore (reverse mode through the diffrax solve)
  against central finite differences of the same solve, along two random directions in the
  flattened parameters (float64)."""
  from diffusion_jax import nets
  from diffusion_jax.parameterization import NetworkScore, Prediction

  with H.float64():
    sde = sdes.VPSDE()
    module = nets.ScoreMLP(hidden_sizes=(16, 16), embed_dim=8)
    params = module.init(jr.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))
    flat, unravel = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a: a.astype(jnp.float64),
                                                               params))
    model_fn = nets.as_model_fn(module)
    x = jnp.array([0.3, -0.8])

    @jax.jit
    def logp(f):
      score_fn = NetworkScore(model_fn, unravel(f), sde, Prediction.EPS)
      return lk.log_likelihood(sde, score_fn, x, rtol=1e-10, atol=1e-10, max_steps=4096).logp

    grad = jax.grad(logp)(flat)
    h = 1e-4
    for key in jr.split(jr.key(1), 2):
      direction = jr.normal(key, flat.shape, jnp.float64)
      fd = (logp(flat + h * direction) - logp(flat - h * direction)) / (2 * h)
      # Central differences: O(h^2) ~ 1e-8 truncation; the adaptive solve's own error (1e-10 local)
      # divided by h adds ~1e-6; the directional derivative is O(1), so 1e-5 absolute has margin.
      assert abs(fd) > 1e-2  # a real slope, so agreement to 1e-5 says something
      np.testing.assert_allclose(jnp.vdot(grad, direction), fd, atol=1e-5)
