"""Time grids and step rules: checked against the SDE's own log-SNR, sigma and alpha."""

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import schedules, sdes
import harness as H

SDES = list(H.SDES) + [sdes.VPSDE(2.0, 2.0)]  # and a constant-beta VP
IDS = list(H.SDE_IDS) + ["vp_const"]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_time_at_log_snr_inverts_log_snr(sde):
  ts = jnp.linspace(1e-3, sde.T, 50)
  recovered = schedules.time_at_log_snr(sde, sde.log_snr(ts))
  # The SDE's closed form (bisection in the base class), exact up to the float32 round-off of
  # log_snr(t) itself: about 1e-6 in t where lambda changes by O(1) per unit t.
  np.testing.assert_allclose(recovered, ts, rtol=2e-5, atol=2e-6)
  # The public function is the SDE's method, not a second implementation.
  np.testing.assert_array_equal(recovered, sde.time_at_log_snr(sde.log_snr(ts)))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("grid_fn", [schedules.uniform_time, schedules.time_quadratic,
                                     schedules.uniform_log_snr, schedules.edm_rho])
def test_grids_are_decreasing_and_pinned(sde, grid_fn):
  ts = np.asarray(grid_fn(sde, 7, 1e-3))
  assert ts.shape == (8,)
  assert ts[0] == pytest.approx(sde.T) and ts[-1] == pytest.approx(1e-3)
  assert np.all(np.diff(ts) < 0)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_log_snr_grid_is_uniform_in_log_snr(sde):
  ts = schedules.uniform_log_snr(sde, 10, 1e-3)
  steps = np.diff(np.asarray(sde.log_snr(ts)))
  # Equal lambda steps to the accuracy of the float32 inverse.
  np.testing.assert_allclose(steps, steps.mean(), rtol=1e-3)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_edm_grid_is_uniform_in_sigma_to_the_one_over_rho(sde):
  rho = 7.0
  ts = schedules.edm_rho(sde, 12, 1e-3, rho=rho)
  sigmas = np.exp(-0.5 * np.asarray(sde.log_snr(ts), np.float64))
  steps = np.diff(sigmas ** (1 / rho))
  np.testing.assert_allclose(steps, steps.mean(), rtol=1e-3)


def test_time_quadratic_is_uniform_in_sqrt_t():
  ts = np.asarray(schedules.time_quadratic(sdes.VPSDE(), 9, 1e-3))
  steps = np.diff(np.sqrt(ts))
  np.testing.assert_allclose(steps, steps.mean(), rtol=1e-5)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_transition_matches_the_marginals(sde):
  # Composing the kernel from t_next to t with the marginal at t_next must give the marginal at t:
  # alpha_t = a alpha_next and sigma_t^2 = a^2 sigma_next^2 + s^2.
  t, t_next = jnp.float32(0.7), jnp.float32(0.2)
  a, s2 = schedules.transition(sde, t, t_next)
  np.testing.assert_allclose(a * sde.alpha(t_next), sde.alpha(t), rtol=1e-6)
  np.testing.assert_allclose(a**2 * sde.sigma(t_next) ** 2 + s2, sde.sigma(t) ** 2, rtol=1e-5)


def test_transition_is_ddpm_on_a_uniform_grid():
  sde = sdes.VPSDE()
  n = 1000
  alphas_cumprod = sdes.alphas_cumprod(sde, n)
  betas = sdes.betas_from_alphas_cumprod(alphas_cumprod)
  i = 500  # t_i = (i + 1)/n in the 0-based arrays
  a, s2 = schedules.transition(sde, jnp.float32((i + 1) / n), jnp.float32(i / n))
  np.testing.assert_allclose(a, np.sqrt(1 - betas[i]), rtol=1e-6)
  np.testing.assert_allclose(s2, betas[i], rtol=1e-3)  # beta ~ 1e-2: float32 cancellation in s^2


def test_stable_rule_on_a_five_step_vp_grid():
  # The first-order rule 1 - beta(t) dt of score_sde's discretisation fails on coarse grids; the
  # exact exponential rule stays in (0, 1].
  sde = sdes.VPSDE()
  ts = schedules.uniform_time(sde, 5, 1e-3)
  naive = np.asarray([1.0 - sde.beta(t) * (t - t_next) for t, t_next in zip(ts[:-1], ts[1:])])
  with np.errstate(invalid="ignore"):
    assert np.any(np.isnan(np.sqrt(naive)))  # the failure the stable rule exists for
  a, s2 = schedules.transition(sde, ts[:-1], ts[1:])
  assert np.all((a > 0) & (a <= 1)) and np.all(np.isfinite(np.sqrt(s2)))


def test_bad_grid_arguments():
  sde = sdes.VPSDE()
  with pytest.raises(ValueError, match="num_steps"):
    schedules.uniform_time(sde, 0)
  with pytest.raises(ValueError, match="t_min"):
    schedules.uniform_log_snr(sde, 5, t_min=1.5)
  with pytest.raises(ValueError, match="t_min"):
    schedules.uniform_log_snr(sde, 5, t_min=0.0)  # VP has lambda = +inf at t = 0
  with pytest.raises(ValueError, match="rho"):
    schedules.edm_rho(sde, 5, 1e-3, rho=0.0)
  with pytest.raises(ValueError, match="decreasing"):
    schedules.check_grid(jnp.array([0.1, 0.5]))
  with pytest.raises(ValueError, match="1-D"):
    schedules.check_grid(jnp.array([1.0]))
