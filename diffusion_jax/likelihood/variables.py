"""The independent variable in which the probability-flow ODE is integrated: time, or EDM's sigma~.

Both read the one velocity of ``sde.probability_flow(score_fn)`` (``ProbabilityFlowODE``): in t it
is dx/dt, in s = sigma~ = sigma/alpha with y = x/alpha it is dy/ds (Karras et al. 2022, eq. 4).
"""

from __future__ import annotations

import abc

import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax.sde import AbstractLinearSDE, ScoreFn


class AbstractFlowVariable(flax.struct.PyTreeNode, abc.ABC):
  """The independent variable s and state y = x / scale(t) in which the ODE is integrated.

  For any such change, log p_t(x) = log p^y_s(y) - D log scale(t), so the log-likelihood gains the
  constant D (log scale(T) - log scale(t_min)) next to the divergence integral in s.
  """

  @abc.abstractmethod
  def variable(self, sde: AbstractLinearSDE, t: jax.Array) -> jax.Array:
    """s(t), increasing in t."""

  @abc.abstractmethod
  def time(self, sde: AbstractLinearSDE, s: jax.Array) -> jax.Array:
    """t(s), the inverse of ``variable``."""

  @abc.abstractmethod
  def log_scale(self, sde: AbstractLinearSDE, t: jax.Array) -> jax.Array:
    """log of x / y at time t."""

  @abc.abstractmethod
  def velocity(self, sde: AbstractLinearSDE, score_fn: ScoreFn, y: jax.Array,
               s: jax.Array) -> jax.Array:
    """dy/ds, from ``sde.probability_flow(score_fn)``."""


class InTime(AbstractFlowVariable):
  """s = t, y = x: the probability-flow ODE as written (Song et al. 2021, eq. 13)."""

  def variable(self, sde, t):
    return t

  def time(self, sde, s):
    return s

  def log_scale(self, sde, t):
    return jnp.zeros_like(jnp.asarray(t, float))

  def velocity(self, sde, score_fn, y, s):
    return sde.probability_flow(score_fn).velocity(y, s)


class InSigma(AbstractFlowVariable):
  """s = sigma/alpha, y = x/alpha: dy/ds = -s alpha score(alpha y, t(s)) (Karras et al. 2022, eq. 4).

  Here grad_y log p(y) = alpha score(x, t), and the ODE has no drift term. For VE (alpha = 1) y = x
  and s = sigma: trajectories of Gaussian-like data are nearly straight lines in sigma at large
  sigma, so an adaptive solver steps further than in t. t(s) is the SDE's own closed-form inverse
  (``sde.time_at_edm_sigma``).
  """

  def variable(self, sde, t):
    return sde.edm_sigma(t)

  def time(self, sde, s):
    return sde.time_at_edm_sigma(s)

  def log_scale(self, sde, t):
    return sde.log_alpha(t)

  def velocity(self, sde, score_fn, y, s):
    return sde.probability_flow(score_fn).edm_velocity(y, s)
