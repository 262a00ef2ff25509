"""Checks and blocked pairwise distances shared by the host-side (NumPy float64) image metrics."""

from __future__ import annotations

import numbers

import numpy as np

_BLOCK = 1024


def as_features(name: str, x, *, min_rows: int = 2) -> np.ndarray:
  """``x`` as a finite float64 array of shape (n, D), n >= min_rows, or a ValueError naming it."""
  try:
    values = np.asarray(x)
  except Exception as err:  # a tracer: these metrics run on the host, outside jit
    raise ValueError(f"{name} must be a concrete array (these metrics run on the host, not under "
                     f"jit), got {type(x).__name__}.") from err
  if values.ndim != 2:
    raise ValueError(f"{name} must have shape (num_samples, D), got shape {values.shape}.")
  if values.shape[0] < min_rows:
    raise ValueError(f"{name} needs at least {min_rows} samples, got {values.shape[0]}.")
  if values.shape[1] < 1:
    raise ValueError(f"{name} must have at least one dimension D >= 1, got shape {values.shape}.")
  if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
    raise ValueError(f"{name} must hold real numbers, got dtype {values.dtype}.")
  values = values.astype(np.float64)
  finite = np.isfinite(values).all(axis=1)
  if not finite.all():
    raise ValueError(f"{name} has {int((~finite).sum())} of {values.shape[0]} rows with non-finite "
                     f"(NaN or inf) entries; drop them first.")
  return values


def check_same_dim(x: np.ndarray, y: np.ndarray, names=("x", "y")) -> None:
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"{names[0]} and {names[1]} must have the same dimension D, got "
                     f"{names[0]} {x.shape} and {names[1]} {y.shape}.")


def check_int(name: str, value, minimum: int = 1) -> int:
  if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer))
      or value < minimum):
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
  return int(value)


def squared_distance_blocks(x: np.ndarray, y: np.ndarray):
  """Yield (start, |x_i - y_j|^2 for a block of rows of x), from |a|^2 + |b|^2 - 2 a.b (float64).

  One matrix product per block of 1024 rows, so (n, m) never has to fit in memory at once.
  """
  y_sq = np.sum(y * y, axis=1)
  for start in range(0, x.shape[0], _BLOCK):
    rows = x[start:start + _BLOCK]
    sq = np.sum(rows * rows, axis=1)[:, None] + y_sq[None, :] - 2.0 * rows @ y.T
    yield start, np.maximum(sq, 0.0)  # rounding can make a zero distance slightly negative
