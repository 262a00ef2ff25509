"""Eager parameter initialisation for the image networks.

``module.init`` under ``jax.jit`` compiles the whole network once more only to draw its parameters
(measured 33 s for a U-Net on this CPU, against 2 s run op by op), so networks are initialised
without jit, on a batch of one example.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _first(leaf):
  return jnp.asarray(leaf)[:1]


def init_params(module: nn.Module, key: jax.Array, x: jax.Array, t: jax.Array, cond: Any = None):
  """params = module.init({"params": key, "dropout": key}, x[:1], t[:1], cond[:1])["params"]
  wrapped as {"params": ...}, run eagerly (no jit): the variables ``module.apply`` takes.

  ``x`` (B, ...) and ``t`` (B,) (or a scalar) are example inputs; only their first example is
  used, so any batch size gives the same parameters. ``cond`` is None or a pytree of (B, ...).
  """
  if not isinstance(module, nn.Module):
    raise TypeError(f"module must be a flax.linen Module instance, got {module!r}.")
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[0] < 1:
    raise ValueError(f"x must have a leading batch axis of at least one example, got {x.shape}.")
  t = jnp.asarray(t, jnp.result_type(float))
  t = jnp.broadcast_to(t, (x.shape[0],)) if t.ndim == 0 else t
  if t.shape != (x.shape[0],):
    raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},) to match x {x.shape}, got "
                     f"{t.shape}.")
  cond = jax.tree.map(_first, cond)
  variables = module.init({"params": key, "dropout": key}, x[:1], t[:1], cond)
  return {"params": variables["params"]}
