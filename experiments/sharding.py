"""Data parallelism with ``jax.jit`` + ``jax.sharding``: one mesh axis "data" over every device.

The batch (and a sampling draw's keys and conditions) is sharded along "data"; the train state
and the model are replicated. Every leaf of the state is a global array, so orbax saves and
restores it from any number of processes. Keys cross ``jit`` as raw key data (NumPy): a host
value every process holds, valid input to a multi-process program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from diffusion_jax import sampling

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis "data" over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def key_data(key: jax.Array) -> np.ndarray:
  """Raw key bits as NumPy (see the module docstring)."""
  return np.asarray(jr.key_data(key))


def to_host(tree):
  """A replicated (possibly multi-process) pytree of arrays as NumPy, read from a local shard."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)


def local_rows(mesh, batch_size: int) -> tuple[int, int]:
  """The rows [start, stop) of a global batch that this process's devices hold."""
  num_devices = mesh.devices.size
  if batch_size % num_devices:
    raise ValueError(f"config.training.batch_size={batch_size} must be divisible by the number of "
                     f"devices ({num_devices}).")
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  bounds = sorted((idx[0].start or 0, idx[0].stop or batch_size) for idx in index_map.values())
  start, stop = bounds[0][0], bounds[-1][1]
  if sum(b - a for a, b in bounds) != stop - start:
    raise ValueError("this process's devices do not hold a contiguous block of the batch.")
  return start, stop


def global_batch(local: dict, mesh, batch_size: int) -> dict:
  """This process's rows of a batch (host arrays) joined into one global array per leaf."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(
      sharding, np.asarray(a), (batch_size,) + np.shape(a)[1:]), local)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_sharded_train_step(train_step, mesh):
  """jit(train_step) with the batch split over "data", the state replicated and donated.

  Returns ``step_fn(state, batch, key_data) -> (state, metrics, finite)``: ``finite`` is True when
  every metric and every trainable parameter is finite (the loop stops on the first False).
  """

  def step_fn(state, batch, key_bits):
    state, metrics = train_step(state, batch, jr.wrap_key_data(key_bits))
    return state, metrics, _all_finite(metrics) & _all_finite(state.params)

  rep = replicated(mesh)
  return jax.jit(step_fn, in_shardings=(rep, batch_sharding(mesh), rep),
                 out_shardings=(rep, rep, rep), donate_argnums=0)


def make_sharded_sampler(sample_fn, mesh):
  """jit of ``sample_fn(params, keys, cond) -> pytree (leading axis = examples)``, with the keys
  and conditions sharded over "data", the parameters replicated and the output gathered.

  Keys and conditions arrive as host arrays every process holds whole (replicated inputs are
  what a multi-process program accepts from NumPy) and are split over "data" inside.
  """

  def program(params, key_bits, cond):
    rows = batch_sharding(mesh)
    keys = jax.lax.with_sharding_constraint(jr.wrap_key_data(key_bits), rows)
    cond = jax.tree.map(lambda c: jax.lax.with_sharding_constraint(c, rows), cond)
    return sample_fn(params, keys, cond)

  rep = replicated(mesh)
  return jax.jit(program, in_shardings=(rep, rep, rep), out_shardings=rep)


def _pad_rows(tree, num: int):
  """Rows 0..num-1 of each leaf, padding by repeating the last row (padded examples are discarded)."""
  def pad(a):
    a = np.asarray(a)
    return np.concatenate([a, np.repeat(a[-1:], num - a.shape[0], axis=0)]) if a.shape[0] < num else a
  return jax.tree.map(pad, tree)


def draw(program, params, key: jax.Array, *, num: int, mesh, cond=None, batch_size: int | None = None,
         progress=None) -> dict:
  """Examples 0 .. num - 1 of a sharded sampler, in chunks of ``batch_size`` (one compilation).

  Example n uses the key fold_in(key, n) (``sampling.example_keys``) and condition row n of
  ``cond`` (a pytree with leading axis num, or None), whatever the chunking, padding or number
  of devices. ``progress`` is an optional tqdm bar advanced per chunk. Returns host arrays.
  """
  if not isinstance(num, int) or isinstance(num, bool) or num < 1:
    raise ValueError(f"num must be an integer >= 1, got {num!r}.")
  batch_size = num if batch_size is None else min(batch_size, num)
  if cond is not None:
    rows = {np.shape(leaf)[0] for leaf in jax.tree.leaves(cond)}
    if rows != {num}:
      raise ValueError(f"cond must have leading axis num={num} on every leaf, got {rows}.")
  num_devices = mesh.devices.size
  chunk = -(-batch_size // num_devices) * num_devices  # keys shard evenly over the devices
  chunks = []
  for offset in range(0, num, batch_size):
    keys = key_data(sampling.example_keys(key, chunk, offset))
    rows = None if cond is None else _pad_rows(
        jax.tree.map(lambda c: np.asarray(c)[offset:offset + batch_size], cond), chunk)
    out = to_host(program(params, keys, rows))
    chunks.append(jax.tree.map(lambda a: a[:min(batch_size, num - offset)], out))
    if progress is not None:
      progress.update(min(batch_size, num - offset))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *chunks)
