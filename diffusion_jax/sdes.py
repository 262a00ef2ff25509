"""The three SDEs of Song et al. 2021 (VP, sub-VP, VE), the cosine VP schedule, and their discrete views.

Each class writes its marginal (log alpha(t), sigma(t)); drift and diffusion are derived in
``AbstractLinearSDE`` and tested against the closed forms quoted in the docstrings. Each also writes
the closed-form inverse of its log-SNR, ``time_at_log_snr`` (the base class falls back to a
bisection). Schedule parameters are static pytree fields: they are hyperparameters, always
concrete Python floats, validated on construction and usable in Python arithmetic (e.g. ``T``).

The discrete DDPM chain of a VP SDE (alpha-bar_n, beta_n) is written here once: ``ddpm_schedule``.
"""

from __future__ import annotations

import math
import numbers

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.sde import AbstractLinearSDE


def _check_param(sde, name: str, *, positive: bool = True) -> float:
  """A schedule parameter must be a finite real number (> 0 unless told); stored as a float."""
  value = getattr(sde, name)
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.ndarray)):
    raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
  if isinstance(value, np.ndarray) and value.shape != ():
    raise TypeError(f"{name} must be a scalar, got an array of shape {value.shape}.")
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value!r}.")
  if positive and not value > 0:
    raise ValueError(f"{name} must be > 0, got {value!r}.")
  object.__setattr__(sde, name, value)  # a Python float: hashable, as a static field must be
  return value


def _check_order(name_lo, lo, name_hi, hi, *, strict: bool) -> None:
  if (strict and not lo < hi) or (not strict and not lo <= hi):
    op = "<" if strict else "<="
    raise ValueError(f"{name_lo} must be {op} {name_hi}, got {name_lo}={lo!r} and {name_hi}={hi!r}.")


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


class _AbstractLinearBeta(_AbstractVarianceFromAlpha):
  """beta(t) = beta_min + t (beta_max - beta_min) on [0, 1]; alpha(t) = exp(-1/2 int_0^t beta).

  beta_min == beta_max (a constant rate) is allowed.
  """

  beta_min: float = flax.struct.field(pytree_node=False, default=0.1)
  beta_max: float = flax.struct.field(pytree_node=False, default=20.0)

  def __post_init__(self):
    lo, hi = _check_param(self, "beta_min"), _check_param(self, "beta_max")
    _check_order("beta_min", lo, "beta_max", hi, strict=False)

  @property
  def T(self) -> float:
    return 1.0

  def beta(self, t: jax.Array) -> jax.Array:
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_alpha(self, t: jax.Array) -> jax.Array:
    return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

  def _time_at_integrated_beta(self, c: jax.Array) -> jax.Array:
    """t >= 0 with int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2 = c.

    The root 2c / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) c)): no cancellation, and
    c / beta_min for a constant rate.
    """
    c = jnp.clip(c, 0.0, -2.0 * self.log_alpha(self.T))
    slope = self.beta_max - self.beta_min
    return 2.0 * c / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * slope * c))


class VPSDE(_AbstractLinearBeta):
  """Variance-preserving SDE (DDPM in continuous time), linear beta schedule.

  dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,  beta(t) = beta_min + t (beta_max - beta_min);
  alpha(t) = exp(-1/2 int_0^t beta),  sigma(t)^2 = 1 - alpha(t)^2.  (Song et al. 2021, eq. 11.)
  """

  def sigma_squared(self, t: jax.Array) -> jax.Array:
    return -jnp.expm1(2.0 * self.log_alpha(t))

  def time_at_log_snr(self, log_snr: jax.Array) -> jax.Array:
    """alpha^2 = sigmoid(lambda), so int_0^t beta = -log alpha^2 = softplus(-lambda): a quadratic in t."""
    log_snr = jnp.asarray(log_snr, jnp.result_type(float))
    return self._time_at_integrated_beta(jax.nn.softplus(-log_snr))

  def ddpm_betas(self, num_steps: int) -> np.ndarray:
    """The discrete DDPM schedule beta_1..beta_N = linspace(beta_min/N, beta_max/N, N) (Ho et al. 2020).

    Step n corresponds to continuous time t_n = n / N, and prod_{i<=n}(1 - beta_i) tends to
    alpha(t_n)^2 as N grows (Song et al. 2021, App. B). ``ddpm_schedule`` is the exact discrete view.
    """
    num_steps = _check_steps(num_steps)
    return np.linspace(self.beta_min / num_steps, self.beta_max / num_steps, num_steps)


class SubVPSDE(_AbstractLinearBeta):
  """Sub-VP SDE (Song et al. 2021, eq. 12), linear beta schedule.

  dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw;
  alpha(t) = exp(-1/2 int_0^t beta),  sigma(t) = 1 - alpha(t)^2.
  """

  def sigma_squared(self, t: jax.Array) -> jax.Array:
    return jnp.expm1(2.0 * self.log_alpha(t)) ** 2

  def time_at_log_snr(self, log_snr: jax.Array) -> jax.Array:
    """e^lambda = a / (1 - a)^2 for a = alpha^2: the root in (0, 1) of a quadratic, with u = e^-lambda,
    1/a = 1 + (u + sqrt(u (4 + u))) / 2, so int_0^t beta = -log a = log1p((u + sqrt(u) sqrt(4 + u)) / 2)."""
    log_snr = jnp.asarray(log_snr, jnp.result_type(float))
    u = jnp.exp(-log_snr)
    c = jnp.log1p(0.5 * (u + jnp.sqrt(u) * jnp.sqrt(4.0 + u)))
    return self._time_at_integrated_beta(c)


class CosineVPSDE(_AbstractVarianceFromAlpha):
  """VP SDE with the cosine schedule of Nichol & Dhariwal 2021.

  alpha(t)^2 = cos^2(pi/2 (t + s)/(1 + s)) / cos^2(pi/2 s/(1 + s)),  sigma^2 = 1 - alpha^2,
  beta(t) = -d log alpha^2/dt = pi/(1 + s) tan(pi/2 (t + s)/(1 + s)).  beta diverges at t = 1, so
  T is where beta reaches ``beta_clip`` (999 gives T = 0.998; the same rule as DPM-Solver's cosine VP).
  """

  s: float = flax.struct.field(pytree_node=False, default=0.008)
  beta_clip: float = flax.struct.field(pytree_node=False, default=999.0)

  def __post_init__(self):
    _check_param(self, "s")
    _check_param(self, "beta_clip")

  @property
  def T(self) -> float:
    theta = math.atan(self.beta_clip * (1.0 + self.s) / math.pi)
    return theta * 2.0 * (1.0 + self.s) / math.pi - self.s

  def _angle(self, t):
    return 0.5 * math.pi * (t + self.s) / (1.0 + self.s)

  def beta(self, t: jax.Array) -> jax.Array:
    return math.pi / (1.0 + self.s) * jnp.tan(self._angle(t))

  def log_alpha(self, t: jax.Array) -> jax.Array:
    # log(cos a / cos a0). Near t = 0 the two logs nearly cancel (float32 keeps ~1e-3 of a
    # log-alpha of 1e-4 there); cos a - cos a0 = -2 sin((a + a0)/2) sin((a - a0)/2) has no
    # cancellation, with a - a0 = pi/2 t/(1 + s) exact. Near T, where cos a -> 0, the plain form.
    a, a0 = self._angle(t), self._angle(0.0)
    ratio_minus_one = -2.0 * jnp.sin(0.5 * (a + a0)) * jnp.sin(0.25 * math.pi * t / (1.0 + self.s))
    ratio_minus_one = ratio_minus_one / math.cos(a0)
    plain = jnp.log(jnp.cos(a)) - math.log(math.cos(a0))
    return jnp.where(ratio_minus_one > -0.5, jnp.log1p(ratio_minus_one), plain)

  def sigma_squared(self, t: jax.Array) -> jax.Array:
    return -jnp.expm1(2.0 * self.log_alpha(t))

  def time_at_log_snr(self, log_snr: jax.Array) -> jax.Array:
    """cos(angle) = sqrt(alpha^2) cos(angle_0) and sin^2(angle) = sin^2(angle_0) + sigma^2 cos^2(angle_0),
    with alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda): the angle by atan2 (well conditioned
    at both ends), then t = 2 (1 + s) angle / pi - s."""
    log_snr = jnp.asarray(log_snr, jnp.result_type(float))
    c0, s0 = math.cos(self._angle(0.0)), math.sin(self._angle(0.0))
    cos_angle = jnp.sqrt(jax.nn.sigmoid(log_snr)) * c0
    sin_angle = jnp.sqrt(s0**2 + jax.nn.sigmoid(-log_snr) * c0**2)
    t = jnp.arctan2(sin_angle, cos_angle) * (2.0 * (1.0 + self.s) / math.pi) - self.s
    return jnp.clip(t, 0.0, self.T)


class VESDE(AbstractLinearSDE):
  """Variance-exploding SDE (NCSN in continuous time; Song et al. 2021, eq. 9).

  dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw,  sigma(t) = sigma_min (sigma_max/sigma_min)^t,
  alpha(t) = 1.  As in Song et al., sigma(t) is the std of x_t around the clean data, so x_0 carries
  sigma_min of noise; the prior is N(0, sigma_max^2 I).
  """

  sigma_min: float = flax.struct.field(pytree_node=False, default=0.01)
  sigma_max: float = flax.struct.field(pytree_node=False, default=50.0)

  def __post_init__(self):
    lo, hi = _check_param(self, "sigma_min"), _check_param(self, "sigma_max")
    _check_order("sigma_min", lo, "sigma_max", hi, strict=True)

  @property
  def T(self) -> float:
    return 1.0

  def log_alpha(self, t: jax.Array) -> jax.Array:
    return jnp.zeros_like(jnp.asarray(t, float))

  def sigma(self, t: jax.Array) -> jax.Array:
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def edm_sigma(self, t: jax.Array) -> jax.Array:
    return self.sigma(t)  # alpha = 1

  def time_at_sigma(self, sigma: jax.Array) -> jax.Array:
    """The inverse of sigma(t): t = log(sigma / sigma_min) / log(sigma_max / sigma_min)."""
    return jnp.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

  time_at_edm_sigma = time_at_sigma

  def time_at_log_snr(self, log_snr: jax.Array) -> jax.Array:
    """lambda = -2 log sigma(t): t = (-lambda/2 - log sigma_min) / log(sigma_max / sigma_min), clipped to [0, 1]."""
    log_snr = jnp.asarray(log_snr, jnp.result_type(float))
    t = (-0.5 * log_snr - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)
    return jnp.clip(t, 0.0, self.T)

  def prior_std(self) -> float:
    return self.sigma_max

  def ncsn_sigmas(self, num_scales: int) -> np.ndarray:
    """The NCSN noise ladder sigma_1 > ... > sigma_L, geometric from sigma_max to sigma_min.

    Level i sits at continuous time t_i = 1 - (i - 1)/(L - 1) (Song & Ermon 2019; Song et al. 2021).
    """
    num_scales = _check_steps(num_scales, "num_scales")
    return np.geomspace(self.sigma_max, self.sigma_min, num_scales)


# --- the discrete DDPM chain ---------------------------------------------------------------------


def _check_steps(num_steps, name: str = "num_steps", minimum: int = 2) -> int:
  if (isinstance(num_steps, (bool, np.bool_)) or not isinstance(num_steps, numbers.Integral)
      or num_steps < minimum):
    raise ValueError(f"{name} must be an int >= {minimum}, got {num_steps!r}.")
  return int(num_steps)


class DDPMSchedule(flax.struct.PyTreeNode):
  """The discrete chain n = 1..N of a VP SDE at t_n = n T / N: alpha-bar_n = alpha(t_n)^2.

  Held in logs, so that beta_n = 1 - alpha-bar_n / alpha-bar_{n-1} and 1 - alpha-bar_n come from
  ``expm1`` and keep their digits when they are tiny (beta_1 ~ 1e-4 for N = 1000).
  """

  ts: jax.Array  # (N,) t_n
  log_alphas_cumprod: jax.Array  # (N,) log alpha-bar_n

  @property
  def alphas_cumprod(self) -> jax.Array:
    return jnp.exp(self.log_alphas_cumprod)

  @property
  def log_alphas_cumprod_prev(self) -> jax.Array:
    """log alpha-bar_{n-1}, with alpha-bar_0 = 1."""
    return jnp.concatenate([jnp.zeros((1,), self.log_alphas_cumprod.dtype),
                            self.log_alphas_cumprod[:-1]])

  @property
  def one_minus_alphas_cumprod(self) -> jax.Array:
    return -jnp.expm1(self.log_alphas_cumprod)

  @property
  def betas(self) -> jax.Array:
    return -jnp.expm1(self.log_alphas_cumprod - self.log_alphas_cumprod_prev)


def ddpm_schedule(sde: AbstractLinearSDE, num_steps: int) -> DDPMSchedule:
  """alpha-bar_n = alpha(t_n)^2 at t_n = n T / N, n = 1..N: the exact discrete view of a VP SDE
  (Ho et al. 2020, eq. 4; Song et al. 2021, App. B)."""
  num_steps = _check_steps(num_steps)
  ts = jnp.arange(1, num_steps + 1, dtype=jnp.result_type(float)) * (sde.T / num_steps)
  return DDPMSchedule(ts=ts, log_alphas_cumprod=2.0 * sde.log_alpha(ts))


def alphas_cumprod(sde: AbstractLinearSDE, num_steps: int) -> np.ndarray:
  """alpha-bar_n, n = 1..N, of ``ddpm_schedule`` as a NumPy array."""
  return np.asarray(ddpm_schedule(sde, num_steps).alphas_cumprod)


def betas_from_alphas_cumprod(alphas_cumprod_: np.ndarray) -> np.ndarray:
  """beta_n = 1 - alpha-bar_n / alpha-bar_{n-1} with alpha-bar_0 = 1."""
  prev = np.concatenate([[1.0], alphas_cumprod_[:-1]])
  return 1.0 - alphas_cumprod_ / prev
