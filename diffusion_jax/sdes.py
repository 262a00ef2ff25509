"""The three SDEs of Song et al. 2021 (VP, sub-VP, VE), the cosine VP schedule, and their discrete views.

Each class writes its marginal (log alpha(t), sigma(t)); drift and diffusion are derived in
``AbstractLinearSDE`` and tested against the closed forms quoted in the docstrings. Schedule
parameters are static pytree fields: they are hyperparameters, always concrete Python floats, so
they can be validated on construction and used in Python arithmetic (e.g. ``T``).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import _checks
from diffusion_jax.sde import AbstractLinearSDE


class _AbstractVarianceFromAlpha(AbstractLinearSDE):
  """Shared by VP-type SDEs: sigma^2 is a function of alpha^2, so it is written as such."""

  def sigma_squared(self, t: jax.Array) -> jax.Array:
    raise NotImplementedError

  def sigma(self, t: jax.Array) -> jax.Array:
    return jnp.sqrt(self.sigma_squared(t))

  def diffusion_squared(self, t: jax.Array) -> jax.Array:
    # Differentiate sigma^2 directly: sqrt then square has an infinite slope at t = 0.
    t = jnp.asarray(t, float)
    var, dvar = jax.jvp(self.sigma_squared, (t,), (jnp.ones_like(t),))
    return dvar - 2.0 * self.drift_coef(t) * var


class VPSDE(_AbstractVarianceFromAlpha):
  """Variance-preserving SDE (DDPM in continuous time), linear beta schedule.

  dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,  beta(t) = beta_min + t (beta_max - beta_min);
  alpha(t) = exp(-1/2 int_0^t beta),  sigma(t)^2 = 1 - alpha(t)^2.  (Song et al. 2021, eq. 11.)
  """

  beta_min: float = flax.struct.field(pytree_node=False, default=0.1)
  beta_max: float = flax.struct.field(pytree_node=False, default=20.0)

  def __post_init__(self):
    _checks.check_positive("beta_min", self.beta_min)
    _checks.check_less("beta_min", self.beta_min, "beta_max", self.beta_max)

  @property
  def T(self) -> float:
    return 1.0

  def beta(self, t: jax.Array) -> jax.Array:
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_alpha(self, t: jax.Array) -> jax.Array:
    return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

  def sigma_squared(self, t: jax.Array) -> jax.Array:
    return -jnp.expm1(2.0 * self.log_alpha(t))

  def ddpm_betas(self, num_steps: int) -> np.ndarray:
    """The discrete DDPM schedule beta_1..beta_N = linspace(beta_min/N, beta_max/N, N) (Ho et al. 2020).

    Step n corresponds to continuous time t_n = n / N, and prod_{i<=n}(1 - beta_i) tends to
    alpha(t_n)^2 as N grows (Song et al. 2021, App. B).
    """
    if num_steps < 2:
      raise ValueError(f"num_steps must be >= 2, got {num_steps}.")
    return np.linspace(self.beta_min / num_steps, self.beta_max / num_steps, num_steps)


class CosineVPSDE(_AbstractVarianceFromAlpha):
  """VP SDE with the cosine schedule of Nichol & Dhariwal 2021.

  alpha(t)^2 = cos^2(pi/2 (t + s)/(1 + s)) / cos^2(pi/2 s/(1 + s)),  sigma^2 = 1 - alpha^2,
  beta(t) = -d log alpha^2/dt = pi/(1 + s) tan(pi/2 (t + s)/(1 + s)).  beta diverges at t = 1, so
  T is where beta reaches ``beta_clip`` (999 gives T = 0.998; the same rule as DPM-Solver's cosine VP).
  """

  s: float = flax.struct.field(pytree_node=False, default=0.008)
  beta_clip: float = flax.struct.field(pytree_node=False, default=999.0)

  def __post_init__(self):
    _checks.check_positive("s", self.s)
    _checks.check_positive("beta_clip", self.beta_clip)

  @property
  def T(self) -> float:
    theta = math.atan(self.beta_clip * (1.0 + self.s) / math.pi)
    return theta * 2.0 * (1.0 + self.s) / math.pi - self.s

  def _angle(self, t):
    return 0.5 * math.pi * (t + self.s) / (1.0 + self.s)

  def beta(self, t: jax.Array) -> jax.Array:
    return math.pi / (1.0 + self.s) * jnp.tan(self._angle(t))

  def log_alpha(self, t: jax.Array) -> jax.Array:
    return jnp.log(jnp.cos(self._angle(t))) - jnp.log(jnp.cos(self._angle(0.0)))

  def sigma_squared(self, t: jax.Array) -> jax.Array:
    return -jnp.expm1(2.0 * self.log_alpha(t))


class SubVPSDE(_AbstractVarianceFromAlpha):
  """Sub-VP SDE (Song et al. 2021, eq. 12), linear beta schedule.

  dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw;
  alpha(t) = exp(-1/2 int_0^t beta),  sigma(t) = 1 - alpha(t)^2.
  """

  beta_min: float = flax.struct.field(pytree_node=False, default=0.1)
  beta_max: float = flax.struct.field(pytree_node=False, default=20.0)

  def __post_init__(self):
    _checks.check_positive("beta_min", self.beta_min)
    _checks.check_less("beta_min", self.beta_min, "beta_max", self.beta_max)

  @property
  def T(self) -> float:
    return 1.0

  def beta(self, t: jax.Array) -> jax.Array:
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_alpha(self, t: jax.Array) -> jax.Array:
    return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

  def sigma_squared(self, t: jax.Array) -> jax.Array:
    return jnp.expm1(2.0 * self.log_alpha(t)) ** 2


class VESDE(AbstractLinearSDE):
  """Variance-exploding SDE (NCSN in continuous time; Song et al. 2021, eq. 9).

  dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw,  sigma(t) = sigma_min (sigma_max/sigma_min)^t,
  alpha(t) = 1.  As in Song et al., sigma(t) is the std of x_t around the clean data, so x_0 carries
  sigma_min of noise; the prior is N(0, sigma_max^2 I).
  """

  sigma_min: float = flax.struct.field(pytree_node=False, default=0.01)
  sigma_max: float = flax.struct.field(pytree_node=False, default=50.0)

  def __post_init__(self):
    _checks.check_positive("sigma_min", self.sigma_min)
    _checks.check_less("sigma_min", self.sigma_min, "sigma_max", self.sigma_max)

  @property
  def T(self) -> float:
    return 1.0

  def log_alpha(self, t: jax.Array) -> jax.Array:
    return jnp.zeros_like(jnp.asarray(t, float))

  def sigma(self, t: jax.Array) -> jax.Array:
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def time_at_sigma(self, sigma: jax.Array) -> jax.Array:
    """The inverse of sigma(t)."""
    return jnp.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

  def prior_std(self) -> float:
    return self.sigma_max

  def ncsn_sigmas(self, num_scales: int) -> np.ndarray:
    """The NCSN noise ladder sigma_1 > ... > sigma_L, geometric from sigma_max to sigma_min.

    Level i sits at continuous time t_i = 1 - (i - 1)/(L - 1) (Song & Ermon 2019; Song et al. 2021).
    """
    if num_scales < 2:
      raise ValueError(f"num_scales must be >= 2, got {num_scales}.")
    return np.geomspace(self.sigma_max, self.sigma_min, num_scales)


def alphas_cumprod(sde: AbstractLinearSDE, num_steps: int) -> np.ndarray:
  """alpha-bar_n = alpha(t_n)^2 at t_n = n T / N, n = 1..N: the exact discrete view of any VP SDE."""
  ts = np.arange(1, num_steps + 1) * (sde.T / num_steps)
  return np.asarray(jnp.exp(2.0 * sde.log_alpha(jnp.asarray(ts))))


def betas_from_alphas_cumprod(alphas_cumprod_: np.ndarray) -> np.ndarray:
  """beta_n = 1 - alpha-bar_n / alpha-bar_{n-1} with alpha-bar_0 = 1."""
  prev = np.concatenate([[1.0], alphas_cumprod_[:-1]])
  return 1.0 - alphas_cumprod_ / prev


