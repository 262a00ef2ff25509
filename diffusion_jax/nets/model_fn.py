"""The model (network) contract and the adapter from a linen module to it.

    model_fn(params, x, t, cond, *, key=None, train=False) -> prediction

Batched: x (B, *shape), t (B,), cond a pytree whose leaves have leading axis B, or None. ``key`` is
the dropout key (None: no dropout, whatever ``train`` says) and ``train`` the train flag. Losses
call it with a key and train=True; ``NetworkScore`` with key=None and train=False.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax

ModelFn = Callable[..., jax.Array]


class ModuleModelFn(flax.struct.PyTreeNode):
  """A linen module as a ``model_fn``: ``module.apply(params, x, t, cond, train=train)``.

  The module is static and compared by value, so two adapters of equal modules are equal and a
  ``jit`` that holds one as static structure does not recompile for the other.
  """

  module: nn.Module = flax.struct.field(pytree_node=False)

  def __call__(self, params: Any, x: jax.Array, t: jax.Array, cond: Any = None, *,
               key: jax.Array | None = None, train: bool = False) -> jax.Array:
    rngs = None if key is None else {"dropout": key}
    return self.module.apply(params, x, t, cond, train=train, rngs=rngs)


def as_model_fn(module: nn.Module) -> ModuleModelFn:
  """Turn a linen module with ``__call__(x, t, cond=None, *, train=False)`` into a ``model_fn``."""
  if not isinstance(module, nn.Module):
    raise TypeError(f"module must be a flax.linen Module instance, got {module!r}.")
  return ModuleModelFn(module)
