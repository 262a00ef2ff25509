"""Images as integer levels: the one scaling convention, flips, crops, resizes, grids, a dataset record.

Data with L integer levels k in {0..L-1} live in model space [-1, 1] at the centres of the uniform
dequantization cells of ``diffusion_jax.likelihood.dequantization`` (data_range (-1, 1)):
    x = -1 + 2 (k + 1/2) / L,        k = clip(floor((x + 1) L / 2), 0, L - 1)
so every dequantized point of cell k maps back to k (Theis et al. 2016; Ho et al. 2019, Sec. 3.1).
Images are NHWC. Functions take NumPy or JAX arrays and answer in the same kind (NumPy for host
input pipelines, JAX under ``jit``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def _check_num_levels(num_levels) -> int:
  if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) or num_levels < 2:
    raise ValueError(f"num_levels must be an integer >= 2, got {num_levels!r}.")
  return int(num_levels)


def levels_to_model(levels, num_levels: int):
  """x = -1 + 2 (k + 1/2) / L: integer levels k in {0..L-1} to the centres of their cells in [-1, 1].

  Cells as in uniform dequantization (Theis et al. 2016); float32 out.
  """
  num_levels = _check_num_levels(num_levels)
  xp = _xp(levels)
  levels = xp.asarray(levels)
  if not xp.issubdtype(levels.dtype, xp.integer):
    raise TypeError(f"levels must be an integer array (0..{num_levels - 1}), got dtype {levels.dtype}.")
  return (levels.astype(xp.float32) * (2.0 / num_levels) + (1.0 / num_levels - 1.0)).astype(xp.float32)


def model_to_levels(x, num_levels: int):
  """k = clip(floor((x + 1) L / 2), 0, L - 1): the dequantization cell holding x (int32).

  Values outside [-1, 1] (model samples) clip to the end levels.
  """
  num_levels = _check_num_levels(num_levels)
  xp = _xp(x)
  x = xp.asarray(x, dtype=xp.float32)
  return xp.clip(xp.floor((x + 1.0) * (num_levels / 2.0)), 0, num_levels - 1).astype(xp.int32)


def _check_image_rank(name: str, x, *, min_rank: int = 3):
  if np.ndim(x) < min_rank:
    raise ValueError(f"{name} must be an image (..., H, W, C), got shape {np.shape(x)}.")


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Horizontal flip with probability 1/2: x[..., h, w, c] -> x[..., h, W-1-w, c] (Krizhevsky 2012).

  ``x`` is (..., H, W, C); one independent flip per leading index (per image of a batch).
  """
  _check_image_rank("x", x)
  x = jnp.asarray(x)
  flip = jr.bernoulli(key, 0.5, x.shape[:-3])
  return jnp.where(flip[..., None, None, None], jnp.flip(x, axis=-2), x)


def center_crop(images, size: int | tuple[int, int]):
  """The centred (h, w) window of (..., H, W, C) images: rows (H - h) // 2 .. + h, likewise columns."""
  _check_image_rank("images", images)
  h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
  height, width = np.shape(images)[-3:-1]
  if not (0 < h <= height and 0 < w <= width):
    raise ValueError(f"size must fit inside the images ({height}, {width}), got {(h, w)}.")
  top, left = (height - h) // 2, (width - w) // 2
  return images[..., top:top + h, left:left + w, :]


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of antialiased linear resampling (a triangle filter widened by the
  downscale factor, the scheme of PIL's BILINEAR and TF's ``antialias=True``), rows summing to 1."""
  scale = n_in / n_out
  support = max(scale, 1.0)  # half-width of the triangle in input pixels
  centres = (np.arange(n_out) + 0.5) * scale - 0.5
  taps = np.arange(n_in)
  weights = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / support)
  return weights / weights.sum(axis=1, keepdims=True)


def resize(images, size: int | tuple[int, int]) -> np.ndarray:
  """Antialiased bilinear resize of (..., H, W, C) images to (..., h, w, C), float64 NumPy out.

  y[i, j] = sum_{a, b} A[i, a] B[j, b] x[a, b] with A, B triangle filters of half-width
  max(1, H / h) (separable; edges renormalised), as PIL's BILINEAR filter.
  """
  _check_image_rank("images", images)
  h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
  if h < 1 or w < 1:
    raise ValueError(f"size must be positive, got {(h, w)}.")
  images = np.asarray(images, np.float64)
  rows = _resize_matrix(images.shape[-3], h)
  cols = _resize_matrix(images.shape[-2], w)
  images = np.moveaxis(np.tensordot(rows, images, axes=(1, -3)), 0, -3)  # (..., h, W, C)
  return np.moveaxis(np.tensordot(cols, images, axes=(1, -2)), 0, -2)  # (..., h, w, C)


def to_grid(images, nrow: int = 8, *, padding: int = 1, pad_value=0) -> np.ndarray:
  """(N, H, W, C) images tiled row-major into one (rows (H + p) + p, nrow (W + p) + p, C) array.

  ``nrow`` images per row (as torchvision's ``make_grid``); the last row is padded with
  ``pad_value``. The dtype is kept, so uint8 levels give a PNG-ready array.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[0] < 1:
    raise ValueError(f"images must be a non-empty (N, H, W, C) array, got shape {images.shape}.")
  if isinstance(nrow, bool) or not isinstance(nrow, (int, np.integer)) or nrow < 1:
    raise ValueError(f"nrow must be an integer >= 1, got {nrow!r}.")
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding!r}.")
  n, h, w, c = images.shape
  ncol = min(int(nrow), n)
  nrows = math.ceil(n / ncol)
  grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value,
                 dtype=images.dtype)
  for i, image in enumerate(images):
    r, q = divmod(i, ncol)
    top, left = padding + r * (h + padding), padding + q * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """Images as integer levels with what is known about each one.

  images: (N, H, W, C) integer levels in {0..num_levels-1} (uint8 for L <= 256).
  labels: (N,) int32 class indices into ``class_names``, or None.
  factors: generative factors by name, each (N,) int indices (shapes), or None.
  factor_values: the values those indices stand for, by the same names, or None.
  captions: N strings describing each image, or None.
  """

  images: np.ndarray
  num_levels: int
  labels: np.ndarray | None = None
  class_names: tuple[str, ...] | None = None
  factors: dict[str, np.ndarray] | None = None
  factor_values: dict[str, np.ndarray] | None = None
  captions: tuple[str, ...] | None = None
  name: str = ""

  def __post_init__(self):
    num_levels = _check_num_levels(self.num_levels)
    images = np.asarray(self.images)
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.integer) or images.shape[0] < 1:
      raise ValueError("images must be a non-empty (N, H, W, C) integer array, got "
                       f"shape {images.shape} dtype {images.dtype}.")
    if images.min() < 0 or images.max() >= num_levels:
      raise ValueError(f"images must hold levels in 0..{num_levels - 1}, got values in "
                       f"[{images.min()}, {images.max()}].")
    n = images.shape[0]
    object.__setattr__(self, "images", images)
    if self.labels is not None:
      labels = np.asarray(self.labels)
      if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be ({n},) integers, got shape {labels.shape} dtype {labels.dtype}.")
      object.__setattr__(self, "labels", labels.astype(np.int32))
      if self.class_names is not None and (labels.min() < 0 or labels.max() >= len(self.class_names)):
        raise ValueError(f"labels must index class_names (0..{len(self.class_names) - 1}).")
    for field in ("factors", "factor_values"):
      table = getattr(self, field)
      if table is not None:
        bad = {k: np.shape(v) for k, v in table.items() if np.shape(v)[:1] != (n,)}
        if bad:
          raise ValueError(f"{field} must have leading axis {n} on every entry, got {bad}.")
    if self.captions is not None:
      if len(self.captions) != n:
        raise ValueError(f"captions must hold {n} strings, got {len(self.captions)}.")
      object.__setattr__(self, "captions", tuple(self.captions))
    if self.class_names is not None:
      object.__setattr__(self, "class_names", tuple(self.class_names))

  def __len__(self) -> int:
    return self.images.shape[0]

  @property
  def shape(self) -> tuple[int, int, int]:
    """One image's shape (H, W, C)."""
    return tuple(self.images.shape[1:])

  @property
  def num_classes(self) -> int:
    return 0 if self.class_names is None else len(self.class_names)

  def to_model(self) -> np.ndarray:
    """float32 (N, H, W, C) in [-1, 1]: ``levels_to_model(images, num_levels)``."""
    return levels_to_model(self.images, self.num_levels)

  def subset(self, index) -> "ImageDataset":
    """The examples ``index`` (an int array or slice), every per-example field cut alike."""
    index = np.arange(len(self))[index]
    cut = lambda table: None if table is None else {k: np.asarray(v)[index] for k, v in table.items()}
    return dataclasses.replace(
        self, images=self.images[index],
        labels=None if self.labels is None else self.labels[index],
        factors=cut(self.factors), factor_values=cut(self.factor_values),
        captions=None if self.captions is None else tuple(self.captions[i] for i in index))


def split_indices(num: int, num_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A fixed split of range(num): a permutation from ``np.random.default_rng(seed)``, the last
  ``num_test`` of it held out; both halves sorted."""
  if not 0 < num_test < num:
    raise ValueError(f"num_test must lie in 1..{num - 1}, got {num_test!r}.")
  order = np.random.default_rng(seed).permutation(num)
  return np.sort(order[:num - num_test]), np.sort(order[num - num_test:])


def check_split(split: str, allowed: Sequence[str] = ("train", "test", "all")) -> str:
  if split not in allowed:
    raise ValueError(f"split must be one of {tuple(allowed)}, got {split!r}.")
  return split
