"""The shapes' factor readers: one evaluation classifier per generating factor, and what they read
in a model's samples next to what they read in the data.

A dataset with known factors (``diffusion_jax.data.shapes``) gets one reader per factor, each an
evaluation classifier of ``experiments/classifier.py`` (trained once with a fixed seed on the train
split, cached), reported with its test accuracy on real renders:

  colour                       label = the colour's index; reads the RGB image
  shape, scale, x, y           label = the factor's index; reads the coverage
  rotation                     label = the rotation the image shows (``shapes.visible_rotation``:
                               the angle modulo the shape's symmetry), circles left out; coverage

The coverage is the image's largest channel (every palette colour is pure, so it is the shape's
coverage of each pixel, whatever the colour): the geometry does not depend on the colour, and
the readers need not learn it six times. Measured on shapes-16 with the default recipe (400 steps):
the shape reader on RGB stayed at chance (28% test accuracy; 43% after 1,000 steps), on the
coverage it reached 100%. The readers of x and y are trained without the random-shift
augmentation (a shift moves the shape to a neighbouring position); the others with it. The shape
reader is also the shapes' evaluation classifier (``build_images.evaluation_classifier``).

``factor_scores`` reads every factor of every sample (argmax of the reader; rotation only where
the shape reader reads no circle) and reports per factor the histogram of the samples, the same
histogram of the test set, their total-variation distance and its floor (the distance of the
same number n of training images to the test set, mean and std over splits, as every floor of
``images.py``), and the share read with p > ``confidence``. A sample is *valid* when every
reader that applies to it is confident; ``valid_fraction`` has the same floor.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from diffusion_jax.data.shapes import (COLOUR_NAMES, POSITIONS, SHAPES, SIZES,
                                      VISIBLE_ROTATIONS_DEG, visible_rotation)
from experiments.evaluate.images import _mean_std  # (mean, std with ddof 1) of the floors

FACTORS = ("shape", "colour", "scale", "rotation", "x", "y")
_POSITIONS = ("x", "y")
_RGB = ("colour",)  # the readers of the RGB image; the others read the coverage


def coverage(x) -> np.ndarray:
  """(N, H, W, C) -> (N, H, W, 1): the largest channel (model space or levels alike)."""
  x = np.asarray(x)
  return x.max(axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Reader:
  """A trained classifier of one factor and the input it reads (the image, or its coverage):
  ``probs``, ``logits``, ``features`` and ``test_accuracy`` as a ``TrainedClassifier``'s."""

  classifier: Any
  factor: str

  def _input(self, x):
    return x if self.factor in _RGB else coverage(x)

  @property
  def test_accuracy(self):
    return self.classifier.test_accuracy

  @property
  def info(self) -> dict:
    return {**self.classifier.info, "factor": self.factor,
            "input": "rgb" if self.factor in _RGB else "coverage"}

  def probs(self, x) -> np.ndarray:
    return self.classifier.probs(self._input(x))

  def logits(self, x) -> np.ndarray:
    return self.classifier.logits(self._input(x))

  def features(self, x) -> np.ndarray:
    return self.classifier.features(self._input(x))


def _class_names(factor: str) -> tuple[str, ...]:
  if factor == "rotation":
    return tuple(f"{d} deg" for d in VISIBLE_ROTATIONS_DEG)
  if factor in _POSITIONS:
    return tuple(f"{v:g}" for v in POSITIONS)
  return {"shape": SHAPES, "colour": COLOUR_NAMES, "scale": SIZES}[factor]


def _check_factors(name: str, dataset) -> None:
  table = getattr(dataset, "factors", None)
  if table is None or any(f not in table for f in FACTORS):
    raise ValueError(f"{name} must be a shapes ImageDataset with factors {FACTORS}, got "
                     f"{None if table is None else sorted(table)}.")


def reader_dataset(dataset, factor: str):
  """``dataset`` as its ``factor`` reader sees it: labelled by the factor (rotation: the visible
  rotation, circles dropped), images RGB (colour) or their coverage (the others)."""
  if factor not in FACTORS:
    raise ValueError(f"factor must be one of {FACTORS}, got {factor!r}.")
  _check_factors("dataset", dataset)
  table = dataset.factors
  if factor == "rotation":
    visible = visible_rotation(table["shape"], table["rotation"])
    keep = np.flatnonzero(visible >= 0)
    dataset, labels = dataset.subset(keep), visible[keep]
  else:
    labels = np.asarray(table[factor], np.int32)
  images = dataset.images if factor in _RGB else coverage(dataset.images)
  return dataclasses.replace(dataset, images=images, labels=labels, class_names=_class_names(factor))


def readers(name: str, train_set, test_set, base_config, *, factors=FACTORS, cache_dir=None,
            log=None) -> dict:
  """{factor: Reader} for ``factors``, each classifier trained (or loaded) by
  ``classifier.load_or_train`` under ``<name>-<factor>``; ``base_config`` a ``ClassifierConfig``.
  """
  from experiments import classifier as classifier_lib

  _check_factors("train_set", train_set)
  _check_factors("test_set", test_set)
  unknown = [f for f in factors if f not in FACTORS]
  if unknown:
    raise ValueError(f"factors must be among {FACTORS}, got {unknown}.")
  out = {}
  for factor in factors:
    config = base_config
    if factor in _POSITIONS:
      config = dataclasses.replace(config, max_shift=0)
    out[factor] = Reader(classifier_lib.load_or_train(
        f"{name}-{factor}", reader_dataset(train_set, factor), reader_dataset(test_set, factor),
        config, cache_dir=cache_dir, log=log), factor)
  return out


def _read(reader_probs: Mapping[str, np.ndarray], confidence: float) -> dict:
  """Per factor: (argmax (N,), confident (N,) bool, applies (N,) bool)."""
  circle = SHAPES.index("circle")
  not_circle = reader_probs["shape"].argmax(axis=1) != circle
  out = {}
  for factor, probs in reader_probs.items():
    applies = not_circle if factor == "rotation" else np.ones(probs.shape[0], bool)
    out[factor] = (probs.argmax(axis=1), probs.max(axis=1) > confidence, applies)
  return out


def _histogram(read, num_classes: int) -> np.ndarray:
  values, _, applies = read
  counts = np.bincount(values[applies], minlength=num_classes).astype(np.float64)
  return counts / max(counts.sum(), 1.0)


def _valid(read: dict) -> np.ndarray:
  ok = np.ones(next(iter(read.values()))[0].shape[0], bool)
  for _, confident, applies in read.values():
    ok &= confident | ~applies
  return ok


def factor_scores(x, train_set, test_set, factor_readers: Mapping, *, num_floor_splits: int = 10,
                  confidence: float = 0.9, seed: int = 0) -> dict:
  """What the readers see in samples ``x`` (N, H, W, C) in model space, next to the data.

  Returns {"factors": {factor: {histogram, data_histogram, true_histogram, tv, tv_floor,
  tv_floor_std, confident_fraction, reader_test_accuracy, classes}}, "valid_fraction",
  "valid_fraction_floor", "valid_fraction_floor_std"}; see the module docstring.
  """
  missing = [f for f in FACTORS if f not in factor_readers]
  if missing:
    raise ValueError(f"factor_readers must hold a reader for each of {FACTORS}, missing {missing}.")
  _check_factors("train_set", train_set)
  _check_factors("test_set", test_set)
  x = np.asarray(x, np.float32)
  if x.ndim != 4 or x.shape[1:] != tuple(test_set.shape) or x.shape[0] < 1:
    raise ValueError(f"x must be samples (N, {', '.join(map(str, test_set.shape))}), got shape "
                     f"{x.shape}.")
  n = x.shape[0]
  rng = np.random.default_rng(seed)
  floor_idx = [rng.choice(len(train_set), n, replace=n > len(train_set))
               for _ in range(num_floor_splits)]
  used = np.unique(np.concatenate(floor_idx))  # read only the training images the floors use
  train_images = train_set.to_model()[used]
  probs = {f: (r.probs(x), r.probs(test_set.to_model()), r.probs(train_images))
           for f, r in factor_readers.items() if f in FACTORS}
  read_x = _read({f: p[0] for f, p in probs.items()}, confidence)
  read_test = _read({f: p[1] for f, p in probs.items()}, confidence)
  reads_floor = [_read({f: p[2][np.searchsorted(used, idx)] for f, p in probs.items()},
                       confidence) for idx in floor_idx]
  truth = reader_dataset(test_set, "rotation").labels
  out = {}
  for factor in FACTORS:
    k = len(_class_names(factor))
    data_hist = _histogram(read_test[factor], k)
    hist = _histogram(read_x[factor], k)
    tv = lambda h: 0.5 * float(np.abs(h - data_hist).sum())
    floor = _mean_std([tv(_histogram(r[factor], k)) for r in reads_floor])
    true = truth if factor == "rotation" else test_set.factors[factor]
    _, confident, applies = read_x[factor]
    out[factor] = {
        "classes": list(_class_names(factor)), "histogram": hist.tolist(),
        "data_histogram": data_hist.tolist(),
        "true_histogram": (np.bincount(true, minlength=k) / len(true)).tolist(),
        "tv": tv(hist), "tv_floor": floor[0], "tv_floor_std": floor[1],
        "confident_fraction": float(confident[applies].mean()) if applies.any() else None,
        "reader_test_accuracy": factor_readers[factor].test_accuracy,
    }
  valid_floor = _mean_std([_valid(r).mean() for r in reads_floor])
  return {"factors": out, "valid_fraction": float(_valid(read_x).mean()),
          "valid_fraction_floor": valid_floor[0], "valid_fraction_floor_std": valid_floor[1]}
