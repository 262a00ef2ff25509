"""Boundary checks of the likelihood entry points: raised before tracing, naming the argument."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.sde import AbstractLinearSDE


def count(name: str, value, minimum: int = 1) -> int:
  """An integer hyperparameter (Python or NumPy int; not a bool or a float) >= ``minimum``."""
  if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
      or value < minimum):
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__}).")
  return int(value)


def tolerance(name: str, value, *, positive: bool) -> None:
  """rtol/atol: a finite real number, > 0 (or >= 0); traced values pass unchecked."""
  if isinstance(value, jax.core.Tracer):
    return
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name} must be a real number, got {value!r}.") from None
  if isinstance(value, bool) or not np.isfinite(v) or (v <= 0 if positive else v < 0):
    raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}.")


def sde(value) -> None:
  if not isinstance(value, AbstractLinearSDE):
    what = f"the class {value.__name__}" if isinstance(value, type) else repr(value)
    raise TypeError(f"sde must be an instance of a linear SDE (e.g. sdes.VPSDE()), got {what}.")


def instance(name: str, value, cls, example: str) -> None:
  if not isinstance(value, cls):
    what = f"the class {value.__name__}" if isinstance(value, type) else repr(value)
    raise TypeError(f"{name} must be an instance of {cls.__name__} (e.g. {example}), got {what}.")


def example(name: str, x) -> None:
  if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating-point array holding one example, got "
                     f"{getattr(x, 'dtype', type(x).__name__)}.")


def score_fn(fn, x, name: str = "x") -> None:
  """``fn(x, t)`` must return an array of x's shape and a floating dtype, for ONE example.

  Checked with ``jax.eval_shape`` (nothing is computed). A batch passed where one example is
  expected is caught when the score function's output shape differs from x's, or when it fails
  on that shape; a score function that broadcasts over any leading axes cannot tell the two apart.
  """
  if not callable(fn):
    raise TypeError(f"score_fn must be a callable score_fn(x, t) -> score, got {fn!r}.")
  spec = jax.ShapeDtypeStruct(jnp.shape(x), x.dtype)
  t_spec = jax.ShapeDtypeStruct((), x.dtype)
  try:
    out = jax.eval_shape(fn, spec, t_spec)
  except Exception as err:  # anything the user's function raises on this input
    raise ValueError(f"score_fn failed on one example of shape {tuple(spec.shape)} ({name}; the "
                     f"likelihood scores ONE example, vmap over a batch): "
                     f"{type(err).__name__}: {err}") from err
  if not hasattr(out, "shape") or tuple(out.shape) != tuple(spec.shape):
    raise ValueError(f"score_fn must return an array of the example's shape {tuple(spec.shape)}, "
                     f"got {getattr(out, 'shape', type(out).__name__)}; if {name} holds a batch, "
                     "vmap over it (the likelihood scores one example).")
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(f"score_fn must return a floating-point array, got dtype {out.dtype}.")


def pixels(value, num_levels: int):
  """Integer levels; when concrete, every level in [0, num_levels)."""
  value = jnp.asarray(value) if not isinstance(value, jax.core.Tracer) else value
  if jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.bool_):
    raise ValueError(f"pixels must hold integer levels, got dtype {value.dtype}.")
  if not isinstance(value, jax.core.Tracer):
    arr = np.asarray(value)
    if arr.size and (arr.min() < 0 or arr.max() >= num_levels):
      raise ValueError(f"pixels must lie in [0, num_levels={num_levels}), got values in "
                       f"[{arr.min()}, {arr.max()}].")
  return value


def in_range(pixels_, num_levels: int) -> jax.Array:
  """The same range check as a traced flag, for outputs under jit."""
  return jnp.all((pixels_ >= 0) & (pixels_ < num_levels))
