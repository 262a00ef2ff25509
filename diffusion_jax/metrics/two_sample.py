"""Two-sample distances between sample sets: energy distance, MMD and sliced Wasserstein-1.

All take x of shape (n, D) and y of shape (m, D) and compute pairwise terms in row blocks, so
10,000 x 10,000 comparisons fit in memory. Inputs are checked at the Python boundary: concrete
samples that are not finite are rejected (a NaN sample has no distance to anything), as are
empty sets, mismatched dimensions and bad hyperparameters. Under ``jit`` (traced samples, whose
values cannot be checked) a set with any non-finite entry gives NaN, never a finite number.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

_BLOCK = 1024


def _check_samples(name: str, x) -> jax.Array:
  shape = jnp.shape(x)
  if len(shape) != 2:
    raise ValueError(f"{name} must have shape (num_samples, D), got shape {shape}.")
  if shape[0] < 2:
    raise ValueError(f"{name} needs at least 2 samples, got {shape[0]}.")
  if shape[1] < 1:
    raise ValueError(f"{name} must have at least one dimension D >= 1, got shape {shape}.")
  dtype = jnp.result_type(x)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise ValueError(f"{name} must hold real numbers, got dtype {dtype}.")
  try:
    values = np.asarray(x)
  except jax.errors.TracerArrayConversionError:
    values = None  # traced: checked inside the computation (NaN out)
  if values is not None:
    finite = np.isfinite(values)
    if not finite.all():
      bad = int((~finite.all(axis=1)).sum())
      raise ValueError(f"{name} has {bad} of {shape[0]} samples with non-finite (NaN or inf) "
                       f"entries; distances of non-finite samples are undefined.")
  return jnp.asarray(x, jnp.result_type(dtype, float))


def _check_pair(x, y) -> tuple[jax.Array, jax.Array]:
  x, y = _check_samples("x", x), _check_samples("y", y)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x and y must have the same dimension D, got x {x.shape} and y {y.shape}.")
  dtype = jnp.result_type(x, y)
  return x.astype(dtype), y.astype(dtype)


def _finite_or_nan(value: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
  # Traced inputs are not checked at the boundary: NaN flags a non-finite set instead of garbage.
  ok = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))
  return jnp.where(ok, value, jnp.nan)


def _pairwise_sum(kernel_fn, x, y):
  """sum_{i,j} kernel_fn(|x_i - y_j|^2), in blocks of rows of x.

  Squared distances come from |a|^2 + |b|^2 - 2 a.b (one matrix product per block), so the cost
  and memory do not grow with a (block, m, D) difference tensor.
  """
  n = x.shape[0]
  pad = (-n) % _BLOCK
  xb = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, _BLOCK, x.shape[1])
  mask = (jnp.arange(n + pad) < n).reshape(-1, _BLOCK)
  y_sq = jnp.sum(y**2, axis=-1)

  def block(carry, inputs):
    rows, m = inputs
    sq = jnp.sum(rows**2, axis=-1)[:, None] + y_sq[None, :] - 2.0 * rows @ y.T
    vals = kernel_fn(jnp.maximum(sq, 0.0))  # rounding can make a zero distance slightly negative
    return carry + jnp.sum(jnp.where(m[:, None], vals, 0.0)), None

  total, _ = jax.lax.scan(block, jnp.zeros((), x.dtype), (xb, mask))
  return total


def _dist(sq):
  # Euclidean distance with a safe gradient at 0.
  return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


@jax.jit
def _energy_distance(x, y):
  n, m = x.shape[0], y.shape[0]
  xy = _pairwise_sum(_dist, x, y) / (n * m)
  xx = _pairwise_sum(_dist, x, x) / (n * (n - 1))
  yy = _pairwise_sum(_dist, y, y) / (m * (m - 1))
  return _finite_or_nan(2 * xy - xx - yy, x, y)


def energy_distance(x: jax.Array, y: jax.Array) -> jax.Array:
  """2 E|X - Y| - E|X - X'| - E|Y - Y'| (Székely & Rizzo 2013), unbiased within-set terms."""
  return _energy_distance(*_check_pair(x, y))


@functools.partial(jax.jit, static_argnames=("bandwidth",))
def _mmd_rbf(x, y, bandwidth):
  n, m = x.shape[0], y.shape[0]
  k = lambda sq: jnp.exp(-sq / (2 * bandwidth**2))
  xx = (_pairwise_sum(k, x, x) - n) / (n * (n - 1))
  yy = (_pairwise_sum(k, y, y) - m) / (m * (m - 1))
  return _finite_or_nan(xx + yy - 2 * _pairwise_sum(k, x, y) / (n * m), x, y)


def mmd_rbf(x: jax.Array, y: jax.Array, bandwidth: float = 1.0) -> jax.Array:
  """Unbiased squared MMD with the Gaussian kernel exp(-|a - b|^2 / (2 bandwidth^2)) (Gretton et al. 2012)."""
  if (isinstance(bandwidth, bool) or not isinstance(bandwidth, numbers.Real)
      or not 0 < bandwidth < np.inf):
    raise ValueError(f"bandwidth must be a finite float > 0, got {bandwidth!r}.")
  return _mmd_rbf(*_check_pair(x, y), bandwidth=float(bandwidth))


@functools.partial(jax.jit, static_argnames=("num_projections",))
def _sliced_wasserstein(x, y, key, num_projections):
  dirs = jr.normal(key, (x.shape[1], num_projections), x.dtype)
  dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
  px, py = jnp.sort(dirs.T @ x.T, axis=-1), jnp.sort(dirs.T @ y.T, axis=-1)  # (projections, n)
  if x.shape[0] == y.shape[0]:  # equal sizes: the quantile functions are the sorted values
    return _finite_or_nan(jnp.mean(jnp.abs(px - py)), x, y)
  k = max(x.shape[0], y.shape[0])
  levels = (jnp.arange(k) + 0.5) / k
  # Inverse CDF of each empirical projection at the common levels (plain indexing, no interpolation).
  qx = px[:, jnp.floor(levels * x.shape[0]).astype(int)]
  qy = py[:, jnp.floor(levels * y.shape[0]).astype(int)]
  return _finite_or_nan(jnp.mean(jnp.abs(qx - qy)), x, y)


def sliced_wasserstein(x: jax.Array, y: jax.Array, key: jax.Array,
                       num_projections: int = 256) -> jax.Array:
  """Sliced Wasserstein-1: the mean over random unit directions of W1 between 1-D projections
  (Rabin et al. 2011; Bonneel et al. 2015).

  W1 in 1-D is the L1 distance between quantile functions, evaluated on a common grid of levels.
  """
  if (isinstance(num_projections, bool)
      or not isinstance(num_projections, (numbers.Integral, np.integer)) or num_projections < 1):
    raise ValueError(f"num_projections must be an int >= 1, got {num_projections!r}.")
  if not (isinstance(key, jax.Array) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                          or (key.dtype == jnp.uint32 and key.shape == (2,)))):
    raise ValueError(f"key must be a JAX PRNG key (jax.random.key(seed)), got {key!r}.")
  x, y = _check_pair(x, y)
  return _sliced_wasserstein(x, y, key, num_projections=int(num_projections))
