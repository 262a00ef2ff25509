"""Procedural colour shapes in the spirit of dSprites (Matthey et al. 2017): exact factors, captions.

Each image is one antialiased shape in one colour on black, drawn from six independent factors,
each uniform over a small grid (dSprites' design: every combination possible, the factors known):

  shape     square, circle, triangle, heart                         (4)
  colour    red, green, blue, yellow, magenta, cyan (pure RGB)       (6)
  scale     small, medium, large: s = 0.15, 0.20, 0.25 of the width (3)
  rotation  0, 45, ..., 315 degrees, anticlockwise                  (8)
  x, y      0.30, 0.38, ..., 0.70 of the width / height, y downward  (6 each)

A shape of scale s is a unit shape scaled by s * resolution pixels, its area centroid at (x, y):
a circle of radius 0.8; a square of half-side 0.7; an equilateral triangle of circumradius 1.15
pointing up; a heart {(a^2 + b^2 - 1)^3 <= a^2 b^3} scaled by 0.74 (areas 2.01, 1.96, 1.72, 2.01;
every point within 1.15 of the centroid, so the whole shape lies inside the image). Rotation turns
the shape about its centroid (circle: no visible effect; square: period 90; triangle: 120).

Rendering: coverage of each pixel by the shape, estimated on a supersampled grid of
``S x S`` points per pixel (S = max(4, 96 // resolution)), times the colour, rounded to uint8.
Only the distinct (shape, scale, rotation, x, y) combinations of a draw are rendered (3,456 at
most), so generation costs little more than the lookup.

Captions (``caption`` / ``parse_caption``) follow one grammar:
  "a <size> <colour> <shape>[ rotated <degrees> degrees] at <row> <column>"
  size in {small, medium, large}; row in {top, middle, bottom} (y indices {0,1}, {2,3}, {4,5});
  column in {left, centre, right} (x likewise); the rotation phrase is present unless the
  rotation is 0 or the shape is a circle. E.g. "a small red circle at top left",
  "a large blue square rotated 45 degrees at middle centre".
"""

from __future__ import annotations

import math
import re

import numpy as np

from diffusion_jax.data.images import ImageDataset, check_split

SHAPES = ("square", "circle", "triangle", "heart")
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
           "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255)}
COLOUR_NAMES = tuple(COLOURS)
assert all(c in (0, 255) for rgb in COLOURS.values() for c in rgb)  # render() relies on it
SIZES = ("small", "medium", "large")
SCALES = (0.15, 0.20, 0.25)
ROTATIONS_DEG = tuple(range(0, 360, 45))
POSITIONS = tuple(np.round(np.linspace(0.30, 0.70, 6), 6).tolist())
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")
FACTOR_SIZES = {"shape": len(SHAPES), "colour": len(COLOURS), "scale": len(SCALES),
                "rotation": len(ROTATIONS_DEG), "x": len(POSITIONS), "y": len(POSITIONS)}
FACTORS = tuple(FACTOR_SIZES)
_GEOMETRY = ("shape", "scale", "rotation", "x", "y")  # what the coverage depends on
# Fixed streams: split "train" draws from default_rng((seed, 0)), "test" from default_rng((seed, 1)).
SPLIT_STREAMS = {"train": 0, "test": 1}
RESOLUTIONS = (16, 32)

# Unit shapes (anticlockwise coordinates a right, b up; area centroid at the origin).
CIRCLE_RADIUS = 0.8
SQUARE_HALF_SIDE = 0.7
TRIANGLE_CIRCUMRADIUS = 1.15
HEART_SCALE = 0.74
HEART_CENTROID = 0.293481  # centroid height of {(a^2 + b^2 - 1)^3 <= a^2 b^3} (16000^2 grid)
HEART_AREA = 3.661976  # its area, same grid
# The smallest rotation mapping each unit shape onto itself (None: every rotation does).
ROTATION_PERIOD_DEG = {"square": 90, "circle": None, "triangle": 120, "heart": 360}
# What an image shows of the rotation: its angle modulo the shape's period (visible_rotation).
VISIBLE_ROTATIONS_DEG = tuple(sorted({d % p for p in (90, 120, 360) for d in ROTATIONS_DEG}))


def unit_area(shape: str) -> float:
  """Area of the unit shape (before scaling by s * resolution pixels)."""
  return {"circle": math.pi * CIRCLE_RADIUS**2, "square": (2 * SQUARE_HALF_SIDE)**2,
          "triangle": 3 * math.sqrt(3) / 4 * TRIANGLE_CIRCUMRADIUS**2,
          "heart": HEART_AREA * HEART_SCALE**2}[shape]


def _inside(shape: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Whether unit-shape coordinates (a right, b up, unrotated) lie in shape ``shape``."""
  name = SHAPES[shape]
  if name == "circle":
    return a * a + b * b <= CIRCLE_RADIUS**2
  if name == "square":
    return np.maximum(np.abs(a), np.abs(b)) <= SQUARE_HALF_SIDE
  if name == "triangle":  # three half-planes at the inradius R/2, outward normals at -90, 30, 150 deg
    r = TRIANGLE_CIRCUMRADIUS / 2
    c = math.sqrt(3) / 2
    return (-b <= r) & (c * a + 0.5 * b <= r) & (-c * a + 0.5 * b <= r)
  # heart
  a, b = a / HEART_SCALE, b / HEART_SCALE + HEART_CENTROID
  q = a * a + b * b - 1
  return q * q * q <= a * a * b * b * b


def _supersampling(resolution: int) -> int:
  return max(4, 96 // resolution)


def _coverage(shape, scale, rotation, x, y, resolution: int) -> np.ndarray:
  """(n, R, R) float32 coverage of each pixel by n shapes of one kind (index arrays of length n)."""
  sub = _supersampling(resolution)
  grid = ((np.arange(resolution * sub) + 0.5) / sub / resolution).astype(np.float32)  # in [0, 1)
  s = (np.asarray(SCALES, np.float32)[scale])[:, None, None]
  theta = np.deg2rad(np.asarray(ROTATIONS_DEG, np.float64)[rotation]).astype(np.float32)
  cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
  pos = np.asarray(POSITIONS, np.float32)
  du = (grid[None, None, :] - pos[x][:, None, None]) / s  # right
  dv = (pos[y][:, None, None] - grid[None, :, None]) / s  # up (rows go down)
  # Rotate the point by -theta to test it against the unrotated shape.
  a, b = cos * du + sin * dv, cos * dv - sin * du
  mask = _inside(int(shape), a, b)
  n = mask.shape[0]
  hits = mask.reshape(n, resolution, sub, resolution, sub).sum(axis=(2, 4), dtype=np.int32)
  return hits.astype(np.float32) / (sub * sub)


def _check_factors(factors: dict) -> dict[str, np.ndarray]:
  missing = [f for f in FACTORS if f not in factors]
  if missing:
    raise ValueError(f"factors must hold integer indices for {FACTORS}, missing {missing}.")
  out = {}
  for name in FACTORS:
    v = np.asarray(factors[name])
    if not np.issubdtype(v.dtype, np.integer) or v.ndim != 1:
      raise ValueError(f"factors[{name!r}] must be a 1-D integer array, got {v.dtype} {v.shape}.")
    if v.size and (v.min() < 0 or v.max() >= FACTOR_SIZES[name]):
      raise ValueError(f"factors[{name!r}] must lie in 0..{FACTOR_SIZES[name] - 1}.")
    out[name] = v.astype(np.int32)
  if len({v.shape for v in out.values()}) != 1:
    raise ValueError(f"factors must share one length, got { {k: v.shape for k, v in out.items()} }.")
  return out


def _check_resolution(resolution) -> int:
  if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 8:
    raise ValueError(f"resolution must be an integer >= 8 (16 or 32 as documented), got {resolution!r}.")
  return int(resolution)


def render(factors: dict, resolution: int = 16, *, chunk: int = 256) -> np.ndarray:
  """(N, R, R, 3) uint8 images of the given factor indices: round(255-scaled colour x coverage).

  Coverage of pixel (i, j) = the fraction of its S x S subsample points inside the shape, the
  shape being the unit shape rotated by the rotation, scaled by s R and centred at (x R, y R).
  """
  factors = _check_factors(factors)
  resolution = _check_resolution(resolution)
  sizes = [FACTOR_SIZES[f] for f in _GEOMETRY]
  keys = np.ravel_multi_index(np.stack([factors[f] for f in _GEOMETRY]), sizes)
  keys, inverse = np.unique(keys, return_inverse=True)  # render each distinct geometry once
  combos = np.stack(np.unravel_index(keys, sizes), axis=1)
  coverage = np.empty((len(combos), resolution, resolution), np.uint8)  # round(255 coverage)
  for shape in np.unique(combos[:, 0]):
    rows = np.flatnonzero(combos[:, 0] == shape)
    for start in range(0, len(rows), chunk):
      part = rows[start:start + chunk]
      c = combos[part]
      cover = _coverage(shape, c[:, 1], c[:, 2], c[:, 3], c[:, 4], resolution)
      coverage[part] = np.round(cover * 255)
  # Palette channels are 0 or 255, so round(c x coverage) = (c / 255) round(255 coverage).
  channels = (np.asarray(list(COLOURS.values()), np.uint8) // 255)[factors["colour"]]  # (N, 3)
  return coverage[inverse.reshape(-1)][..., None] * channels[:, None, None, :]


def visible_rotation(shape, rotation) -> np.ndarray:
  """The rotation an image shows: index into ``VISIBLE_ROTATIONS_DEG`` of the angle modulo the
  shape's period (square 90, triangle 120, heart 360 degrees), or -1 for a circle (no visible
  rotation). E.g. a square at 135 degrees shows 45; a triangle at 135 shows 15."""
  shape, rotation = np.asarray(shape), np.asarray(rotation)
  degrees = np.asarray(ROTATIONS_DEG)[rotation]
  period = np.asarray([ROTATION_PERIOD_DEG[s] or 1 for s in SHAPES])[shape]
  index = np.searchsorted(VISIBLE_ROTATIONS_DEG, degrees % period)
  return np.where(shape == SHAPES.index("circle"), -1, index).astype(np.int32)


def factor_values(factors: dict) -> dict[str, np.ndarray]:
  """The values the indices stand for: scale (fraction of the width), rotation (radians,
  anticlockwise), x and y (centroid, fractions of width / height, y downward), colour (RGB)."""
  factors = _check_factors(factors)
  return {"scale": np.asarray(SCALES, np.float32)[factors["scale"]],
          "rotation": np.deg2rad(np.asarray(ROTATIONS_DEG, np.float32))[factors["rotation"]],
          "x": np.asarray(POSITIONS, np.float32)[factors["x"]],
          "y": np.asarray(POSITIONS, np.float32)[factors["y"]],
          "colour": np.asarray(list(COLOURS.values()), np.uint8)[factors["colour"]]}


def caption(shape: int, colour: int, scale: int, rotation: int, x: int, y: int) -> str:
  """One example's caption, by the grammar of the module docstring."""
  text = f"a {SIZES[scale]} {COLOUR_NAMES[colour]} {SHAPES[shape]}"
  if rotation and SHAPES[shape] != "circle":
    text += f" rotated {ROTATIONS_DEG[rotation]} degrees"
  return text + f" at {ROWS[y // 2]} {COLUMNS[x // 2]}"


_CAPTION = re.compile(
    rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOUR_NAMES)}) ({'|'.join(SHAPES)})"
    rf"(?: rotated (\d+) degrees)? at ({'|'.join(ROWS)}) ({'|'.join(COLUMNS)})")


def parse_caption(text: str) -> dict[str, int]:
  """The factors a caption states: {shape, colour, scale, rotation, row, column} indices
  (rotation 0 when the phrase is absent; row, column = y // 2, x // 2)."""
  match = _CAPTION.fullmatch(text)
  if match is None or (match[4] is not None and int(match[4]) not in ROTATIONS_DEG[1:]):
    raise ValueError(f"text is not a shapes caption (see diffusion_jax.data.shapes), got {text!r}.")
  size, colour, shape, degrees, row, column = match.groups()
  return {"shape": SHAPES.index(shape), "colour": COLOUR_NAMES.index(colour),
          "scale": SIZES.index(size),
          "rotation": 0 if degrees is None else ROTATIONS_DEG.index(int(degrees)),
          "row": ROWS.index(row), "column": COLUMNS.index(column)}


def sample_factors(num: int, *, seed: int = 0, split: str = "train") -> dict[str, np.ndarray]:
  """``num`` independent draws of the factor indices, each uniform over its grid, from
  ``np.random.default_rng((seed, SPLIT_STREAMS[split]))``."""
  check_split(split, tuple(SPLIT_STREAMS))
  if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
    raise ValueError(f"num must be an integer >= 1, got {num!r}.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  rng = np.random.default_rng((int(seed), SPLIT_STREAMS[split]))
  # One row per example, drawn in order: a draw of n is the first n rows of any larger draw.
  draws = rng.integers(0, list(FACTOR_SIZES.values()), size=(int(num), len(FACTOR_SIZES)))
  return {name: draws[:, i].astype(np.int32) for i, name in enumerate(FACTOR_SIZES)}


def shapes(num: int, *, resolution: int = 16, seed: int = 0, split: str = "train") -> ImageDataset:
  """``num`` procedural shapes as an ``ImageDataset``: (num, R, R, 3) uint8 (L = 256), labels =
  the shape index (class_names ``SHAPES``), factor indices and values, captions.

  image = round(colour x coverage(shape, scale, rotation, x, y)), factors uniform and independent
  on their grids (the dSprites design, Matthey et al. 2017; see the module docstring).

  Deterministic in (num, resolution, seed, split): the first n examples of a larger draw are the
  draw of n. "train" and "test" are independent draws from the same law (seed streams 0, 1);
  factor combinations are finite (3,456 geometries x 6 colours), so the two can share some.
  """
  resolution = _check_resolution(resolution)
  factors = sample_factors(num, seed=seed, split=split)
  captions = [caption(*(int(factors[f][i]) for f in FACTORS)) for i in range(int(num))]
  return ImageDataset(images=render(factors, resolution), num_levels=256,
                      labels=factors["shape"], class_names=SHAPES, factors=factors,
                      factor_values=factor_values(factors), captions=captions,
                      name=f"shapes{resolution}/{split}/seed{seed}")
