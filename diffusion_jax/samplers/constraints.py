"""Constraint wrappers: samplers around any sampler that condition the sample on a measurement.

- ``Inpaint``: known coordinates (a mask and their values) replaced after every step, in the pixel
  basis or in any orthogonal basis of the channels; ``colorization`` is inpainting of the grey
  coordinate in Song et al. 2021's decoupled colour basis.
- ``RePaint``: resampling around any sampler (usually an ``Inpaint``): each step is taken
  ``resamples`` times, noising the result back to the step's start in between (Lugmayr et al. 2022).
- ``PosteriorSampling``: DPS (Chung et al. 2023), a gradient step on ||y - A(E[x0 | x_t])|| after
  each step, for any differentiable measurement A with Gaussian noise.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from diffusion_jax import _checks, schedules
from diffusion_jax.samplers import base

# Song et al. 2021 (score_sde, App. I.2) decouple RGB into an orthonormal basis whose first vector is
# the grey direction (1, 1, 1)/sqrt(3); the other two span the colour plane. Columns are the basis
# vectors, so decoupled = rgb @ COLOUR_BASIS and rgb = decoupled @ COLOUR_BASIS.T.
COLOUR_BASIS = np.array([[1 / math.sqrt(3), -math.sqrt(2 / 3), 0.0],
                         [1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)],
                         [1 / math.sqrt(3), 1 / math.sqrt(6), -1 / math.sqrt(2)]])


class Inpaint(base.AbstractSampler):
  """After each step of ``inner`` to t_next: x <- m (alpha' y + sigma' z) + (1 - m) x; at the end x <- m y + (1 - m) x.

  The replacement method of Song et al. 2021, App. I.2 (score_sde's inpainting): the known
  coordinates (mask m = 1) are replaced by a fresh draw of the forward marginal of the measurement
  y at the step's end time, so the inner sampler always sees a point of p_t's known slice; after
  the final denoising step (``finalize``) they equal y exactly. It conditions only through the
  score's coupling of the coordinates, so it is an approximation of p(x_unknown | x_known = y)
  (RePaint, Lugmayr et al. 2022, resamples to reduce the mismatch).

  ``mask`` and ``value`` are arrays of one example's shape (``value`` is read where the mask is 1):
  pytree leaves, traced by ``jit``; with ``sample_examples(..., sampler_axes=0)`` each example
  has its own mask and measurement.

  With ``basis`` (a C x C orthogonal matrix, C the last axis of the example), the mask and the
  value live in the decoupled coordinates x @ basis, and the replacement is made there:
  colorization is the known grey coordinate of ``COLOUR_BASIS`` (see ``colorization``). The
  forward noise stays isotropic in any orthogonal basis, so the replacement rule is unchanged.
  """

  inner: base.AbstractSampler
  mask: jax.Array
  value: jax.Array
  basis: jax.Array | None = None

  stochastic = True  # the replacement draws noise even around a deterministic sampler

  def __post_init__(self):
    _checks.check_instance("inner", self.inner, base.AbstractSampler, "DDIM()")
    # Only a concrete array is checked: JAX also rebuilds the sampler with tracers, and users with
    # axis numbers in place of leaves (a sampler_axes prefix).
    is_array = isinstance(self.basis, (np.ndarray, jax.Array))
    basis = _checks.concrete_or_none(self.basis) if is_array else None
    if basis is not None:
      basis = basis.astype(float)
      if basis.ndim != 2 or basis.shape[0] != basis.shape[1] or \
          not np.allclose(basis.T @ basis, np.eye(basis.shape[0]), atol=1e-5):
        # 1e-5: a float32 orthonormal matrix is orthonormal to a few ulps, a wrong one by O(1).
        raise ValueError(f"basis must be an orthogonal C x C matrix (basis.T @ basis = I), got shape "
                         f"{basis.shape}.")

  @property
  def denoise_final_default(self) -> bool:
    return self.inner.denoise_final_default

  def _check_shapes(self, x):
    for name in ("mask", "value"):
      if jnp.shape(getattr(self, name)) != x.shape:
        raise ValueError(f"Inpaint's {name} must have one example's shape {x.shape}, got "
                         f"{jnp.shape(getattr(self, name))} (per-example masks: pass sampler_axes=0 "
                         "to sample_examples / sample_batch).")

  def init(self, sde, score_fn, ts, x):
    self._check_shapes(x)
    if self.basis is not None and jnp.shape(self.basis)[-1] != x.shape[-1]:
      raise ValueError(f"Inpaint's basis must be {x.shape[-1]} x {x.shape[-1]} for examples of shape "
                       f"{x.shape} (it acts on the last axis), got {jnp.shape(self.basis)}.")
    return self.inner.init(sde, score_fn, ts, x)

  def _put(self, x, known):
    if self.basis is None:
      return jnp.where(jnp.asarray(self.mask, bool), known.astype(x.dtype), x)
    basis = jnp.asarray(self.basis, x.dtype)
    decoupled = jnp.where(jnp.asarray(self.mask, bool), known.astype(x.dtype), x @ basis)
    return decoupled @ basis.T

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    inner_key, noise_key = jr.split(key)
    x, aux, state = self.inner.step(sde, score_fn, t, t_next, x, state, key=inner_key)
    alpha, sigma = sde.alpha(t_next), sde.sigma(t_next)
    noise = jr.normal(noise_key, x.shape, x.dtype)
    aux = aux.replace(mean=self._put(aux.mean, alpha * self.value), denoised=self._put(aux.denoised, self.value))
    return self._put(x, alpha * self.value + sigma * noise), aux, state

  def finalize(self, sde, score_fn, x, t_last, state):
    x, aux = self.inner.finalize(sde, score_fn, x, t_last, state)
    return self._put(x, self.value), aux.replace(mean=self._put(aux.mean, self.value),
                                                 denoised=self._put(aux.denoised, self.value))


def colorization(inner: base.AbstractSampler, grey: jax.Array) -> Inpaint:
  """Colorization (Song et al. 2021, App. I.2) as inpainting of the grey coordinate.

  ``grey`` is one example's grey image, (H, W) or (H, W, 1), the mean of the RGB channels in the
  data's scale. In ``COLOUR_BASIS`` the first coordinate of a pixel is (r + g + b)/sqrt(3) =
  sqrt(3) grey: that coordinate is known, the two colour coordinates are sampled. Use with
  ``sample_examples(..., sampler_axes=0)`` for one grey image per example (a leading axis on grey).
  """
  grey = jnp.asarray(grey)
  if grey.ndim >= 1 and grey.shape[-1] == 1:
    grey = grey[..., 0]
  if grey.ndim < 2:
    raise ValueError(f"grey must be an image (H, W) or (H, W, 1), optionally with a leading example "
                     f"axis, got shape {jnp.shape(grey)}.")
  value = jnp.stack([math.sqrt(3.0) * grey, jnp.zeros_like(grey), jnp.zeros_like(grey)], axis=-1)
  mask = jnp.zeros_like(value).at[..., 0].set(1.0)
  return Inpaint(inner, mask, value, jnp.asarray(COLOUR_BASIS, value.dtype))


def renoise(sde, x: jax.Array, t_from: jax.Array, t_to: jax.Array, key: jax.Array) -> jax.Array:
  """A draw of the forward kernel x_{t_to} | x_{t_from} for t_to > t_from: a x + s z (``schedules.transition``)."""
  a, s2 = schedules.transition(sde, t_to, t_from)
  return a * x + jnp.sqrt(s2) * jr.normal(key, x.shape, x.dtype)


class RePaint(base.AbstractSampler):
  """Each step of ``inner`` taken ``resamples`` times, with a forward noising back to t in between.

  Lugmayr et al. 2022 (RePaint, jump length 1): after a step t -> t_next, x_{t_next} is noised back
  to t by the exact forward kernel and the step is taken again, ``resamples`` times in all. Around a
  constraint (``RePaint(Inpaint(...), 10)``) the repeats let the unknown coordinates adapt to the
  replaced ones, which one replacement per step does not. It costs ``resamples`` times the inner
  step's evaluations. The inner sampler should be a one-step method (ancestral, DDIM): every
  repeat restarts from the state before the step, and the state after the last repeat is kept.
  """

  inner: base.AbstractSampler
  resamples: int = flax.struct.field(pytree_node=False, default=10)

  stochastic = True

  def __post_init__(self):
    _checks.check_instance("inner", self.inner, base.AbstractSampler, "Inpaint(Ancestral(), mask, y)")
    _checks.check_count("resamples", self.resamples)

  @property
  def denoise_final_default(self) -> bool:
    return self.inner.denoise_final_default

  def init(self, sde, score_fn, ts, x):
    return self.inner.init(sde, score_fn, ts, x)

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    def once(x_t, u):
      step_key, noise_key = jr.split(jr.fold_in(key, u))
      x_next, aux, new_state = self.inner.step(sde, score_fn, t, t_next, x_t, state, key=step_key)
      return x_next, aux, new_state, noise_key

    def body(carry, u):
      x_t, nfe = carry
      x_next, aux, _, noise_key = once(x_t, u)
      return (renoise(sde, x_next, t_next, t, noise_key), nfe + aux.nfe), None

    (x, nfe), _ = jax.lax.scan(body, (x, base.nfe(0)), jnp.arange(self.resamples - 1))
    x_next, aux, state, _ = once(x, self.resamples - 1)
    return x_next, aux.replace(nfe=aux.nfe + nfe), state

  def finalize(self, sde, score_fn, x, t_last, state):
    return self.inner.finalize(sde, score_fn, x, t_last, state)


class MaskedMeasurement(flax.struct.PyTreeNode):
  """A(x) = mask * x: inpainting as a measurement for ``PosteriorSampling`` (the mask is a leaf, so
  with ``sampler_axes=0`` each example has its own)."""

  mask: jax.Array

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.asarray(self.mask, x.dtype) * x


class PosteriorSampling(base.AbstractSampler):
  """Diffusion posterior sampling (DPS, Chung et al. 2023, Alg. 1) around any sampler.

  For a measurement y = A(x0) + n with a differentiable ``measure_fn`` A (a pytree callable on one
  example, returning an array of y's shape), after each step of ``inner`` from t to t_next:

      x_next <- x_next - zeta / ||y - A(D(x_t))|| * grad_{x_t} ||y - A(D(x_t))||^2,

  D(x_t) = E[x0 | x_t] from the score at (x_t, t) (Tweedie), the gradient through the score by
  reverse mode. zeta / ||residual|| is the paper's step size for Gaussian noise (zeta' in their
  App. C, 0.1 - 1 for images in [-1, 1]). The gradient costs one more score evaluation per step,
  with its VJP, next to the inner step's own: the reported NFE counts it. ``finalize`` is the
  inner sampler's (no gradient step after the last denoising).
  """

  inner: base.AbstractSampler
  measure_fn: Any
  y: jax.Array
  zeta: Any = 1.0

  stochastic = True

  def __post_init__(self):
    _checks.check_instance("inner", self.inner, base.AbstractSampler, "Ancestral()")
    if not callable(self.measure_fn):
      raise TypeError(f"measure_fn must be callable as A(x) on one example, got "
                      f"{type(self.measure_fn).__name__}.")
    if _checks.is_concrete(self.zeta) and not (np.ndim(self.zeta) == 0 and float(self.zeta) >= 0):
      raise ValueError(f"zeta must be a step size >= 0, got {self.zeta!r}.")

  @property
  def denoise_final_default(self) -> bool:
    return self.inner.denoise_final_default

  def init(self, sde, score_fn, ts, x):
    out = jax.eval_shape(self.measure_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if out.shape != jnp.shape(self.y):
      raise ValueError(f"measure_fn maps an example of shape {x.shape} to shape {out.shape}, but y has "
                       f"shape {jnp.shape(self.y)} (per-example measurements: sampler_axes=0).")
    return self.inner.init(sde, score_fn, ts, x)

  def _residual_norm_sq(self, sde, score_fn, x, t):
    denoised = base.evaluate(sde, score_fn, x, t).denoised
    return jnp.sum((jnp.asarray(self.y, x.dtype) - self.measure_fn(denoised)) ** 2)

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    loss, grad = jax.value_and_grad(lambda v: self._residual_norm_sq(sde, score_fn, v, t))(x)
    x_next, aux, state = self.inner.step(sde, score_fn, t, t_next, x, state, key=key)
    # The tiny floor keeps an exact fit (residual 0, gradient 0) from dividing 0 by 0.
    step_size = jnp.asarray(self.zeta, x.dtype) / jnp.sqrt(jnp.maximum(loss, 1e-30))
    return x_next - step_size * grad, aux.replace(nfe=aux.nfe + 1), state

  def finalize(self, sde, score_fn, x, t_last, state):
    return self.inner.finalize(sde, score_fn, x, t_last, state)
