"""Image data: the level <-> model-space convention against the dequantization cells, flips, crops,
resizes against PIL, grids, the ImageDataset record, the digits split, and the procedural shapes
(determinism, factor -> image consistency against closed forms, captions that parse back)."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import data
from diffusion_jax.data import images
from diffusion_jax.likelihood import dequantization


@pytest.mark.parametrize("num_levels", [2, 17, 256])
def test_levels_map_to_cell_centres_and_every_dequantized_point_maps_back(num_levels):
  k = np.arange(num_levels)
  x = images.levels_to_model(k, num_levels)
  assert x.dtype == np.float32
  # The cell of level k under dequantize(data_range=(-1, 1)) is [-1 + 2k/L, -1 + 2(k+1)/L):
  # the centre is its midpoint (float32 rounding of a few ulps).
  lo, hi = -1 + 2 * k / num_levels, -1 + 2 * (k + 1) / num_levels
  np.testing.assert_allclose(x, (lo + hi) / 2, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(images.model_to_levels(x, num_levels), k)
  # 64 dequantization draws per level: each lands in its cell and maps back to k. (In float32,
  # k + u rounds up to k + 1 for u within ~1e-7 of 1: a null event for these 64 L draws.)
  pixels = jnp.tile(jnp.arange(num_levels), (64, 1))
  z = dequantization.dequantize(jr.key(0), pixels, num_levels=num_levels, data_range=(-1.0, 1.0))
  np.testing.assert_array_equal(images.model_to_levels(z, num_levels), pixels)
  # Points 0.1% inside either end of each cell belong to it (in float32, for every L).
  for u in (1e-3, 0.5, 1 - 1e-3):
    inner = (-1 + 2 * (k + u) / num_levels).astype(np.float32)
    np.testing.assert_array_equal(images.model_to_levels(inner, num_levels), k)
  if num_levels & (num_levels - 1) == 0:  # edges exact in binary: the lower edge belongs to k
    np.testing.assert_array_equal(images.model_to_levels(lo[1:], num_levels), k[1:])
  # Values outside [-1, 1] (model samples) clip to the end levels.
  np.testing.assert_array_equal(images.model_to_levels(np.array([-3.0, 1.0, 7.0]), num_levels),
                                [0, num_levels - 1, num_levels - 1])


def test_scaling_works_under_jit_and_rejects_bad_input():
  f = jax.jit(lambda k: images.model_to_levels(images.levels_to_model(k, 256), 256))
  k = jnp.arange(256, dtype=jnp.uint8)
  np.testing.assert_array_equal(f(k), np.arange(256))
  assert isinstance(images.levels_to_model(np.arange(3), 3), np.ndarray)  # NumPy in, NumPy out
  with pytest.raises(TypeError, match="levels must be an integer array"):
    images.levels_to_model(np.zeros(3), 4)
  with pytest.raises(ValueError, match="num_levels must be an integer >= 2"):
    images.model_to_levels(np.zeros(3), 1)


def test_random_flip_mirrors_width_per_image_about_half_the_time():
  x = jr.normal(jr.key(1), (400, 3, 4, 2))
  y = np.asarray(jax.jit(images.random_flip)(jr.key(2), x))
  same = np.all(y == np.asarray(x), axis=(1, 2, 3))
  mirrored = np.all(y == np.asarray(x)[:, :, ::-1, :], axis=(1, 2, 3))
  assert np.all(same ^ mirrored)  # every image is itself or its mirror, never both (noise)
  assert 160 <= mirrored.sum() <= 240  # Binomial(400, 1/2): mean 200, sd 10, so +-4 sd
  np.testing.assert_array_equal(images.random_flip(jr.key(2), x), y)  # a function of the key


def test_center_crop_and_resize_against_pil():
  PIL = pytest.importorskip("PIL.Image")
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
  crop = images.center_crop(image, 140)
  np.testing.assert_array_equal(crop, image[39:179, 19:159])
  ours = images.resize(crop, 64)
  pil = np.asarray(PIL.fromarray(crop).resize((64, 64), PIL.BILINEAR, reducing_gap=None))
  # PIL rounds to uint8 after a fixed-point filter: at most 1 level apart.
  assert np.abs(np.round(ours) - pil.astype(float)).max() <= 1
  # Weights sum to one: a constant image stays constant (float64 sums).
  np.testing.assert_allclose(images.resize(np.full((140, 100, 2), 7.0), (64, 30)), 7.0, rtol=1e-12)
  with pytest.raises(ValueError, match="size must fit inside"):
    images.center_crop(image, 300)


def test_to_grid_tiles_row_major_with_padding():
  x = np.arange(5 * 2 * 3 * 1, dtype=np.uint8).reshape(5, 2, 3, 1)
  grid = images.to_grid(x, nrow=2, padding=1, pad_value=255)
  assert grid.shape == (3 * 3 + 1, 2 * 4 + 1, 1) and grid.dtype == np.uint8
  for i in range(5):
    r, c = divmod(i, 2)
    np.testing.assert_array_equal(grid[1 + 3 * r:3 + 3 * r, 1 + 4 * c:4 + 4 * c], x[i])
  assert np.all(grid[7:9, 5:8] == 255)  # the empty sixth cell
  with pytest.raises(ValueError, match="nrow must be an integer >= 1"):
    images.to_grid(x, nrow=0)


def test_image_dataset_record_validates_and_subsets():
  levels = np.array([[[[0]], [[3]]], [[[1]], [[2]]]], np.uint8)  # (2, 2, 1, 1)
  ds = images.ImageDataset(images=levels, num_levels=4, labels=np.array([1, 0]),
                           class_names=("a", "b"), captions=["x", "y"],
                           factors={"f": np.array([5, 6])})
  assert ds.shape == (2, 1, 1) and len(ds) == 2 and ds.num_classes == 2
  np.testing.assert_allclose(ds.to_model()[0, :, 0, 0], [-0.75, 0.75])  # -1 + (2k + 1) / 4
  sub = ds.subset(np.array([1]))
  assert sub.captions == ("y",) and sub.labels.tolist() == [0] and sub.factors["f"].tolist() == [6]
  with pytest.raises(ValueError, match="levels in 0..3"):
    images.ImageDataset(images=levels + 4, num_levels=4)
  with pytest.raises(ValueError, match="labels must be"):
    images.ImageDataset(images=levels, num_levels=4, labels=np.array([0]))
  with pytest.raises(ValueError, match="captions must hold 2"):
    images.ImageDataset(images=levels, num_levels=4, captions=["x"])


def test_digits_split_is_fixed_disjoint_and_covers_all():
  from sklearn.datasets import load_digits

  train, test, every = data.digits("train"), data.digits("test"), data.digits("all")
  assert (len(train), len(test), len(every)) == (1500, 297, 1797)
  assert train.shape == (8, 8, 1) and train.images.dtype == np.uint8 and train.num_levels == 17
  assert train.images.max() == 16 and train.class_names == tuple("0123456789")
  index = data.digits_split_indices()
  assert not set(index["train"]) & set(index["test"])
  np.testing.assert_array_equal(np.sort(np.concatenate([index["train"], index["test"]])),
                                np.arange(1797))
  # The split is pinned: a change of seed or of NumPy's permutation would show here.
  np.testing.assert_array_equal(index["test"][:8], np.sort(
      np.random.default_rng(0).permutation(1797)[1500:])[:8])
  # Against sklearn directly: same pixels and labels at the recorded indices.
  ref = load_digits()
  np.testing.assert_array_equal(test.images[..., 0], ref.images[index["test"]])
  np.testing.assert_array_equal(test.labels, ref.target[index["test"]])
  assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
  with pytest.raises(ValueError, match="split must be one of"):
    data.digits("validation")
