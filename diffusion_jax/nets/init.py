"""Parameter initialisation for the image networks without compiling anything.

On XLA:CPU every distinct operation compiles, whether run under ``jit`` or eagerly (op by op): a
U-Net's ``module.init`` under ``jit`` was measured at 33 s, and eagerly each new shape of a conv, a
random draw or even ``jnp.zeros`` costs a compile of its own (0.1-0.3 s each on this 2-core
machine, tens of seconds for a U-Net). ``init_params`` therefore traces ``module.init`` abstractly
(``jax.eval_shape``: shapes only, nothing compiled) and draws every parameter on the host with
NumPy from the distribution its ``HostInit`` initialiser names, seeded by (key, parameter path).

``HostInit`` initialisers are ordinary flax initialisers too (``module.init`` under ``jit`` uses
their JAX twin: same distribution, other numbers), so a network written with them works either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import zlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

_STATE = threading.local()


@dataclasses.dataclass(frozen=True)
class HostInit:
  """A flax initialiser ``init(key, shape, dtype)`` that can also draw on the host:
  ``sample(rng: np.random.Generator, shape) -> np.ndarray``; ``jax_init`` is its JAX twin."""

  sample: Callable[[np.random.Generator, tuple], np.ndarray]
  jax_init: Callable[..., jax.Array]

  def __call__(self, key, shape, dtype=jnp.float32):
    records = getattr(_STATE, "records", None)
    if records is not None:  # inside init_params' abstract trace: note what to draw, return zeros
      records.append((_STATE.paths[-1] if _STATE.paths else (), tuple(shape), dtype, self))
      return jnp.zeros(shape, dtype)
    return self.jax_init(key, shape, dtype)


def _fans(shape) -> tuple[int, int]:
  """(fan_in, fan_out) as flax's variance_scaling counts them: in axis -2, out axis -1, and the
  leading axes (a conv kernel's window) multiplying both."""
  if len(shape) < 2:
    raise ValueError(f"variance scaling needs a kernel of rank >= 2, got shape {shape}.")
  receptive = math.prod(shape[:-2])
  return shape[-2] * receptive, shape[-1] * receptive


def variance_scaling(scale: float) -> HostInit:
  """W ~ U[-a, a], a = sqrt(3 scale / ((fan_in + fan_out) / 2)): Glorot & Bengio 2010's uniform
  init for scale 1 (flax's ``variance_scaling(scale, "fan_avg", "uniform")``)."""

  def sample(rng, shape):
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2))
    return rng.uniform(-limit, limit, shape)

  return HostInit(sample, nn.initializers.variance_scaling(scale, "fan_avg", "uniform"))


def normal(stddev: float) -> HostInit:
  """W ~ N(0, stddev^2) elementwise."""
  return HostInit(lambda rng, shape: stddev * rng.standard_normal(shape),
                  nn.initializers.normal(stddev))


def constant(value: float) -> HostInit:
  """W = value elementwise (zeros for biases, ones for normalisation scales)."""
  return HostInit(lambda rng, shape: np.full(shape, value), nn.initializers.constant(value))


zeros = constant(0.0)
ones = constant(1.0)


@contextlib.contextmanager
def _recording(records: list):
  _STATE.records, _STATE.paths = records, []
  try:
    yield
  finally:
    del _STATE.records, _STATE.paths


def _track_path(next_fun, args, kwargs, context):
  # The innermost module method running is the one whose ``self.param`` calls the initialiser.
  _STATE.paths.append(tuple(context.module.path))
  try:
    return next_fun(*args, **kwargs)
  finally:
    _STATE.paths.pop()


def _own_leaves(tree: dict, path=()):
  """Yield (module path, [parameter names in creation order]) for every module in a params tree
  (a module's own dict keeps its parameters in the order it created them)."""
  names = [k for k, v in tree.items() if not isinstance(v, dict)]
  if names:
    yield path, names
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _own_leaves(v, path + (k,))


def _key_words(key: jax.Array) -> list[int]:
  data = jr.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  return [int(w) for w in np.asarray(data, np.uint32).ravel()]


def _host_params(shapes: dict, order: list, records: list, key: jax.Array) -> dict | None:
  """The params tree drawn on the host, or None when some parameter has no HostInit record.
  ``order``: (module path, names in creation order) per module, read inside the trace (the tree
  ``eval_shape`` returns has its keys sorted)."""
  by_path: dict[tuple, list] = {}
  for path, shape, dtype, init in records:
    by_path.setdefault(path, []).append((shape, dtype, init))
  words = _key_words(key)
  params: dict = {}
  for path, names in order:
    found = by_path.get(path, [])
    if len(found) != len(names):
      return None
    node = params
    for p in path:
      node = node.setdefault(p, {})
    for name, (shape, dtype, init) in zip(names, found):
      leaf = shapes
      for p in path + (name,):
        leaf = leaf[p]
      if tuple(leaf.shape) != shape:
        return None
      seed = zlib.crc32("/".join(path + (name,)).encode())
      value = init.sample(np.random.default_rng(words + [seed]), shape)
      node[name] = jnp.asarray(np.asarray(value, dtype=np.dtype(dtype)))
  return params


def _first(leaf):
  return jnp.asarray(leaf)[:1]


def init_params(module: nn.Module, key: jax.Array, x: jax.Array, t: jax.Array, cond: Any = None, *,
                strict: bool = False):
  """{"params": theta}: the variables of ``module.init({"params": key, "dropout": key}, x[:1],
  t[:1], cond[:1])`` for ``module.apply``, without compiling anything.

  The module is traced abstractly (``jax.eval_shape``) for the parameter shapes; every parameter
  whose initialiser is a ``HostInit`` is then drawn on the host with NumPy, seeded by the key and
  the parameter's path (the same key gives the same parameters; any batch size of the example
  inputs gives the same parameters). A module with other initialisers falls back to an eager
  (op by op, unjitted) ``module.init``. ``x`` (B, ...) and ``t`` (B,) or a scalar are example
  inputs; ``cond`` is None or a pytree of (B, ...) leaves. ``strict=True`` makes the fallback an
  error (for networks that must initialise without compiling).
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
  rngs = {"params": key, "dropout": key}

  order: list = []

  def init(x1, t1, c1):
    variables = module.init(rngs, x1, t1, c1)
    order.extend(_own_leaves(variables.get("params", {})))  # creation order, before flattening
    return variables

  records: list = []
  with _recording(records), nn.intercept_methods(_track_path):
    shapes = jax.eval_shape(init, x[:1], t[:1], cond)
  if set(shapes) == {"params"}:
    params = _host_params(shapes["params"], order, records, key)
    if params is not None:
      return {"params": params}
  if strict:
    raise ValueError(f"init_params(strict=True): some parameters of {type(module).__name__} have "
                     "initialisers that are not HostInit (diffusion_jax.nets.init), so they cannot "
                     "be drawn on the host.")
  return {"params": module.init(rngs, x[:1], t[:1], cond)["params"]}
