"""Batch sources: where the global batch of each training step comes from.

A source has ``batch(step) -> dict`` (the global batch at ``step``, sharded over the mesh's "data"
axis; each process builds only the rows its devices hold), ``resume(step)`` (called once before
the first batch, with the step the run starts from) and ``checkpoint_item`` (None, or a grain
iterator that the checkpoints save and restore with the train state).

- ``GeneratedSource``: a pure function of (key, step, rows): nothing to save; a resumed run
  recomputes exactly the batches an uninterrupted run would have drawn.
- ``GrainSource``: a grain ``MapDataset`` over a random-access source (``ArraySource`` in memory,
  ``image_source`` for an ``ImageDataset``, ``tfds_source`` / ``tfds_image_source`` for TFDS
  array_record data), shuffled afresh each epoch from a seed; global example g = step * B + row,
  and each process reads only its rows. Its iterator is checkpointable, so a resumed run sees
  exactly the batches it would have seen. Optional horizontal flips are a pure function of
  (seed, g), so they too are the same after a resume and whatever the number of processes.

Images reach the model as float32 NHWC in [-1, 1] by the one scaling convention of
``diffusion_jax.data.images``: integer level k of L goes to the centre of its dequantization cell,
x = -1 + 2 (k + 1/2) / L (L = 256 for uint8 pixels).

TFDS is read through ``tfds.data_source`` (array_record files, random access, images decoded to
NumPy by PIL): no TensorFlow at read time. Preparing a dataset (``download=True`` or
``tfds build NAME --file_format=array_record``) encodes images with TensorFlow, so it is done
once where TensorFlow is installed (``pip install tensorflow-cpu``), into a ``data_dir`` that is
then read from anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Protocol

import grain
import jax
import numpy as np

from diffusion_jax.data import images as image_ops
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


def image_source(dataset: image_ops.ImageDataset, *, labels: bool = True,
                 extra: dict | None = None) -> grain.MapDataset:
  """An ``ImageDataset`` as a random-access source: element i is {"x0", "label", **extra}, with
  x0 = levels_to_model(images[i], L) (float32 (H, W, C) in [-1, 1]) and the int32 label (left out
  when ``labels`` is False or the dataset has none); ``extra`` maps names to further per-example
  arrays (leading axis N, e.g. ``{"factors": np.stack([...], 1)}``) served row by row. Levels stay
  uint8 in memory until read."""
  if not isinstance(dataset, image_ops.ImageDataset):
    raise TypeError(f"dataset must be a diffusion_jax.data.ImageDataset, got {type(dataset).__name__}.")
  extra = dict(extra or {})
  clash = {"x0", "label", "levels"} & set(extra)
  if clash:
    raise ValueError(f"extra must not use the reserved names {sorted(clash)}.")
  arrays = {"levels": dataset.images, **extra}
  if labels and dataset.labels is not None:
    arrays["label"] = dataset.labels
  num_levels = dataset.num_levels

  def to_example(record):
    example = {k: np.asarray(v) for k, v in record.items() if k != "levels"}
    example["x0"] = image_ops.levels_to_model(record["levels"], num_levels)
    if "label" in example:
      example["label"] = example["label"].astype(np.int32)
    return example

  return grain.MapDataset.source(ArraySource(arrays)).map(to_example)


def _open_tfds(name: str, split: str, data_dir: str | None, download: bool):
  """``tfds.data_source`` over array_record files, with a clear error when the dataset is not
  prepared in ``data_dir`` and ``download`` is False."""
  import tensorflow_datasets as tfds

  # Named explicitly: tfds.data_source picks array_record only when no data_dir is given.
  builder_kwargs = {"file_format": "array_record"}
  if download:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=True,
                            builder_kwargs=builder_kwargs)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            builder_kwargs=builder_kwargs)
  except Exception as error:  # noqa: BLE001 - TFDS raises several types here; re-raised below
    try:
      prepared = tfds.builder(name, data_dir=data_dir, **builder_kwargs).is_prepared()
    except Exception:  # noqa: BLE001 - an unknown name: report the original error
      raise error from None
    if prepared:
      raise
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    raise FileNotFoundError(
        f"TFDS dataset {name!r} (split {split!r}) is not prepared in {where} as array_record "
        f"files. Prepare it once, with network (and TensorFlow for image features: pip install "
        f"tensorflow-cpu): tfds build {name} --file_format=array_record" +
        (f" --data_dir={data_dir}" if data_dir else "") +
        f", or pass download=True. Original error: {type(error).__name__}: "
        f"{str(error)[:300]}") from error


def tfds_source(name: str, *, split: str, data_dir: str | None = None,
                x0_feature: str = "image", label_feature: str | None = "label",
                download: bool = False):
  """A TFDS data source (array_record files, random access, no TensorFlow) as {"x0"[, "label"]}.

  uint8 pixels k go to cell centres x = -1 + (2k + 1) / 256 (``levels_to_model``, L = 256);
  other features pass as float32. Nothing is downloaded unless ``download`` is True: otherwise
  the data must already be prepared in ``data_dir`` (a FileNotFoundError says how).
  """
  source = _open_tfds(name, split, data_dir, download)

  def to_example(features):
    x0 = np.asarray(features[x0_feature])
    x0 = image_ops.levels_to_model(x0, 256) if x0.dtype == np.uint8 else x0.astype(np.float32)
    example = {"x0": x0}
    if label_feature is not None:
      example["label"] = np.asarray(features[label_feature], np.int32)
    return example

  return grain.MapDataset.source(source).map(to_example)


@dataclasses.dataclass(frozen=True)
class TfdsImages:
  """How one TFDS image dataset becomes {"x0"[, "label"]}: an optional centre crop, then an
  optional antialiased resize to ``resolution`` (re-quantised to uint8), then the cell centres."""

  name: str
  shape: tuple[int, int, int]  # (H, W, C) of x0 as served
  num_classes: int  # 0: no label served
  label_feature: str | None = "label"
  crop: int | None = None
  resolution: int | None = None
  splits: tuple[str, ...] = ("train", "test")


TFDS_IMAGES = {
    "mnist": TfdsImages("mnist", (28, 28, 1), 10),
    "fashion_mnist": TfdsImages("fashion_mnist", (28, 28, 1), 10),
    "cifar10": TfdsImages("cifar10", (32, 32, 3), 10),
    # CelebA 218x178 -> the centred 140x140 window -> 64x64 antialiased, as score_sde's CELEBA
    # pipeline (Song et al. 2021; central_crop(140) + resize_small(64)); no label (40 binary
    # attributes are in the records).
    "celeb_a": TfdsImages("celeb_a", (64, 64, 3), 0, label_feature=None, crop=140, resolution=64,
                          splits=("train", "validation", "test")),
}


def tfds_image_source(name: str, *, split: str, data_dir: str | None = None,
                      download: bool = False) -> grain.MapDataset:
  """A TFDS image dataset of ``TFDS_IMAGES`` (mnist, fashion_mnist, cifar10, celeb_a) as a
  random-access source of {"x0": float32 (H, W, C) in [-1, 1], "label": int32} (no label for
  celeb_a), read by ``tfds.data_source`` without TensorFlow.

  x0 = -1 + (2k + 1) / 256 for pixel k after the dataset's crop / resize (``TfdsImages``).
  ``split`` takes TFDS slicing ("train[:90%]"). Downloads only when ``download`` is True.
  """
  if name not in TFDS_IMAGES:
    raise ValueError(f"name must be one of {sorted(TFDS_IMAGES)}, got {name!r} (use tfds_source "
                     "for other TFDS datasets).")
  spec = TFDS_IMAGES[name]
  source = _open_tfds(name, split, data_dir, download)

  def to_example(features):
    pixels = np.asarray(features["image"])
    if spec.crop is not None:
      pixels = image_ops.center_crop(pixels, spec.crop)
    if spec.resolution is not None and pixels.shape[:2] != (spec.resolution,) * 2:
      pixels = np.clip(np.round(image_ops.resize(pixels, spec.resolution)), 0, 255).astype(np.uint8)
    example = {"x0": image_ops.levels_to_model(pixels, 256)}
    if spec.label_feature is not None:
      example["label"] = np.asarray(features[spec.label_feature], np.int32)
    return example

  return grain.MapDataset.source(source).map(to_example)


_MASK64 = (1 << 64) - 1


def _mix64(z: int) -> int:
  """SplitMix64's finaliser (Steele et al. 2014): a bijective scramble of 64-bit integers."""
  z = (z + 0x9E3779B97F4A7C15) & _MASK64
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
  return z ^ (z >> 31)


def flip_bit(seed: int, example: int) -> bool:
  """Whether global example g = step * B + row is flipped: the top bit of a hash of (seed, g),
  a fair coin per example, the same in every process and after every resume."""
  return bool(_mix64(_mix64((int(seed) ^ 0x666C6970) & _MASK64) ^ int(example)) >> 63)  # "flip": own stream


def _flipped(example: dict, flip: bool) -> dict:
  if not flip:
    return example
  return {**example, "x0": np.flip(np.asarray(example["x0"]), axis=-2)}  # (H, W, C): mirror W


def local_batches(source, *, batch_size: int, seed: int, start: int, stop: int,
                  random_flip: bool = False):
  """Rows [start, stop) of every global batch: element s is rows start..stop-1 of batch s, where
  row r of batch s is example g = s * batch_size + r of the source shuffled afresh each epoch
  (grain combines ``seed`` with the epoch number) and repeated. Only these rows are ever read.

  ``random_flip``: mirror x0 (H, W, C) horizontally when ``flip_bit(seed, g)``.
  """
  if len(source) < 1:
    raise ValueError("the grain source is empty.")
  rows = stop - start
  data = grain.MapDataset.source(source).shuffle(seed=seed).repeat()

  def row(j):
    g = (j // rows) * batch_size + start + j % rows
    return _flipped(data[g], random_flip and flip_bit(seed, g))

  # Endless in practice; half of sys.maxsize so that len() fits an index even with one row.
  return grain.MapDataset.range(0, sys.maxsize // 2).map(row).batch(rows)


class GrainSource:
  """``local_batches`` for this process's rows, through a checkpointable grain iterator."""

  def __init__(self, source, *, batch_size: int, seed: int, mesh, random_flip: bool = False):
    self.batch_size, self.mesh = batch_size, mesh
    start, stop = sharding.local_rows(mesh, batch_size)
    local = local_batches(source, batch_size=batch_size, seed=seed, start=start, stop=stop,
                          random_flip=random_flip)
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
