"""Time grids for sampling and the step-size rules of the samplers.

A sampler walks an explicit, decreasing grid ts = (t_0 = T > t_1 > ... > t_N = t_min) of the SDE's
own time. Where a paper spaces its steps in another variable (log-SNR lambda = log(alpha^2/sigma^2),
EDM's sigma/alpha), the grid is built in that variable and mapped back to t with
``time_at_log_snr``, the SDE's own inverse of its log-SNR (closed form where one exists).

The step rules live here too, so that the tests can pin them:
    exact one-step transition      x_t = a x_s + s noise,  a = alpha_t/alpha_s,  s^2 = sigma_t^2 - a^2 sigma_s^2
    Langevin SNR rule              step = 2 (snr |noise| / |score|)^2           (Song et al. 2021, Alg. 4)
    annealed Langevin rule         step_i = step_lr sigma_i^2 / sigma_L^2       (Song & Ermon 2019, Alg. 1),
                                   capped at 2 sigma_i^2, half the stability boundary 4 sigma_i^2
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import _checks
from diffusion_jax.sde import AbstractLinearSDE



def _check_grid_args(sde: AbstractLinearSDE, num_steps: int, t_min: float | None) -> float:
  _checks.check_count("num_steps", num_steps)
  t_min = sde.t_min_default if t_min is None else t_min
  if not 0.0 <= float(t_min) < sde.T:
    raise ValueError(f"t_min must lie in [0, T={sde.T}), got {t_min!r}.")
  return float(t_min)


def time_at_log_snr(sde: AbstractLinearSDE, log_snr: jax.Array) -> jax.Array:
  """The t in [0, T] with sde.log_snr(t) = log_snr: ``sde.time_at_log_snr`` (closed form for every
  SDE in ``sdes``, bisection in the base class). Values outside [log_snr(T), log_snr(0)] map to the
  nearest end. Works under jit and vmap."""
  return sde.time_at_log_snr(log_snr)


def uniform_time(sde: AbstractLinearSDE, num_steps: int, t_min: float | None = None) -> jax.Array:
  """t_i = T + i/N (t_min - T): the grid of Song et al. 2021."""
  t_min = _check_grid_args(sde, num_steps, t_min)
  return jnp.linspace(sde.T, t_min, num_steps + 1)


def time_quadratic(sde: AbstractLinearSDE, num_steps: int, t_min: float | None = None) -> jax.Array:
  """sqrt(t_i) uniform from sqrt(T) to sqrt(t_min): DPM-Solver's "time_quadratic" grid (Lu et al. 2022)."""
  t_min = _check_grid_args(sde, num_steps, t_min)
  return jnp.linspace(sde.T**0.5, t_min**0.5, num_steps + 1) ** 2


def uniform_log_snr(sde: AbstractLinearSDE, num_steps: int,
                    t_min: float | None = None) -> jax.Array:
  """lambda(t_i) uniform from lambda(T) to lambda(t_min): DPM-Solver's "logSNR" grid (Lu et al. 2022)."""
  t_min = _check_grid_args(sde, num_steps, t_min)
  if not bool(jnp.isfinite(sde.log_snr(t_min))):
    raise ValueError(f"t_min must have a finite log-SNR for a log-SNR grid; t_min={t_min} has none.")
  lams = jnp.linspace(sde.log_snr(sde.T), sde.log_snr(t_min), num_steps + 1)
  return _pin_ends(time_at_log_snr(sde, lams), sde.T, t_min)


def edm_rho(sde: AbstractLinearSDE, num_steps: int, t_min: float | None = None,
            rho: float = 7.0) -> jax.Array:
  """sigma~_i^(1/rho) uniform between the ends, sigma~ = sigma/alpha: EDM's grid (Karras et al. 2022, eq. 5)."""
  t_min = _check_grid_args(sde, num_steps, t_min)
  if not rho > 0:
    raise ValueError(f"rho must be > 0, got {rho!r}.")
  s_max, s_min = sde.edm_sigma(sde.T), sde.edm_sigma(t_min)
  if not bool(s_min > 0):
    raise ValueError(f"t_min must have sigma(t_min) > 0 for the EDM grid, got t_min={t_min}.")
  frac = jnp.linspace(0.0, 1.0, num_steps + 1)
  sigmas = (s_max ** (1 / rho) + frac * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
  return _pin_ends(sde.time_at_edm_sigma(sigmas), sde.T, t_min)


def _pin_ends(ts: jax.Array, t_max: float, t_min: float) -> jax.Array:
  # The inverse is exact only to rounding; the ends are known exactly.
  return ts.at[0].set(t_max).at[-1].set(t_min)


def check_grid(ts: jax.Array) -> None:
  """Raise a ValueError if a concrete grid is not 1-D, at least two points, strictly decreasing."""
  try:
    ts = np.asarray(ts)
  except jax.errors.TracerArrayConversionError:
    return  # a traced grid is checked where it was built
  if ts.ndim != 1 or ts.shape[0] < 2:
    raise ValueError(f"ts must be a 1-D grid with at least 2 times, got shape {ts.shape}.")
  if not np.all(np.diff(ts) < 0):
    raise ValueError("ts must be strictly decreasing (from T towards t_min).")


# --- step rules -------------------------------------------------------------------------------


def transition(sde: AbstractLinearSDE, t: jax.Array, t_next: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(a, s^2) of the exact forward kernel from t_next to t > t_next: x_t = a x_{t_next} + s noise.

  a = alpha(t)/alpha(t_next) = exp(log_alpha(t) - log_alpha(t_next)) and s^2 = sigma_t^2 - a^2 sigma_{t_next}^2.
  For VP this is DDPM's sqrt(1 - beta_i) and beta_i, for VE it is 1 and sigma_i^2 - sigma_{i-1}^2. The
  exponential form keeps 0 < a <= 1 and s^2 >= 0 on any grid; the first-order 1 - beta(t) dt of
  score_sde's discretisation goes negative once beta(t) dt > 1 (a 5-step VP grid) and its square
  root is NaN.
  """
  a = jnp.exp(sde.log_alpha(t) - sde.log_alpha(t_next))
  s2 = sde.sigma(t) ** 2 - (a * sde.sigma(t_next)) ** 2
  return a, jnp.maximum(s2, 0.0)
