"""Constraint wrappers: a sampler around any sampler that keeps part of the sample fixed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import _checks
from diffusion_jax.samplers import base


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
  """

  inner: base.AbstractSampler
  mask: jax.Array
  value: jax.Array

  stochastic = True  # the replacement draws noise even around a deterministic sampler

  def __post_init__(self):
    _checks.check_instance("inner", self.inner, base.AbstractSampler, "DDIM()")

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
    return self.inner.init(sde, score_fn, ts, x)

  def _put(self, x, known):
    return jnp.where(jnp.asarray(self.mask, bool), known.astype(x.dtype), x)

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
