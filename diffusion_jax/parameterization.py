"""The readings of one denoising model: score, noise (eps), clean data (x0) and velocity (v).

For x_t = alpha x0 + sigma noise (any linear SDE):
    score = -eps / sigma                      (Vincent 2011; Song et al. 2021)
    x0    = (x_t - sigma eps) / alpha         (Tweedie: E[x0 | x_t] = (x_t + sigma^2 score) / alpha)
    v     = alpha eps - sigma x0              (Salimans & Ho 2022)
All conversions go through eps, so any pair round-trips. They act elementwise on one example.
"""

from __future__ import annotations

import enum
from typing import Callable

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


class NetworkScore(flax.struct.PyTreeNode):
  """A per-example ``score_fn(x, t)`` built from a batched network ``apply_fn(params, x, t[, label])``.

  Parameters (and an optional label) are pytree leaves, so new parameters reuse the compiled
  code; the network, the SDE and the prediction type are static. The batch boundary lives here:
  one example gets a unit batch axis on the way in and loses it on the way out, so ``vmap`` over
  examples agrees with the batched network.
  """

  apply_fn: Callable = flax.struct.field(pytree_node=False)
  params: object
  sde: AbstractLinearSDE = flax.struct.field(pytree_node=False)
  prediction: Prediction = flax.struct.field(pytree_node=False, default=Prediction.EPS)
  label: jax.Array | None = None

  def raw(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """The network output for one example, in its own reading."""
    t = jnp.asarray(t, jnp.result_type(float))
    args = (self.params, x[None], t[None])
    if self.label is not None:
      args = args + (jnp.asarray(self.label)[None],)
    return self.apply_fn(*args)[0]

  def predict(self, x: jax.Array, t: jax.Array, target: Prediction) -> jax.Array:
    alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
    return convert(self.raw(x, t), x, alpha, sigma, source=self.prediction, target=target)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    return self.predict(x, t, Prediction.SCORE)
