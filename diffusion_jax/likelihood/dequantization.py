"""Discrete data: uniform dequantization and bits per dimension.

For L levels k mapped to x = lo + (hi - lo)(k + u)/L, u ~ U[0, 1)^D (Theis et al. 2016; Ho et al.
2019, "Flow++"),
    bits/dim = E_u[-log p(x)] / (D ln 2) + log2(L / (hi - lo))   (>= -log2 P(k) / D),
so +8 for 256 levels in [0, 1] and +7 in [-1, 1].
"""

from __future__ import annotations

import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax.likelihood import _validate


def check_levels(num_levels, data_range) -> tuple[int, float, float]:
  num_levels = _validate.count("num_levels", num_levels, minimum=2)
  try:
    lo, hi = (float(v) for v in data_range)
  except (TypeError, ValueError):
    raise ValueError(f"data_range must be a pair (lo, hi) of numbers, got {data_range!r}.") from None
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
    raise ValueError(f"data_range must be (lo, hi) with finite lo < hi, got {data_range!r}.")
  return num_levels, lo, hi


def dequantize(key: jax.Array, pixels: jax.Array, *, num_levels: int = 256,
               data_range: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
  """x = lo + (hi - lo) (k + u) / L, u ~ U[0, 1)^D: integer levels k in {0..L-1} to [lo, hi)."""
  num_levels, lo, hi = check_levels(num_levels, data_range)
  pixels = _validate.pixels(pixels, num_levels)
  u = jr.uniform(key, jnp.shape(pixels))
  return lo + (hi - lo) * (pixels.astype(u.dtype) + u) / num_levels


def level_centres(pixels: jax.Array, *, num_levels: int = 256,
                  data_range: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
  """x = lo + (hi - lo)(k + 1/2) / L: each level at the centre of the cell ``dequantize`` fills.

  The one map from levels to data space of the project: images are trained at these values, the
  DDPM bound's decoder bins are these cells, and ``dequantize`` spreads each level over its cell.
  """
  num_levels, lo, hi = check_levels(num_levels, data_range)
  return lo + (hi - lo) * (jnp.asarray(pixels).astype(jnp.result_type(float)) + 0.5) / num_levels


def levels_of(x: jax.Array, *, num_levels: int = 256,
              data_range: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
  """k = clip(floor((x - lo) L / (hi - lo)), 0, L - 1): the level whose cell holds x (int32)."""
  num_levels, lo, hi = check_levels(num_levels, data_range)
  k = jnp.floor((jnp.asarray(x) - lo) / (hi - lo) * num_levels)
  return jnp.clip(k, 0, num_levels - 1).astype(jnp.int32)


def bits_per_dim_offset(num_levels: int = 256, data_range: tuple[float, float] = (0.0, 1.0)) -> float:
  """log2(L / (hi - lo)): bits per dimension added by the map from level space to data space.

  8 for 256 levels in [0, 1], 7 for 256 levels in [-1, 1] (the "+8"/"+7" of score_sde).
  """
  num_levels, lo, hi = check_levels(num_levels, data_range)
  return math.log2(num_levels / (hi - lo))


def to_bits_per_dim(logp: jax.Array, num_dims: int, *, num_levels: int = 256,
                    data_range: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
  """bpd = -log p_X(x) / (D ln 2) + log2(L / (hi - lo)) for x the dequantized data in [lo, hi).

  With y = k + u in level space and x = lo + (hi - lo) y / L, p_Y(y) = p_X(x) ((hi - lo)/L)^D, and
  -log2 P(k) <= E_u[-log2 p_Y(k + u)] (Jensen; Theis et al. 2016), so this is an upper bound on the
  discrete negative log-likelihood in bits per dimension once averaged over u.
  """
  num_dims = _validate.count("num_dims", num_dims)
  return -logp / (num_dims * math.log(2.0)) + bits_per_dim_offset(num_levels, data_range)


class BitsPerDim(flax.struct.PyTreeNode):
  """Per-example bits/dim over ``num_draws`` dequantization draws."""

  bpd: jax.Array  # mean over draws: the estimate of E_u[-log2 p_Y(k + u)] / D
  bpd_se: jax.Array  # standard error over draws (0 for a single draw)
  bpd_draws: jax.Array  # shape (num_draws,)
  success: jax.Array  # levels inside [0, L) and every draw finite (the check under jit)


def bits_per_dim(logp_fn: Callable[[jax.Array, jax.Array], jax.Array], pixels: jax.Array, *,
                 key: jax.Array, num_draws: int = 1, num_levels: int = 256,
                 data_range: tuple[float, float] = (0.0, 1.0)) -> BitsPerDim:
  """Dequantized bits/dim of one discrete example: mean over u of -log2 p_X(x(k, u))/D + log2(L/(hi-lo)).

  ``logp_fn(x, key) -> log p_X(x)`` scores one continuous example (e.g. ``log_likelihood(...).logp``
  with its own key for Hutchinson probes); ``pixels`` holds integer levels in {0..L-1}.
  Uniform dequantization: Theis et al. 2016; Ho et al. 2019, Sec. 3.1.
  """
  if not callable(logp_fn):
    raise TypeError(f"logp_fn must be a callable logp_fn(x, key) -> log p(x), got {logp_fn!r}.")
  num_draws = _validate.count("num_draws", num_draws)
  num_levels, lo, hi = check_levels(num_levels, data_range)
  pixels = _validate.pixels(pixels, num_levels)
  if key is None:
    raise ValueError("key must be a PRNG key (the dequantization noise), got None.")

  def one_draw(draw_key):
    u_key, logp_key = jr.split(draw_key)
    x = dequantize(u_key, pixels, num_levels=num_levels, data_range=(lo, hi))
    return to_bits_per_dim(logp_fn(x, logp_key), pixels.size, num_levels=num_levels,
                           data_range=(lo, hi))

  draws = jax.vmap(one_draw)(jr.split(key, num_draws))
  se = jnp.std(draws, ddof=1) / math.sqrt(num_draws) if num_draws > 1 else jnp.zeros_like(draws[0])
  ok = _validate.in_range(pixels, num_levels) & jnp.all(jnp.isfinite(draws))
  return BitsPerDim(bpd=jnp.mean(draws), bpd_se=se, bpd_draws=draws, success=ok)
