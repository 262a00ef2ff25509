"""Itô SDEs, their reverse-time SDE and their probability-flow ODE.

Forward SDE (Song et al. 2021, eq. 5):        dx = f(x, t) dt + g(t) dw
Reverse-time SDE (Anderson 1982; eq. 6):      dx = [f(x, t) - g(t)^2 score(x, t)] dt + g(t) dw̄
Probability-flow ODE (Song et al. 2021, eq. 13): dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t)

All functions act on ONE example ``x`` (any shape) and a scalar time ``t``; callers ``vmap``.

Every SDE used for diffusion models here is *linear*: its drift is f(t) x and its transition
kernel is Gaussian, x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I). A linear SDE is therefore fully
described by its marginal coefficients alpha(t) and sigma(t); the drift and diffusion follow:

    f(t) = d log alpha / dt,        g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2.

``AbstractLinearSDE`` derives them with ``jax.jvp`` so a subclass only writes its marginal, and the
tests pin the derived values against the closed forms of Song et al. 2021, App. B.

The noise level of the scaled variable x / alpha, EDM's sigma~ = sigma / alpha = exp(-lambda / 2)
(Karras et al. 2022, eq. 4), and the inverses t(lambda) and t(sigma~) are written here once:
``time_at_log_snr`` is a bisection in the base class and a closed form in every SDE of ``sdes``.
"""

from __future__ import annotations

import abc
import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import _checks

# Bisection on [0, T] halves the bracket each pass; 60 passes reach below float64 resolution.
_BISECTION_STEPS = 60

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


class AbstractSDE(flax.struct.PyTreeNode, abc.ABC):
  """An Itô SDE dx = f(x, t) dt + g(t) dw on [0, T], holding schedule parameters only."""

  @property
  @abc.abstractmethod
  def T(self) -> float:
    """End time of the forward process."""

  @abc.abstractmethod
  def drift(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """f(x, t)."""

  @abc.abstractmethod
  def diffusion(self, t: jax.Array) -> jax.Array:
    """g(t) (a scalar: the noise is isotropic)."""

  def diffusion_squared(self, t: jax.Array) -> jax.Array:
    """g(t)^2."""
    return self.diffusion(t) ** 2

  @abc.abstractmethod
  def prior_sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A draw from the prior p_T that sampling starts from."""

  @abc.abstractmethod
  def prior_logp(self, z: jax.Array) -> jax.Array:
    """log p_T(z) for one example, summed over all dimensions."""

  def reverse(self, score_fn: ScoreFn) -> "ReverseSDE":
    """The reverse-time SDE driven by ``score_fn``."""
    return ReverseSDE(self, score_fn)

  def probability_flow(self, score_fn: ScoreFn) -> "ProbabilityFlowODE":
    """The probability-flow ODE driven by ``score_fn``."""
    return ProbabilityFlowODE(self, score_fn)


class AbstractLinearSDE(AbstractSDE):
  """A linear SDE with Gaussian kernel x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I).

  Subclasses implement ``log_alpha(t)`` and ``sigma(t)``; drift and diffusion are derived.
  """

  @abc.abstractmethod
  def log_alpha(self, t: jax.Array) -> jax.Array:
    """log alpha(t), the log of the marginal mean coefficient."""

  @abc.abstractmethod
  def sigma(self, t: jax.Array) -> jax.Array:
    """sigma(t), the marginal standard deviation."""

  @property
  def t_min_default(self) -> float:
    """The usual lower cut-off of time for training and sampling with this SDE."""
    return 1e-5

  def alpha(self, t: jax.Array) -> jax.Array:
    return jnp.exp(self.log_alpha(t))

  def marginal(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha(t), sigma(t)): x_t = alpha(t) x_0 + sigma(t) noise."""
    _checks.check_time("t", t, 0.0, self.T)
    return self.alpha(t), self.sigma(t)

  def log_snr(self, t: jax.Array) -> jax.Array:
    """lambda(t) = log(alpha^2 / sigma^2)."""
    return 2.0 * (self.log_alpha(t) - jnp.log(self.sigma(t)))

  def edm_sigma(self, t: jax.Array) -> jax.Array:
    """sigma~(t) = sigma(t) / alpha(t) = exp(-lambda(t) / 2): EDM's noise level of x / alpha."""
    return self.sigma(t) * jnp.exp(-self.log_alpha(t))

  def time_at_log_snr(self, log_snr: jax.Array) -> jax.Array:
    """The t in [0, T] with log_snr(t) = log_snr (log-SNR decreases in t); values outside
    [log_snr(T), log_snr(0)] map to the nearest end.

    The fallback for SDEs without a closed form: a 60-pass bisection per value (jit/vmap-safe).
    """
    log_snr = jnp.asarray(log_snr, jnp.result_type(float))

    def one(target):
      def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        # log_snr(mid) > target means mid is still too early (too little noise).
        above = self.log_snr(mid) > target
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

      zero = jnp.zeros((), log_snr.dtype)
      lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (zero, zero + self.T))
      return 0.5 * (lo + hi)

    flat = jnp.ravel(log_snr)
    return jax.vmap(one)(flat).reshape(log_snr.shape)

  def time_at_edm_sigma(self, edm_sigma: jax.Array) -> jax.Array:
    """The inverse of ``edm_sigma``: t with sigma(t) / alpha(t) = edm_sigma, via lambda = -2 log sigma~."""
    return self.time_at_log_snr(-2.0 * jnp.log(edm_sigma))

  def marginal_sample(self, key: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
    """A draw of x_t given x_0."""
    alpha, sigma = self.marginal(t)
    return alpha * x0 + sigma * jr.normal(key, jnp.shape(x0), jnp.result_type(x0, float))

  def drift_coef(self, t: jax.Array) -> jax.Array:
    """f(t) in f(x, t) = f(t) x, as d log alpha / dt."""
    t = jnp.asarray(t, float)
    return jax.jvp(self.log_alpha, (t,), (jnp.ones_like(t),))[1]

  def diffusion_squared(self, t: jax.Array) -> jax.Array:
    """g(t)^2 = d sigma^2/dt - 2 f(t) sigma^2."""
    t = jnp.asarray(t, float)
    var, dvar = jax.jvp(lambda s: self.sigma(s) ** 2, (t,), (jnp.ones_like(t),))
    return dvar - 2.0 * self.drift_coef(t) * var

  def drift(self, x: jax.Array, t: jax.Array) -> jax.Array:
    return self.drift_coef(t) * x

  def diffusion(self, t: jax.Array) -> jax.Array:
    return jnp.sqrt(self.diffusion_squared(t))

  def prior_std(self) -> float:
    """Standard deviation of the Gaussian prior N(0, prior_std^2 I)."""
    return 1.0

  def prior_sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return self.prior_std() * jr.normal(key, shape)

  def prior_logp(self, z: jax.Array) -> jax.Array:
    s = self.prior_std()
    return jnp.sum(-0.5 * (z / s) ** 2 - jnp.log(s) - 0.5 * math.log(2 * math.pi))


class ReverseSDE(flax.struct.PyTreeNode):
  """Reverse-time SDE dx = [f - g^2 score] dt + g dw̄, integrated from T down to 0."""

  sde: AbstractSDE
  score_fn: ScoreFn

  def drift(self, x: jax.Array, t: jax.Array) -> jax.Array:
    g = self.sde.diffusion(t)
    return self.sde.drift(x, t) - g**2 * self.score_fn(x, t)

  def diffusion(self, t: jax.Array) -> jax.Array:
    return self.sde.diffusion(t)


class ProbabilityFlowODE(flax.struct.PyTreeNode):
  """dx/dt = f(t) x - 1/2 g(t)^2 score(x, t): the ODE sharing the SDE's marginals (Song et al. 2021, eq. 13).

  The one place where the probability-flow velocity is written; the likelihood and the adaptive
  sampler integrate it in t, in EDM's sigma~ or in the log-SNR. For a linear SDE,
  g^2 = alpha^2 d(sigma~^2)/dt, so with y = x / alpha the same ODE reads
      dy/dsigma~ = -sigma~ alpha score(alpha y, t)          (Karras et al. 2022, eq. 4)
      dy/dlambda = sigma~^2 alpha score(alpha y, t) / 2     (sigma~ = exp(-lambda / 2); Lu et al. 2022)
  (the f x term is absorbed by the scaling): ``edm_velocity`` and ``log_snr_velocity`` are
  ``velocity`` after that change of variables, and a test pins them against it.
  """

  sde: AbstractSDE
  score_fn: ScoreFn

  def velocity(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """dx/dt."""
    return self.sde.drift(x, t) - 0.5 * self.sde.diffusion_squared(t) * self.score_fn(x, t)

  __call__ = velocity

  def _scaled_score(self, y: jax.Array, t: jax.Array) -> jax.Array:
    # alpha score(alpha y, t) = grad_y log p(y): the score of the scaled variable.
    alpha = self.sde.alpha(t)
    return alpha * self.score_fn(alpha * y, t)

  def edm_velocity(self, y: jax.Array, edm_sigma: jax.Array) -> jax.Array:
    """dy/dsigma~ for y = x / alpha (linear SDEs)."""
    t = self.sde.time_at_edm_sigma(edm_sigma)
    return -edm_sigma * self._scaled_score(y, t)

  def log_snr_velocity(self, y: jax.Array, log_snr: jax.Array) -> jax.Array:
    """dy/dlambda for y = x / alpha: d sigma~/d lambda = -sigma~ / 2 times ``edm_velocity``."""
    t = self.sde.time_at_log_snr(log_snr)
    return 0.5 * jnp.exp(-log_snr) * self._scaled_score(y, t)
