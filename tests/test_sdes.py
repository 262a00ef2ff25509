"""SDEs: marginals against closed forms and a simulated forward SDE; derived drift/diffusion; discrete views."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import sdes
from diffusion_jax.sde import AbstractLinearSDE, ProbabilityFlowODE, ReverseSDE
from diffusion_jax.simulate import simulate_forward
import harness as H

B0, B1 = 0.1, 20.0
S0, S1 = 0.01, 50.0
TS = np.linspace(0.0, 1.0, 11)

ALL, IDS = list(H.SDES), list(H.SDE_IDS)  # VP/sub-VP with beta (B0, B1), VE with sigma (S0, S1)
assert (ALL[0].beta_min, ALL[0].beta_max, ALL[2].sigma_min, ALL[2].sigma_max) == (B0, B1, S0, S1)
# Every SDE with its closed-form inverse of the log-SNR, constant-rate schedules included.
WITH_CONSTANT = ALL + [sdes.VPSDE(2.0, 2.0), sdes.SubVPSDE(2.0, 2.0)]
WITH_CONSTANT_IDS = IDS + ["vp_const", "subvp_const"]


def _int_beta(t):
  return B0 * t + 0.5 * (B1 - B0) * t**2


def closed_form(sde, t):
  """(alpha, sigma, f, g^2) as printed in Song et al. 2021, App. B, and Nichol & Dhariwal 2021."""
  t = np.asarray(t, np.float64)
  if isinstance(sde, sdes.VPSDE):
    a = np.exp(-0.5 * _int_beta(t))
    beta = B0 + t * (B1 - B0)
    return a, np.sqrt(1 - a**2), -0.5 * beta, beta
  if isinstance(sde, sdes.SubVPSDE):
    a = np.exp(-0.5 * _int_beta(t))
    beta = B0 + t * (B1 - B0)
    return a, 1 - np.exp(-_int_beta(t)), -0.5 * beta, beta * (1 - np.exp(-2 * _int_beta(t)))
  if isinstance(sde, sdes.VESDE):
    s = S0 * (S1 / S0) ** t
    return np.ones_like(t), s, np.zeros_like(t), s**2 * 2 * np.log(S1 / S0)
  if isinstance(sde, sdes.CosineVPSDE):
    ang = lambda u: np.cos((u + sde.s) / (1 + sde.s) * np.pi / 2) ** 2
    abar = ang(t) / ang(0.0)
    beta = np.pi / (1 + sde.s) * np.tan((t + sde.s) / (1 + sde.s) * np.pi / 2)
    return np.sqrt(abar), np.sqrt(1 - abar), -0.5 * beta, beta
  raise AssertionError(sde)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_marginal_and_coefficients_match_closed_forms(sde):
  ts = np.clip(TS, 0.0, sde.T)
  alpha, sigma = jax.vmap(sde.marginal)(jnp.asarray(ts))
  f = jax.vmap(sde.drift_coef)(jnp.asarray(ts))
  g2 = jax.vmap(sde.diffusion_squared)(jnp.asarray(ts))
  a_ref, s_ref, f_ref, g2_ref = closed_form(sde, ts)
  # float32 arithmetic on O(1) quantities: a few ulps, amplified ~10x by exp/expm1 of values up to 10.
  np.testing.assert_allclose(alpha, a_ref, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(sigma, s_ref, rtol=2e-5, atol=1e-6)
  # The cosine schedule ends where its angle is within 3e-3 of pi/2, so float32 cos(angle) (and any
  # formula for beta = tan(angle)) carries a relative error of ~1e-7 * pi/2 / 3e-3, i.e. ~5e-5.
  rtol_f = 1e-4 if isinstance(sde, sdes.CosineVPSDE) else 2e-5
  np.testing.assert_allclose(f, f_ref, rtol=rtol_f, atol=1e-5)
  # g^2 comes from a jvp of sigma^2 minus 2 f sigma^2: cancellation costs about two more digits
  # where beta(t) ~ 20 and sigma^2 ~ 1, and the cosine beta reaches ~1e3 near T.
  np.testing.assert_allclose(g2, g2_ref, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_diffusion_and_drift_under_jit_and_vmap(sde):
  x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
  t = jnp.array([0.2, 0.7])
  batched = jax.jit(jax.vmap(sde.drift))(x, t)
  single = jnp.stack([sde.drift(x[i], t[i]) for i in range(2)])
  np.testing.assert_allclose(batched, single, rtol=1e-6)  # same float32 ops, reordered at most
  assert jax.jit(sde.diffusion)(0.5) == pytest.approx(float(sde.diffusion(0.5)), rel=1e-6)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_simulated_forward_sde_matches_marginal(sde):
  # Start from the marginal at t = 0 (x0 plus sigma(0) noise: nonzero for VE by construction).
  num_paths, x0 = 40_000, 1.5
  key_start, key_path = jr.split(jr.key(0))
  alpha0, sigma0 = sde.marginal(0.0)
  x_start = alpha0 * x0 + sigma0 * jr.normal(key_start, (num_paths,))
  for t_end in (0.1, 0.5):
    x = simulate_forward(sde, x_start, jnp.linspace(0.0, t_end, 1001),
                         key=jr.fold_in(key_path, int(t_end * 10)), save_path=False)
    alpha, sigma = sde.marginal(t_end)
    mean_se = float(sigma) / math.sqrt(num_paths)
    std_se = float(sigma) / math.sqrt(2 * num_paths)
    # 5 Monte-Carlo standard errors, plus the O(dt) Euler-Maruyama bias (dt = t/1000 and rates up to
    # beta ~ 10: relative bias below 1%).
    assert abs(float(jnp.mean(x)) - float(alpha) * x0) < 5 * mean_se + 0.01 * abs(float(alpha) * x0)
    assert abs(float(jnp.std(x)) - float(sigma)) < 5 * std_se + 0.01 * float(sigma)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_probability_flow_evolves_gaussian_variance(sde):
  # For data N(m, v), p_t = N(alpha m, var_t) with var_t = alpha^2 v + sigma^2, and the PF ODE is
  # linear in x with slope k(t); the marginal variance must obey d var_t / dt = 2 k(t) var_t.
  m, v = 0.7, 0.3
  var_fn = lambda t: sde.alpha(t) ** 2 * v + sde.sigma(t) ** 2

  def score(x, t):
    return -(x - sde.alpha(t) * m) / var_fn(t)

  ode = sde.probability_flow(score)
  assert isinstance(ode, ProbabilityFlowODE)
  for t in (0.1, 0.4, 0.8):
    var, dvar = jax.jvp(var_fn, (jnp.asarray(t),), (jnp.asarray(1.0),))
    slope = jax.grad(lambda x: ode.velocity(x, t))(0.3)
    # Both sides are a difference of terms of size |2 f var| + g^2 (up to ~30 for VP at late t) that
    # nearly cancel as var -> 1; float32 keeps ~1e-6 of the terms' size, not of the difference.
    scale = abs(2 * float(sde.drift_coef(t)) * float(var)) + float(sde.diffusion_squared(t))
    assert abs(float(2 * slope * var - dvar)) < 1e-5 * scale
    # The mean moves with the drift alone: velocity at the mean is f(t) * mean.
    mean = sde.alpha(t) * m
    np.testing.assert_allclose(ode.velocity(mean, t), sde.drift(mean, t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_simulated_reverse_sde_recovers_the_marginal(sde):
  """Euler-Maruyama of the reverse SDE (Anderson 1982) with the exact score of N(m, v) data, run
  from exact draws of p_0.6 down to 0.2, lands on p_0.2 = N(alpha m, alpha^2 v + sigma^2): an
  independent check of ReverseSDE's drift and diffusion."""
  m, v = 0.7, 0.3
  var_fn = lambda t: sde.alpha(t) ** 2 * v + sde.sigma(t) ** 2
  rev = sde.reverse(lambda x, t: -(x - sde.alpha(t) * m) / var_fn(t))
  assert isinstance(rev, ReverseSDE)
  t_start, t_end, num_steps, num_paths = 0.6, 0.2, 1000, 40_000
  x = sde.alpha(t_start) * m + jnp.sqrt(var_fn(t_start)) * jr.normal(jr.key(0), (num_paths,))
  dt = (t_start - t_end) / num_steps

  def step(x, inputs):
    i, k = inputs
    t = t_start - i * dt
    x = x - rev.drift(x, t) * dt + rev.diffusion(t) * math.sqrt(dt) * jr.normal(k, x.shape)
    return x, None

  x, _ = jax.lax.scan(step, x, (jnp.arange(num_steps), jr.split(jr.key(1), num_steps)))
  mean, std = float(sde.alpha(t_end)) * m, float(jnp.sqrt(var_fn(t_end)))
  # 5 Monte-Carlo standard errors plus the O(dt) Euler-Maruyama bias (dt = 4e-4, rates up to ~10:
  # below 1%).
  assert abs(float(jnp.mean(x)) - mean) < 5 * std / math.sqrt(num_paths) + 0.01 * abs(mean)
  assert abs(float(jnp.std(x)) - std) < 5 * std / math.sqrt(2 * num_paths) + 0.01 * std


@pytest.mark.parametrize("sde", WITH_CONSTANT, ids=WITH_CONSTANT_IDS)
def test_closed_form_time_at_log_snr(sde):
  """The closed-form inverse against the base class's bisection and against log_snr itself."""
  ts = jnp.linspace(1e-3, sde.T, 64)
  lams = sde.log_snr(ts)
  closed = sde.time_at_log_snr(lams)
  bisection = AbstractLinearSDE.time_at_log_snr(sde, lams)
  # Both are exact up to float32 round-off of log_snr(t), which is conditioned like
  # dt = d lambda / lambda'(t): a few 1e-7 in t, up to ~2e-6 near the end of the cosine schedule
  # (beta = 999 there).
  np.testing.assert_allclose(closed, bisection, rtol=0, atol=4e-6)
  np.testing.assert_allclose(closed, ts, rtol=0, atol=4e-6)
  # The other way round, on a grid of log-SNRs: lambda(t(lambda)) = lambda (|lambda| up to ~15).
  lam_grid = jnp.linspace(float(sde.log_snr(sde.T)), float(sde.log_snr(1e-3)), 50)
  np.testing.assert_allclose(sde.log_snr(sde.time_at_log_snr(lam_grid)), lam_grid, rtol=1e-5,
                             atol=1e-4)
  # Outside the range: the nearest end.
  np.testing.assert_allclose(sde.time_at_log_snr(jnp.array([1e4, -1e4])), [0.0, sde.T], atol=1e-6)
  # EDM's sigma~ = sigma/alpha = exp(-lambda/2) and its inverse.
  np.testing.assert_allclose(sde.edm_sigma(ts), jnp.exp(-0.5 * lams), rtol=1e-5)
  np.testing.assert_allclose(sde.time_at_edm_sigma(sde.edm_sigma(ts)), ts, rtol=0, atol=4e-6)


def test_constant_beta_vp_has_its_closed_form():
  """beta_min == beta_max = b is a legitimate VP SDE: alpha = exp(-b t/2), f = -b/2, g^2 = b."""
  b = 2.0
  sde = sdes.VPSDE(b, b)
  ts = jnp.linspace(0.05, 1.0, 8)
  np.testing.assert_allclose(sde.alpha(ts), np.exp(-0.5 * b * np.asarray(ts)), rtol=1e-6)
  np.testing.assert_allclose(sde.sigma(ts) ** 2, 1 - np.exp(-b * np.asarray(ts)), rtol=1e-5)
  np.testing.assert_allclose(jax.vmap(sde.drift_coef)(ts), -0.5 * b, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(sde.diffusion_squared)(ts), b, rtol=1e-5)
  # lambda = log(e^-bt / (1 - e^-bt)): t = log1p(e^-lambda) / b.
  lams = sde.log_snr(ts)
  np.testing.assert_allclose(sde.time_at_log_snr(lams), np.log1p(np.exp(-np.asarray(lams))) / b,
                             rtol=1e-5)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_probability_flow_forms_are_one_ode(sde):
  """edm_velocity and log_snr_velocity are dx/dt after the change of variables y = x/alpha,
  s = sigma/alpha (or lambda): dy/ds = (dx/dt - f x) / alpha / (ds/dt)."""
  score = lambda x, t: -x / (1.0 + t) + jnp.sin(x)
  flow = sde.probability_flow(score)
  x = jnp.array([0.4, -1.3])
  for t in (0.1, 0.5, 0.9):
    t = jnp.asarray(t * sde.T)
    alpha = sde.alpha(t)
    y = x / alpha
    dydt = (flow.velocity(x, t) - sde.drift_coef(t) * x) / alpha
    s, dsdt = jax.jvp(sde.edm_sigma, (t,), (jnp.ones_like(t),))
    lam, dlamdt = jax.jvp(sde.log_snr, (t,), (jnp.ones_like(t),))
    # float32: the t-form is a difference of terms of size |f x| + g^2 |score| that cancel where
    # f is large; 1e-4 relative to that size.
    scale = float(jnp.max(jnp.abs(dydt))) + float(jnp.max(jnp.abs(sde.drift_coef(t) * x / alpha)))
    np.testing.assert_allclose(flow.edm_velocity(y, s) * dsdt, dydt, atol=1e-4 * scale)
    np.testing.assert_allclose(flow.log_snr_velocity(y, lam) * dlamdt, dydt, atol=1e-4 * scale)


def test_ddpm_schedule_has_the_continuous_limit():
  sde = sdes.VPSDE(B0, B1)
  errors = []
  for n in (100, 1000):
    alpha_bar = np.cumprod(1.0 - sde.ddpm_betas(n))
    ts = np.arange(1, n + 1) / n
    errors.append(np.max(np.abs(alpha_bar - np.asarray(sde.alpha(jnp.asarray(ts))) ** 2)))
  # The product of (1 - beta_i) differs from exp(-int beta) by O(beta/N) per step: O(1/N) overall.
  assert errors[1] < 2e-3
  assert errors[0] / errors[1] > 5  # first order: 10x more steps, about 10x less error
  # Ho et al. 2020's schedule is linspace(1e-4, 0.02, 1000): the same as beta_min=0.1, beta_max=20.
  np.testing.assert_allclose(sde.ddpm_betas(1000)[[0, -1]], [1e-4, 0.02], rtol=1e-12)


@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.CosineVPSDE()], ids=["vp", "cosine"])
def test_exact_discrete_view_round_trips(sde):
  abar = sdes.alphas_cumprod(sde, 50)
  betas = sdes.betas_from_alphas_cumprod(abar)
  assert np.all((betas > 0) & (betas < 1))
  np.testing.assert_allclose(np.cumprod(1 - betas), abar, rtol=1e-5)  # float32 alphas, float64 product
  # ddpm_schedule keeps the digits of tiny betas (expm1 of log differences), against float64.
  chain = sdes.ddpm_schedule(sde, 1000)
  ts = np.arange(1, 1001) / 1000 * sde.T
  with jax.enable_x64(True):
    log_abar = 2 * np.asarray(sde.log_alpha(jnp.asarray(ts, jnp.float64)))
  ref_betas = -np.expm1(np.diff(np.concatenate([[0.0], log_abar])))
  # Each float32 log alpha-bar (|.| up to ~12) carries up to ~1e-6 absolute error (near the cosine's
  # end, where cos(angle) -> 0); beta_n = -expm1 of a difference of two: that error, absolutely,
  # and float32 relative precision where beta_n ~ 1e-4 is tiny (the digits expm1 keeps).
  # At the cosine's very end float32 cos(angle) itself is off by ~3e-5 relative (see the closed
  # forms above), so there the bound is 1e-4.
  atol = 1e-4 if isinstance(sde, sdes.CosineVPSDE) else 2e-6
  np.testing.assert_allclose(chain.betas, ref_betas, rtol=2e-5, atol=atol)
  np.testing.assert_allclose(chain.one_minus_alphas_cumprod, -np.expm1(log_abar), rtol=2e-5, atol=atol)


def test_ncsn_ladder_sits_on_the_ve_sde():
  sde = sdes.VESDE(S0, S1)
  sigmas = sde.ncsn_sigmas(10)
  ts = np.linspace(1.0, 0.0, 10)
  np.testing.assert_allclose(sigmas, np.asarray(sde.sigma(jnp.asarray(ts))), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(sde.time_at_sigma(jnp.asarray(sigmas))), ts, atol=1e-5)


def test_priors():
  for sde in ALL:
    z = jnp.array([0.3, -1.2, 2.0])
    s = sde.prior_std()
    expected = np.sum(-0.5 * (np.asarray(z) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-6)
    draws = sde.prior_sample(jr.key(1), (20_000,))
    assert abs(float(jnp.std(draws)) / s - 1) < 0.03  # 20,000 draws: SE of std ~0.5%
  # The prior matches the marginal at T closely for VP and VE (std of unit data).
  np.testing.assert_allclose(sdes.VPSDE().sigma(1.0), 1.0, atol=1e-4)
  np.testing.assert_allclose(sdes.VESDE().sigma(1.0), 50.0, rtol=1e-6)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(beta_min=5.0, beta_max=1.0), ValueError, "beta_min must be <= beta_max"),
    (dict(beta_min=-0.1, beta_max=1.0), ValueError, "beta_min must be > 0"),
    (dict(beta_min=0.1, beta_max=float("inf")), ValueError, "beta_max must be finite"),
    (dict(beta_min=float("nan"), beta_max=1.0), ValueError, "beta_min must be finite"),
    (dict(beta_min=True, beta_max=20.0), TypeError, "beta_min must be a real number"),
    (dict(beta_min="0.1", beta_max=20.0), TypeError, "beta_min must be a real number"),
])
def test_vp_bad_parameters(kwargs, error, match):
  for cls in (sdes.VPSDE, sdes.SubVPSDE):
    with pytest.raises(error, match=match):
      cls(**kwargs)


def test_legitimate_parameters_are_accepted_and_stored_as_floats():
  sde = sdes.VPSDE(np.float32(0.5), np.int64(3))
  assert sde.beta_min == 0.5 and type(sde.beta_max) is float
  assert hash(sde) == hash(sdes.VPSDE(0.5, 3.0))  # static fields: equal SDEs share compilations
  assert sdes.VPSDE(1.0, 1.0).T == 1.0


def test_ve_and_cosine_bad_parameters():
  with pytest.raises(ValueError, match="sigma_min must be > 0"):
    sdes.VESDE(sigma_min=0.0, sigma_max=50.0)
  with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
    sdes.VESDE(sigma_min=5.0, sigma_max=1.0)
  with pytest.raises(ValueError, match="sigma_max must be finite"):
    sdes.VESDE(sigma_min=0.01, sigma_max=float("inf"))
  with pytest.raises(ValueError, match="s must be > 0"):
    sdes.CosineVPSDE(s=-0.1)
  with pytest.raises(ValueError, match="beta_clip must be finite"):
    sdes.CosineVPSDE(beta_clip=float("nan"))
  with pytest.raises(ValueError, match="num_steps"):
    sdes.VPSDE().ddpm_betas(1)
  with pytest.raises(ValueError, match="num_steps"):
    sdes.ddpm_schedule(sdes.VPSDE(), 10.0)
  with pytest.raises(ValueError, match="num_scales"):
    sdes.VESDE().ncsn_sigmas(True)


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
def test_time_outside_range(t):
  with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
    sdes.VPSDE().marginal(t)
  with pytest.raises(ValueError, match="t must lie in"):
    sdes.CosineVPSDE().marginal(0.9999)
