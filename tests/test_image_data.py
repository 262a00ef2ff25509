"""Image data: the level <-> model-space convention against the dequantization cells, flips, crops,
resizes against PIL, grids, the ImageDataset record, the digits split, and the procedural shapes
(determinism, factor -> image consistency against closed forms, captions that parse back)."""

import importlib

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import data
from diffusion_jax.data import images
from diffusion_jax.likelihood import dequantization

# The module, not the constructor data.shapes that shadows it in the package namespace.
shapes = importlib.import_module("diffusion_jax.data.shapes")


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


# --- procedural shapes -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes32():
  return shapes.shapes(240, resolution=32, seed=0)


def test_shapes_are_deterministic_in_seed_split_and_prefix():
  a = shapes.shapes(60, resolution=16, seed=3)
  np.testing.assert_array_equal(a.images, shapes.shapes(60, resolution=16, seed=3).images)
  assert a.shape == (16, 16, 3) and a.images.dtype == np.uint8 and a.num_levels == 256
  np.testing.assert_array_equal(a.images[:20], shapes.shapes(20, resolution=16, seed=3).images)
  assert a.captions[:20] == shapes.shapes(20, resolution=16, seed=3).captions
  for other in (shapes.shapes(60, resolution=16, seed=4),
                shapes.shapes(60, resolution=16, seed=3, split="test")):
    assert not np.array_equal(other.factors["x"], a.factors["x"])
  np.testing.assert_array_equal(a.labels, a.factors["shape"])
  assert a.class_names == shapes.SHAPES
  # Each factor is uniform over its grid: every value turns up in 3,000 draws.
  draws = shapes.sample_factors(3000, seed=0)
  for name, size in shapes.FACTOR_SIZES.items():
    np.testing.assert_array_equal(np.unique(draws[name]), np.arange(size))
  with pytest.raises(ValueError, match="split must be one of"):
    shapes.shapes(4, split="all")
  with pytest.raises(ValueError, match="resolution must be an integer >= 8"):
    shapes.shapes(4, resolution=7)
  with pytest.raises(ValueError, match=r"factors\['x'\] must lie in 0..5"):
    shapes.render(dict(draws, x=draws["x"] + 6))


def test_shapes_colour_centroid_and_area_follow_the_factors(shapes32):
  ds, res = shapes32, 32
  values = ds.factor_values
  for i in range(len(ds)):
    image = ds.images[i].astype(np.float64)
    colour = np.asarray(values["colour"][i], np.float64)
    on = colour > 0
    # Exactly the colour's channels light up, all by the same coverage (one rounding of 255 c).
    assert np.all(image[..., ~on] == 0)
    coverage = image[..., on][..., 0] / 255
    np.testing.assert_array_equal(image[..., on], np.repeat(image[..., on][..., :1], on.sum(), -1))
    # The pixel holding the centroid is inside the shape: the full palette colour.
    cx, cy = values["x"][i] * res, values["y"][i] * res
    np.testing.assert_array_equal(image[int(cy), int(cx)], colour)
    # Coverage-weighted centre of mass of the pixels (centres at i + 1/2) is the area centroid:
    # supersampling (S = 4) and 8-bit rounding move it by well under a quarter pixel.
    rows, cols = np.indices(coverage.shape) + 0.5
    mass = coverage.sum()
    assert abs((coverage * cols).sum() / mass - cx) < 0.25 and abs((coverage * rows).sum() / mass - cy) < 0.25
    # Area against the closed form (unit area x (s R)^2): the boundary's subsample quantisation
    # and the rounding leave a few per cent at the smallest shapes (about 100 px^2 at 32 px).
    area = shapes.unit_area(shapes.SHAPES[ds.factors["shape"][i]]) * (values["scale"][i] * res) ** 2
    assert abs(mass / area - 1) < 0.05, (i, mass, area)


def test_shapes_heart_constants_against_a_fine_grid():
  # Area and centroid height of {(a^2 + b^2 - 1)^3 <= a^2 b^3} on a 3000^2 midpoint grid
  # (boundary error ~ perimeter x spacing / area ~ 2e-3 relative).
  g = (np.arange(3000) + 0.5) / 3000 * 3 - 1.5
  a, b = np.meshgrid(g, g)
  inside = (a * a + b * b - 1) ** 3 <= a * a * b ** 3
  cell = (3 / 3000) ** 2
  np.testing.assert_allclose(inside.sum() * cell, shapes.HEART_AREA, rtol=2e-3)
  np.testing.assert_allclose((b * inside).sum() / inside.sum(), shapes.HEART_CENTROID, atol=2e-3)


def _polygon_reference(shape, scale, rotation, x, y, res, sub):
  """Coverage by a point-in-polygon test (matplotlib.path) of the rotated, scaled vertices."""
  from matplotlib.path import Path

  if shape == "square":
    h = shapes.SQUARE_HALF_SIDE
    unit = np.array([[h, h], [-h, h], [-h, -h], [h, -h]])
  else:  # triangle, pointing up
    angles = np.deg2rad([90, 210, 330])
    unit = shapes.TRIANGLE_CIRCUMRADIUS * np.stack([np.cos(angles), np.sin(angles)], 1)
  t = np.deg2rad(shapes.ROTATIONS_DEG[rotation])
  turn = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])  # anticlockwise, b up
  verts = unit @ turn.T * shapes.SCALES[scale]
  verts = np.stack([shapes.POSITIONS[x] + verts[:, 0], shapes.POSITIONS[y] - verts[:, 1]], 1)
  grid = (np.arange(res * sub) + 0.5) / (res * sub)
  px, py = np.meshgrid(grid, grid)
  inside = Path(verts).contains_points(np.stack([px.ravel(), py.ravel()], 1))
  return inside.reshape(res, sub, res, sub).mean(axis=(1, 3))


@pytest.mark.parametrize("shape", ["square", "triangle"])
def test_shapes_polygons_match_a_point_in_polygon_reference(shape):
  rng = np.random.default_rng(1)
  n, res = 12, 16
  factors = {"shape": np.full(n, shapes.SHAPES.index(shape)), "colour": np.zeros(n, int),
             **{f: rng.integers(0, shapes.FACTOR_SIZES[f], n) for f in ("scale", "rotation", "x", "y")}}
  rendered = shapes.render(factors, res)[..., 0].astype(np.float64) / 255
  for i in range(n):
    ref = _polygon_reference(shape, *(int(factors[f][i]) for f in ("scale", "rotation", "x", "y")),
                             res, shapes._supersampling(res))
    # Same subsample points, so equal but for points within float32 rounding of an edge and the
    # 8-bit rounding (1/510): any pixel may differ by at most a couple of its 36 points.
    assert np.abs(rendered[i] - ref).max() <= 2 / 36 + 1 / 510
    assert np.abs(rendered[i] - ref).mean() < 2e-3


def test_shapes_rotation_is_anticlockwise_about_the_centroid():
  """Rotating the image by 90 degrees (np.rot90, anticlockwise) equals adding 90 degrees to the
  rotation and moving the centroid (x, y) to (y, 1 - x), for every shape, heart included."""
  n = len(shapes.SHAPES) * len(shapes.ROTATIONS_DEG)
  rng = np.random.default_rng(2)
  factors = {"shape": np.repeat(np.arange(len(shapes.SHAPES)), len(shapes.ROTATIONS_DEG)),
             "rotation": np.tile(np.arange(len(shapes.ROTATIONS_DEG)), len(shapes.SHAPES)),
             "colour": rng.integers(0, 6, n), "scale": rng.integers(0, 3, n),
             "x": rng.integers(0, 6, n), "y": rng.integers(0, 6, n)}
  turned = dict(factors, rotation=(factors["rotation"] + 2) % 8, x=factors["y"],
                y=len(shapes.POSITIONS) - 1 - factors["x"])
  a, b = shapes.render(factors, 16), shapes.render(turned, 16)
  diff = np.abs(np.rot90(a, axes=(1, 2)).astype(int) - b.astype(int))
  # Mirror-image subsample points: equal up to points within float32 rounding of an edge.
  assert diff.max() <= 2 * 255 / 36 + 1 and diff.mean() < 0.5


def test_shapes_captions_parse_back_to_the_factors(shapes32):
  ds = shapes32
  for i, text in enumerate(ds.captions):
    parsed = shapes.parse_caption(text)
    f = {k: int(v[i]) for k, v in ds.factors.items()}
    assert parsed == {"shape": f["shape"], "colour": f["colour"], "scale": f["scale"],
                      "rotation": 0 if shapes.SHAPES[f["shape"]] == "circle" else f["rotation"],
                      "row": f["y"] // 2, "column": f["x"] // 2}, text
  assert shapes.caption(1, 0, 0, 3, 0, 0) == "a small red circle at top left"
  assert shapes.caption(0, 2, 2, 1, 2, 3) == "a large blue square rotated 45 degrees at middle centre"
  for bad in ("a small red circle", "a small red circle rotated 10 degrees at top left"):
    with pytest.raises(ValueError, match="not a shapes caption"):
      shapes.parse_caption(bad)


def test_shapes_visible_rotation_groups_exactly_the_rotations_that_render_alike():
  """Two rotations of one shape render the same image (up to edge subsamples) exactly when
  visible_rotation maps them to one class: the symmetry table against the renderer."""
  res, k = 32, len(shapes.ROTATIONS_DEG)
  for s, name in enumerate(shapes.SHAPES):
    factors = {"shape": np.full(k, s), "colour": np.zeros(k, int), "scale": np.full(k, 2),
               "rotation": np.arange(k), "x": np.full(k, 2), "y": np.full(k, 3)}
    images = shapes.render(factors, res)[..., 0].astype(np.float64)
    visible = shapes.visible_rotation(factors["shape"], factors["rotation"])
    diff = np.abs(images[:, None] - images[None]).mean(axis=(2, 3))  # mean |difference|, levels
    if name == "circle":
      assert np.all(visible == -1)
      # No class to tell apart: edge subsamples flipped by float32 rounding move well under one
      # level of 255 on average.
      assert diff.max() < 1.0
      continue
    same = visible[:, None] == visible[None]
    # Renders of one class differ only at subsample points within float32 rounding of an edge;
    # two classes differ by a visible turn: the largest "same" gap is below the smallest other.
    assert diff[same].max() < diff[~same].min(), name
  degrees = np.asarray(shapes.VISIBLE_ROTATIONS_DEG)
  assert degrees[shapes.visible_rotation(np.array([0, 2]), np.array([3, 3]))].tolist() == [45, 15]
