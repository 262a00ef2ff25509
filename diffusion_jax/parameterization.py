"""The readings of one denoising model: score, noise (eps), clean data (x0) and velocity (v).

For x_t = alpha x0 + sigma noise (any linear SDE):
    score = -eps / sigma                      (Vincent 2011; Song et al. 2021)
    x0    = (x_t - sigma eps) / alpha         (Tweedie: E[x0 | x_t] = (x_t + sigma^2 score) / alpha)
    v     = alpha eps - sigma x0              (Salimans & Ho 2022)
All conversions go through eps, so any pair round-trips. They act elementwise on one example.

The batch boundary lives here too: ``apply_to_example`` gives one example (x, t, cond) a unit batch
axis, calls the batched ``model_fn(params, x, t, cond, *, key, train)`` and removes the axis again;
``NetworkScore`` and the losses both cross it through that one function. ``EDMPrecond`` wraps a raw
network into an x0-predicting model_fn (Karras et al. 2022).
"""

from __future__ import annotations

import enum
import math
import numbers
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax.sde import AbstractLinearSDE


class Prediction(enum.Enum):
  """What a network predicts."""

  SCORE = "score"
  EPS = "eps"
  X0 = "x0"
  V = "v"


def to_eps(pred: jax.Array, x: jax.Array, alpha, sigma, source: Prediction) -> jax.Array:
  """Convert a ``source`` prediction at x_t = x to the noise prediction eps."""
  if source is Prediction.EPS:
    return pred
  if source is Prediction.SCORE:
    return -sigma * pred
  if source is Prediction.X0:
    return (x - alpha * pred) / sigma
  if source is Prediction.V:
    return (sigma * x + alpha * pred) / (alpha**2 + sigma**2)
  raise ValueError(f"source must be a Prediction, got {source!r}.")


def from_eps(eps: jax.Array, x: jax.Array, alpha, sigma, target: Prediction) -> jax.Array:
  """Convert a noise prediction eps at x_t = x to a ``target`` prediction."""
  if target is Prediction.EPS:
    return eps
  if target is Prediction.SCORE:
    return -eps / sigma
  if target is Prediction.X0:
    return (x - sigma * eps) / alpha
  if target is Prediction.V:
    return alpha * eps - sigma * (x - sigma * eps) / alpha
  raise ValueError(f"target must be a Prediction, got {target!r}.")


def convert(pred: jax.Array, x: jax.Array, alpha, sigma, *, source: Prediction,
            target: Prediction) -> jax.Array:
  """Convert a prediction between any two readings at x_t = x with marginal (alpha, sigma)."""
  return from_eps(to_eps(pred, x, alpha, sigma, source), x, alpha, sigma, target)


def apply_to_example(model_fn: Callable, params: Any, x: jax.Array, t: jax.Array, cond: Any = None,
                     *, key: jax.Array | None = None, train: bool = False) -> jax.Array:
  """model_fn(params, x[None], t[None], cond[None], key=key, train=train)[0]: one example through a
  batched network (a unit batch axis on x, t and every leaf of cond, removed from the output)."""
  t = jnp.asarray(t, jnp.result_type(float))
  if t.ndim != 0:
    raise ValueError(f"t must be a scalar time for one example, got shape {t.shape}.")
  cond_b = jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], cond)
  out = model_fn(params, x[None], t[None], cond_b, key=key, train=train)
  return out[0]


class NetworkScore(flax.struct.PyTreeNode):
  """A per-example ``score_fn(x, t)`` from a batched ``model_fn(params, x, t, cond, *, key, train)``.

  Parameters and the condition are pytree leaves, so new parameters (or a new condition per
  example, bound by ``replace(cond=c)`` or vmapped) reuse the compiled code; the network, the SDE and
  the prediction type are static. The batch boundary: one example gets a unit batch axis on x, t and
  every leaf of cond on the way in and loses it on the way out (``apply_to_example``), so ``vmap``
  over examples agrees with the batched network.
  """

  model_fn: Callable = flax.struct.field(pytree_node=False)
  params: Any
  sde: AbstractLinearSDE = flax.struct.field(pytree_node=False)
  prediction: Prediction = flax.struct.field(pytree_node=False, default=Prediction.EPS)
  cond: Any = None

  def __post_init__(self):
    if not callable(self.model_fn):
      raise TypeError(f"model_fn must be callable as model_fn(params, x, t, cond, *, key, train), "
                      f"got {type(self.model_fn).__name__}.")
    if not isinstance(self.sde, AbstractLinearSDE):
      raise TypeError(f"sde must be an AbstractLinearSDE instance, got {self.sde!r}.")
    if not isinstance(self.prediction, Prediction):
      raise TypeError(f"prediction must be a Prediction, got {self.prediction!r}.")

  def raw(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """The network output for one example, in its own reading (no dropout, train=False)."""
    return apply_to_example(self.model_fn, self.params, x, t, self.cond)

  def predict(self, x: jax.Array, t: jax.Array, target: Prediction) -> jax.Array:
    alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
    return convert(self.raw(x, t), x, alpha, sigma, source=self.prediction, target=target)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    return self.predict(x, t, Prediction.SCORE)


def edm_coefficients(sigma: jax.Array, sigma_data: float):
  """(c_skip, c_out, c_in, c_noise) at EDM noise level sigma (Karras et al. 2022, Table 1):
  sd^2/(s^2+sd^2), s sd/sqrt(s^2+sd^2), 1/sqrt(s^2+sd^2), log(s)/4."""
  total = sigma**2 + sigma_data**2
  return (sigma_data**2 / total, sigma * sigma_data * jax.lax.rsqrt(total), jax.lax.rsqrt(total),
          0.25 * jnp.log(sigma))


def _expand(a: jax.Array, like: jax.Array) -> jax.Array:
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


class EDMPrecond(flax.struct.PyTreeNode):
  """A raw network F as an x0-predicting ``model_fn`` (Karras et al. 2022, eq. 7 and Table 1):

      D(x~; s) = c_skip(s) x~ + c_out(s) F(c_in(s) x~; c_noise(s)),  s = sigma(t)/alpha(t), x~ = x/alpha(t).

  EDM writes the data as x~ = x0 + s noise; a linear SDE's x_t = alpha (x0 + s noise) is alpha x~, so
  the wrapper divides x_t by alpha and feeds the raw network x~'s preconditioned input with c_noise
  in place of t: ``raw_model_fn(params, c_in x~, c_noise, cond, key=key, train=train)``. D estimates
  E[x0 | x_t] directly (x0 and x~ share the data scale), so use it with ``Prediction.X0``.
  """

  raw_model_fn: Callable = flax.struct.field(pytree_node=False)
  sde: AbstractLinearSDE = flax.struct.field(pytree_node=False)
  sigma_data: float = flax.struct.field(pytree_node=False, default=0.5)

  def __post_init__(self):
    if not callable(self.raw_model_fn):
      raise TypeError(f"raw_model_fn must be callable, got {type(self.raw_model_fn).__name__}.")
    if not isinstance(self.sde, AbstractLinearSDE):
      raise TypeError(f"sde must be an AbstractLinearSDE instance, got {self.sde!r}.")
    if (isinstance(self.sigma_data, bool) or not isinstance(self.sigma_data, numbers.Real)
        or not 0 < self.sigma_data < math.inf):
      raise ValueError(f"sigma_data must be a finite float > 0, got {self.sigma_data!r}.")

  def __call__(self, params: Any, x: jax.Array, t: jax.Array, cond: Any = None, *,
               key: jax.Array | None = None, train: bool = False) -> jax.Array:
    t = jnp.asarray(t, x.dtype)
    alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)  # (B,)
    s = sigma / alpha
    c_skip, c_out, c_in, c_noise = edm_coefficients(s, self.sigma_data)
    x_tilde = x / _expand(alpha, x)
    f = self.raw_model_fn(params, _expand(c_in, x) * x_tilde, c_noise, cond, key=key, train=train)
    return _expand(c_skip, x) * x_tilde + _expand(c_out, x) * f


class LogSigmaInput(flax.struct.PyTreeNode):
  """A network conditioned on log sigma(t) as a ``model_fn`` of t (Song et al. 2021's NCSN++ on the
  VE SDE; Song & Ermon 2019's NCSN): ``model_fn(params, x, log sigma(t), cond, ...)``."""

  model_fn: Callable = flax.struct.field(pytree_node=False)
  sde: AbstractLinearSDE = flax.struct.field(pytree_node=False)

  def __post_init__(self):
    if not callable(self.model_fn):
      raise TypeError(f"model_fn must be callable, got {type(self.model_fn).__name__}.")
    if not isinstance(self.sde, AbstractLinearSDE):
      raise TypeError(f"sde must be an AbstractLinearSDE instance, got {self.sde!r}.")

  def __call__(self, params: Any, x: jax.Array, t: jax.Array, cond: Any = None, *,
               key: jax.Array | None = None, train: bool = False) -> jax.Array:
    log_sigma = jnp.log(self.sde.sigma(jnp.asarray(t, x.dtype)))
    return self.model_fn(params, x, log_sigma, cond, key=key, train=train)
