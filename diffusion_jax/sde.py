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
  """dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t): the ODE sharing the SDE's marginals."""

  sde: AbstractSDE
  score_fn: ScoreFn

  def velocity(self, x: jax.Array, t: jax.Array) -> jax.Array:
    g = self.sde.diffusion(t)
    return self.sde.drift(x, t) - 0.5 * g**2 * self.score_fn(x, t)

  __call__ = velocity
