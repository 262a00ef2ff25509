"""scikit-learn's handwritten digits: 1,797 real 8x8 images, 17 grey levels (0..16), labels 0..9.

The UCI optdigits test set as shipped inside the scikit-learn wheel (Alpaydin & Kaynak 1998), so it
works offline. Split: a permutation of the 1,797 examples by ``np.random.default_rng(SPLIT_SEED)``;
its first 1,500 are "train", the last 297 "test" (indices sorted, so each split keeps sklearn's order).
"""

from __future__ import annotations

import functools

import numpy as np

from diffusion_jax.data.images import ImageDataset, check_split, split_indices

NUM_LEVELS = 17  # pixel values 0..16 (counts of set bits in 4x4 blocks of the 32x32 original)
NUM_TEST = 297
SPLIT_SEED = 0
CLASS_NAMES = tuple(str(d) for d in range(10))


@functools.cache
def _load() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # imported here: only this dataset needs scikit-learn

  bunch = load_digits()
  images = np.asarray(bunch.images).round().astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
  return images, np.asarray(bunch.target, np.int32)


def digits_split_indices() -> dict[str, np.ndarray]:
  """The indices (into sklearn's order) of each split: {"train": 1,500, "test": 297, "all": 1,797}."""
  images, _ = _load()
  train, test = split_indices(len(images), NUM_TEST, SPLIT_SEED)
  return {"train": train, "test": test, "all": np.arange(len(images))}


def digits(split: str = "train") -> ImageDataset:
  """The digits as an ``ImageDataset``: (N, 8, 8, 1) uint8 levels 0..16, labels 0..9.

  split: "train" (1,500), "test" (297) or "all" (1,797); fixed, see the module docstring.
  Model space: x = -1 + 2 (k + 1/2) / 17 (``images.levels_to_model``).
  """
  check_split(split)
  images, labels = _load()
  index = digits_split_indices()[split]
  return ImageDataset(images=images[index], labels=labels[index], num_levels=NUM_LEVELS,
                      class_names=CLASS_NAMES, name=f"digits/{split}")
