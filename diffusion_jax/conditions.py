"""Conditions: the null condition and condition dropout as a wrapper around any per-example loss.

A condition is a per-example pytree (an integer label, an embedding, a dict of tokens and mask, ...).
Classifier-free guidance (Ho & Salimans 2022) trains one network on both the conditional and the
unconditional task by replacing the condition with a null condition with probability p:

    cond' = null_cond  with probability p,   cond  otherwise   (one Bernoulli draw per example).

``with_condition_dropout`` does it optax-style, around any ``loss_fn(params, frozen, example, key)``:
it spends ONE extra key split, ``loss_key, drop_key = split(key)``; the wrapped loss gets
``loss_key`` (the first half), the drop decision ``drop_key`` (the second).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

LossFn = Callable[[Any, Any, dict, jax.Array], Any]


def null_label(num_classes: int) -> jax.Array:
  """The null label K of a K-class problem (int32 scalar): labels 0..K-1 are classes."""
  if (not isinstance(num_classes, (numbers.Integral, np.integer)) or isinstance(num_classes, bool)
      or num_classes < 1):
    raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}.")
  return jnp.asarray(int(num_classes), jnp.int32)


def _check_p(p) -> float:
  if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
    raise ValueError(f"p must be a probability in [0, 1], got {p!r}.")
  return float(p)


def _check_like(cond, null_cond) -> None:
  cond_def, null_def = jax.tree.structure(cond), jax.tree.structure(null_cond)
  if cond_def != null_def:
    raise ValueError(f"null_cond must have the pytree structure of cond, got {null_def} for "
                     f"cond {cond_def}.")
  for c, n in zip(jax.tree.leaves(cond), jax.tree.leaves(null_cond)):
    if jnp.shape(n) != jnp.shape(c):
      raise ValueError(f"null_cond leaves must have the shapes of one example's cond, got "
                       f"{jnp.shape(n)} for a leaf of shape {jnp.shape(c)}.")


def drop_condition(key: jax.Array, cond: Any, null_cond: Any, p: float) -> Any:
  """One example's condition, replaced by ``null_cond`` with probability p (drop = U(key) < p).

  cond and null_cond are pytrees of one structure and leaf shapes (one example, no batch axis).
  """
  p = _check_p(p)
  _check_like(cond, null_cond)
  drop = jr.bernoulli(key, p)
  return jax.tree.map(lambda c, n: jnp.where(drop, jnp.asarray(n, jnp.result_type(c)), c),
                      cond, null_cond)


def with_condition_dropout(loss_fn: LossFn, p: float, null_cond: Any, cond_key: str) -> LossFn:
  """``loss_fn`` whose example's ``cond_key`` entry is dropped to ``null_cond`` with probability p.

  Same signature, ``(params, frozen, example, key) -> record``. Keys: ``loss_key, drop_key =
  split(key)``; the wrapped loss runs on ``loss_key``, so with p = 0 the result is exactly
  ``loss_fn(params, frozen, example, split(key)[0])``.
  """
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable as loss_fn(params, frozen, example, key), got "
                    f"{type(loss_fn).__name__}.")
  p = _check_p(p)
  if not isinstance(cond_key, str):
    raise TypeError(f"cond_key must be the name of the example's condition entry (a str), got "
                    f"{cond_key!r}.")

  def wrapped(params, frozen, example, key):
    if not isinstance(example, dict) or cond_key not in example:
      raise ValueError(f"cond_key={cond_key!r} is not an entry of the example; it has "
                       f"{sorted(example) if isinstance(example, dict) else type(example).__name__}.")
    loss_key, drop_key = jr.split(key)
    dropped = drop_condition(drop_key, example[cond_key], null_cond, p)
    return loss_fn(params, frozen, {**example, cond_key: dropped}, loss_key)

  return wrapped
