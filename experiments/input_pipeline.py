"""Batch sources: where the global batch of each training step comes from.

A source has ``batch(step) -> dict`` (the global batch at ``step``, sharded over the mesh's "data"
axis; each process builds only the rows its devices hold), ``resume(step)`` (called once before
the first batch, with the step the run starts from) and ``checkpoint_item`` (None, or a grain
iterator that the checkpoints save and restore with the train state).

- ``GeneratedSource``: a pure function of (key, step, rows): nothing to save; a resumed run
  recomputes exactly the batches an uninterrupted run would have drawn.
- ``GrainSource``: a grain ``MapDataset`` over a random-access source (``ArraySource`` in memory,
  or ``tfds_source`` for TFDS array_record data), shuffled afresh each epoch from a seed; global
  example g = step * B + row, and each process reads only its rows. Its iterator is
  checkpointable, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import functools
import sys
from typing import Protocol

import grain
import jax
import numpy as np

from experiments import sharding


class BatchSource(Protocol):
  checkpoint_item: object  # None, or an iterator with a grain checkpoint handler

  def resume(self, step: int) -> None: ...

  def batch(self, step: int) -> dict: ...


class GeneratedSource:
  """Batches computed from (key, step, rows) by ``dataset.batch`` (toy data): stateless."""

  checkpoint_item = None

  def __init__(self, dataset, key: jax.Array, batch_size: int, mesh):
    self.batch_size, self.mesh, self.key = batch_size, mesh, key
    start, stop = sharding.local_rows(mesh, batch_size)
    self._local = jax.jit(functools.partial(dataset.batch, batch_size=batch_size, start=start,
                                            stop=stop))

  def resume(self, step: int) -> None:
    del step  # a pure function of the step: nothing to restore

  def batch(self, step: int) -> dict:
    return sharding.global_batch(self._local(self.key, step), self.mesh, self.batch_size)


class ArraySource:
  """A random-access source over in-memory arrays: element i is {name: array[i]}."""

  def __init__(self, arrays: dict):
    sizes = {np.shape(a)[0] for a in arrays.values()}
    if len(sizes) != 1 or not sizes.pop() > 0:
      raise ValueError("arrays must be a non-empty dict of arrays sharing one leading axis, got "
                       f"{ {k: np.shape(a) for k, a in arrays.items()} }.")
    self.arrays = {k: np.asarray(a) for k, a in arrays.items()}

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, index: int) -> dict:
    return {k: a[index] for k, a in self.arrays.items()}


def tfds_source(name: str, *, split: str, data_dir: str | None = None,
                x0_feature: str = "image", label_feature: str | None = "label"):
  """A TFDS data source (array_record files, random access, no TensorFlow) as {"x0"[, "label"]}.

  Integer pixels (uint8) are mapped linearly onto [-1, 1]; nothing is ever downloaded: the data
  must already be prepared in ``data_dir``.
  """
  import tensorflow_datasets as tfds

  source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)

  def to_example(features):
    x0 = np.asarray(features[x0_feature])
    x0 = x0.astype(np.float32) / 127.5 - 1.0 if x0.dtype == np.uint8 else x0.astype(np.float32)
    example = {"x0": x0}
    if label_feature is not None:
      example["label"] = np.asarray(features[label_feature], np.int32)
    return example

  return grain.MapDataset.source(source).map(to_example)


def local_batches(source, *, batch_size: int, seed: int, start: int, stop: int):
  """Rows [start, stop) of every global batch: element s is rows start..stop-1 of batch s, where
  row r of batch s is example s * batch_size + r of the source shuffled afresh each epoch (grain
  combines ``seed`` with the epoch number) and repeated. Only these rows are ever read."""
  if len(source) < 1:
    raise ValueError("the grain source is empty.")
  rows = stop - start
  data = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  return grain.MapDataset.range(0, sys.maxsize).map(
      lambda j: data[(j // rows) * batch_size + start + j % rows]).batch(rows)


class GrainSource:
  """``local_batches`` for this process's rows, through a checkpointable grain iterator."""

  def __init__(self, source, *, batch_size: int, seed: int, mesh):
    self.batch_size, self.mesh = batch_size, mesh
    start, stop = sharding.local_rows(mesh, batch_size)
    local = local_batches(source, batch_size=batch_size, seed=seed, start=start, stop=stop)
    self.checkpoint_item = iter(local.to_iter_dataset())
    self._next_step = 0

  def resume(self, step: int) -> None:
    # The iterator was restored with the checkpoint of ``step`` (or is fresh when step = 0).
    self._next_step = step

  def batch(self, step: int) -> dict:
    if step != self._next_step:
      raise RuntimeError(f"GrainSource serves batches in order: asked for step {step}, the "
                         f"iterator is at step {self._next_step}.")
    self._next_step += 1
    return sharding.global_batch(next(self.checkpoint_item), self.mesh, self.batch_size)
