"""Argument validation shared by the library: clear errors that name the argument."""

from __future__ import annotations

import numbers

import numpy as np


def is_concrete(value) -> bool:
  """True for Python numbers and NumPy values: things we can check eagerly (not tracers)."""
  return isinstance(value, (numbers.Number, np.ndarray, np.generic))


def check_positive(name: str, value) -> None:
  """For hyperparameters (static Python or NumPy values), never for traced arrays."""
  if not np.all(np.asarray(value) > 0):
    raise ValueError(f"{name} must be > 0, got {value!r}.")


def check_nonnegative(name: str, value) -> None:
  if not np.all(np.asarray(value) >= 0):
    raise ValueError(f"{name} must be >= 0, got {value!r}.")


def check_count(name: str, value, minimum: int = 1) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def check_choice(name: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}.")


def check_less(name_lo: str, lo, name_hi: str, hi) -> None:
  if is_concrete(lo) and is_concrete(hi) and not np.all(np.asarray(lo) < np.asarray(hi)):
    raise ValueError(f"{name_lo} must be < {name_hi}, got {name_lo}={lo!r} and {name_hi}={hi!r}.")


def check_time(name: str, t, t_lo: float, t_hi: float) -> None:
  """Raise if a concrete time lies outside [t_lo, t_hi]; traced times cannot be checked eagerly."""
  if is_concrete(t):
    arr = np.asarray(t)
    if arr.size and (np.any(arr < t_lo) or np.any(arr > t_hi) or np.any(~np.isfinite(arr))):
      raise ValueError(f"{name} must lie in [{t_lo}, {t_hi}], got {t!r}.")
