"""Discretised logistic mixtures over the data's grey levels: the likelihood PixelCNN++ (Salimans
et al. 2017) and the VAE decoder put on an image.

Levels k in {0..L-1} sit at the centres of their cells in [-1, 1] (``data.images.levels_to_model``:
x = -1 + (2k + 1)/L, cell half-width 1/L). Under one logistic component (mu, s) the probability of
level k is the logistic mass of its cell, with the two end cells stretched to -inf and +inf, so
the L probabilities sum to one exactly and the bits/dim are discrete (no dequantisation):

  P(k) = sigma((x + 1/L - mu)/s) - sigma((x - 1/L - mu)/s)   (0 < k < L-1)
  P(0) = sigma((x + 1/L - mu)/s),    P(L-1) = 1 - sigma((x - 1/L - mu)/s)

Every log is computed from log-sigmoids: sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - e^(b-a)),
which stays finite where the two CDFs round to the same float (PixelCNN++ switches to the density
at the cell centre there instead).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax.likelihood import dequantization

MIN_LOG_SCALE = -7.0  # s >= e^-7: far below a cell of 1/128 (the 256-level cells), as PixelCNN++
DATA_RANGE = (-1.0, 1.0)  # the levels' cells tile [-1, 1], as for the diffusion models


def _check_levels(num_levels) -> int:
  return dequantization.check_levels(num_levels, DATA_RANGE)[0]


def logistic_cell_logprob(x, mean, log_scale, num_levels: int):
  """log P(level of x) under one discretised logistic, elementwise (x: cell centres in [-1, 1])."""
  num_levels = _check_levels(num_levels)
  inv_s = jnp.exp(-jnp.maximum(log_scale, MIN_LOG_SCALE))
  half = 1.0 / num_levels
  a = (x - mean + half) * inv_s  # upper edge
  b = (x - mean - half) * inv_s  # lower edge
  middle = jax.nn.log_sigmoid(a) + jax.nn.log_sigmoid(-b) + jnp.log(-jnp.expm1(b - a))
  lowest = x < -1.0 + 1.5 * half  # level 0's centre is -1 + 1/L, level 1's -1 + 3/L
  highest = x > 1.0 - 1.5 * half
  return jnp.where(lowest, jax.nn.log_sigmoid(a), jnp.where(highest, jax.nn.log_sigmoid(-b), middle))


def mixture_logprob(x, logits, means, log_scales, num_levels: int):
  """log P(x) per element under a K-component discretised logistic mixture.

  x: (...,); logits, means, log_scales: (..., K) (mixture weights as unnormalised logits).
  """
  if logits.shape != means.shape or means.shape != log_scales.shape:
    raise ValueError(f"logits, means and log_scales must share one shape (..., K), got "
                     f"{logits.shape}, {means.shape}, {log_scales.shape}.")
  if logits.shape[:-1] != jnp.shape(x):
    raise ValueError(f"the mixture parameters' leading shape {logits.shape[:-1]} must be x's "
                     f"shape {jnp.shape(x)}.")
  per = logistic_cell_logprob(x[..., None], means, log_scales, num_levels)
  return jax.nn.logsumexp(per + jax.nn.log_softmax(logits, axis=-1), axis=-1)


def mixture_sample(key, logits, means, log_scales, num_levels: int):
  """One draw per element: the component, a logistic sample, its cell's centre in [-1, 1]."""
  num_levels = _check_levels(num_levels)
  k_key, u_key = jr.split(key)
  comp = jr.categorical(k_key, logits, axis=-1)
  pick = lambda v: jnp.take_along_axis(v, comp[..., None], axis=-1)[..., 0]  # noqa: E731
  u = jr.uniform(u_key, comp.shape, minval=1e-5, maxval=1.0 - 1e-5)
  y = pick(means) + jnp.exp(jnp.maximum(pick(log_scales), MIN_LOG_SCALE)) * (jnp.log(u) - jnp.log1p(-u))
  return to_cell_centre(y, num_levels)


def to_cell_centre(y, num_levels: int):
  """The centre of the level cell holding y (clipped to [-1, 1]): the likelihood package's one
  map between levels and data space (``levels_of``, ``level_centres``)."""
  kw = dict(num_levels=num_levels, data_range=DATA_RANGE)
  return dequantization.level_centres(dequantization.levels_of(y, **kw), **kw)


def image_logprob(out, x, num_mixtures: int, num_levels: int):
  """log P(image) in nats per image (N,): a network's (N, H, W, C, 3K) mixture parameters
  ``out`` scored at the images ``x`` (N, H, W, C), summed over pixels and channels."""
  logits, means, log_scales = split_params(out, num_mixtures)
  per = mixture_logprob(x, logits, means, log_scales, num_levels)
  return per.reshape(per.shape[0], -1).sum(-1)


def split_params(h, num_mixtures: int):
  """A network's (..., 3K) output -> (logits, means, log_scales), each (..., K)."""
  if h.shape[-1] != 3 * num_mixtures:
    raise ValueError(f"the network output's last axis must be 3 * num_mixtures = "
                     f"{3 * num_mixtures}, got {h.shape[-1]}.")
  logits, means, log_scales = jnp.split(h, 3, axis=-1)
  return logits, means, log_scales
