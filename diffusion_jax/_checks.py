"""Argument validation shared by the library: clear errors that name the argument."""

from __future__ import annotations

import numbers

import jax
import numpy as np


def is_concrete(value) -> bool:
  """True for Python numbers and NumPy values: things we can check eagerly (not tracers)."""
  return isinstance(value, (numbers.Number, np.ndarray, np.generic))


def concrete_or_none(value) -> np.ndarray | None:
  """``value`` as a NumPy array when it is concrete (Python, NumPy or a committed jax.Array), else None.

  A tracer (inside jit or vmap) has no value yet; callers skip the check then.
  """
  try:
    return np.asarray(value)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def is_int(value) -> bool:
  """Python and NumPy integers; not bools (True is an int in Python, never a count here)."""
  return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_positive(name: str, value) -> None:
  """For hyperparameters (static Python or NumPy values), never for traced arrays."""
  if not np.all(np.asarray(value) > 0):
    raise ValueError(f"{name} must be > 0, got {value!r}.")


def check_nonnegative(name: str, value) -> None:
  if not np.all(np.asarray(value) >= 0):
    raise ValueError(f"{name} must be >= 0, got {value!r}.")


def check_unit_interval(name: str, value) -> None:
  """A real number in [0, 1] (e.g. DDIM's eta)."""
  if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
      or not 0.0 <= float(value) <= 1.0):
    raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")


def check_count(name: str, value, minimum: int = 1) -> None:
  """An integer >= minimum: Python or NumPy integers, never floats (2.0) or bools."""
  if not is_int(value) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def check_choice(name: str, value, allowed) -> None:
  # 2.0 == 2 and True == 1 in Python: integer choices accept integers only.
  ints_only = all(is_int(a) for a in allowed)
  if (ints_only and not is_int(value)) or value not in allowed:
    raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}.")


def check_bool(name: str, value) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be a bool, got {value!r}.")


def check_instance(name: str, value, cls, example: str) -> None:
  """A TypeError naming the argument for a string, a class instead of an instance, or another object."""
  wanted = " or ".join(c.__name__ for c in cls) if isinstance(cls, tuple) else cls.__name__
  if isinstance(value, type) and issubclass(value, cls):
    raise TypeError(f"{name} must be an instance of {wanted}, got the class {value.__name__}; "
                    f"call it, e.g. {name}={value.__name__}().")
  if not isinstance(value, cls):
    raise TypeError(f"{name} must be an instance of {wanted} (e.g. {example}), "
                    f"got {type(value).__name__} {value!r:.60}.")


def check_less(name_lo: str, lo, name_hi: str, hi) -> None:
  if is_concrete(lo) and is_concrete(hi) and not np.all(np.asarray(lo) < np.asarray(hi)):
    raise ValueError(f"{name_lo} must be < {name_hi}, got {name_lo}={lo!r} and {name_hi}={hi!r}.")


def check_divisible_image(name: str, image_shape, factor: int, what: str) -> None:
  """An (H, W, C) shape whose height and width a network halves len(...) times: both divisible by
  ``factor`` (``what`` says where the factor comes from, e.g. "2^len(features)")."""
  h, w = image_shape[0], image_shape[1]
  if h % factor or w % factor:
    raise ValueError(f"{name} {tuple(image_shape)} must have height and width divisible by "
                     f"{what} = {factor}, got {h}x{w}.")


def check_time(name: str, t, t_lo: float, t_hi: float) -> None:
  """Raise if a concrete time lies outside [t_lo, t_hi]; traced times cannot be checked eagerly."""
  if is_concrete(t):
    arr = np.asarray(t)
    if arr.size and (np.any(arr < t_lo) or np.any(arr > t_hi) or np.any(~np.isfinite(arr))):
      raise ValueError(f"{name} must lie in [{t_lo}, {t_hi}], got {t!r}.")


def check_time_grid(name: str, ts, t_max: float) -> None:
  """A concrete grid (Python, NumPy or jax.Array) is 1-D, >= 2 finite times in [0, t_max], strictly decreasing.

  A traced grid has no value and is left to the success flag of the output.
  """
  arr = concrete_or_none(ts)
  if arr is None:
    return
  if arr.ndim != 1 or arr.shape[0] < 2:
    raise ValueError(f"{name} must be a 1-D grid with at least 2 times, got shape {arr.shape}.")
  if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name} must hold real times, got dtype {arr.dtype}.")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} must hold finite times, got {arr}.")
  if np.any(arr < 0) or np.any(arr > t_max):
    raise ValueError(f"{name} must lie in [0, T={t_max}], got times from {arr.min()} to {arr.max()}.")
  if not np.all(np.diff(arr) < 0):
    raise ValueError(f"{name} must be strictly decreasing (from T towards t_min), got {arr}.")
