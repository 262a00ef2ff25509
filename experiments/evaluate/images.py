"""Sample quality of an image model, each distance next to its floor: the data against itself.

``evaluate(draw, train_set, test_set, ...)`` draws ``num_samples`` images through the runner's
sharded sampler and scores them in every feature space of ``feature_fns`` (a strategy: a callable
from (N, H, W, C) model-space images to (N, D) features):

- ``pixels``: the flattened images (``pixel_features``);
- ``features``: the penultimate layer of the evaluation classifier trained in the repo on the same
  data with a fixed seed (experiments/classifier.py; its test accuracy is in the summary);
- ``inception``: pool3 of the FID Inception-v3 from a weights file the user supplies
  (``inception_features(path)``).

Per space: the Frechet distance (``fd_<space>``), KID (``kid_<space>``) and k-NN precision / recall
against the held-out (test) set. Under the classifier: the share of samples classified with
p > 0.9, the entropy of the predicted classes in bits, their histogram, the classifier's Inception
Score (``classifier_score``); and a nearest-neighbour copy check against the training set in
pixel space. Every score but the histogram comes with a floor.

The floors. The model's samples are compared with the whole test set (m images). The floor is the
same distance between ``num_floor_splits`` random subsets of the training set, each of the SAME size
n as the scored samples (drawn without replacement; with replacement only when n exceeds the
training set, flagged in the summary), and that same test set: ``<metric>_floor`` is the mean over
splits and ``<metric>_floor_std`` the std (ddof = 1). Sizes must match because the Frechet
distance of n samples is biased upwards by O(D / n) (Chong & Forsyth 2020): only FD(model, test)
and FD(train_n, test) at one n and one test set are comparable. The spread is over the choice of
training images, conditional on the test set that both sides share; subsets of one finite
training set overlap, so the spread shrinks as n approaches its size (``floor_subset_fraction``
says how close). A model that draws new images from the data's law scores about the floor.
(The classifier has seen the training images; the samples and the test set it has not. On digits,
with a classifier trained on 900 of the 1,500 training images, the feature FD against the test set
of 297 images it was trained on, 2.61 +- 0.61, matched that of 297 it was not, 2.51 +- 0.63: seen
images do not inflate the feature floor.)
The class scores' floors (confidence, entropy, classifier score) are those of the test set
resampled with replacement to n: the classifier is more confident on images it was trained on,
and the plug-in entropy is biased low by about (K - 1) / (2 n ln 2) bits, so n must match. The
copy check's floor splits the test set in random halves and scores one half against the
threshold set by the other: about percentile / 100 by construction, with its spread.

Samples are first mapped to the data's representation: with ``quantize=True`` (default, for data
of ``num_levels`` integer levels) each pixel goes to its dequantisation cell's centre,
x = -1 + 2 (k + 1/2) / L with k = clip(floor((x + 1) L / 2), 0, L - 1), exactly how the data are
given to the model, so pixel statistics compare like with like. Samples with non-finite pixels
are not scored (``num_nonfinite``); the others are, with the floors at their number.
"""

from __future__ import annotations

import pathlib
from typing import Callable, Mapping

import numpy as np

from diffusion_jax import metrics
from diffusion_jax.data import levels_to_model, model_to_levels, to_grid

FeatureFn = Callable[[np.ndarray], np.ndarray]


def pixel_features(x) -> np.ndarray:
  """The raw-pixel strategy: (N, H, W, C) -> (N, H W C)."""
  x = np.asarray(x, np.float32)
  return x.reshape(x.shape[0], -1)


def inception_features(weights_path, *, batch_size: int = 50) -> FeatureFn:
  """The Inception strategy: pool3 (N, 2048) of the FID Inception-v3 from a user-supplied weights
  file (pytorch-fid's .pth or the JAX FID ports' pickle; no package ships them).

  The returned object also has ``logits`` (N, 1008), which ``evaluate`` turns into the Inception
  Score.
  """
  from diffusion_jax.nets import inception
  from experiments.evaluate import inception_weights

  return inception.InceptionFeatures(inception_weights.load(weights_path), batch_size=batch_size)


def feature_strategies(classifier=None, inception_weights_path=None) -> dict[str, FeatureFn]:
  """{"pixels", "features" (the classifier's penultimate layer, when given), "inception" (when a
  weights path is given)}."""
  fns = {"pixels": pixel_features}
  if classifier is not None:
    fns["features"] = classifier.features
  if inception_weights_path is not None:
    fns["inception"] = inception_features(inception_weights_path)
  return fns


def to_cell_centres(x, num_levels: int) -> np.ndarray:
  """x -> -1 + 2 (k + 1/2) / L, k = clip(floor((x + 1) L / 2), 0, L - 1): the data's representation
  (``levels_to_model(model_to_levels(x))``, the dequantisation cells' centres)."""
  x = np.asarray(x, np.float32)
  return np.asarray(levels_to_model(model_to_levels(x, num_levels), num_levels), np.float32)


def _mean_std(values) -> tuple[float, float]:
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def _space_scores(name: str, f_samples, f_train, f_test, floor_idx, *, kid_subsets: int,
                  kid_subset_size: int, pr_k: int, seed: int) -> dict:
  """FD, KID, precision / recall of samples vs test in one feature space, with their floors."""
  n, m = f_samples.shape[0], f_test.shape[0]
  subset = min(kid_subset_size, n, m)

  def scores(fake):
    kid_mean, _ = metrics.kid(fake, f_test, num_subsets=kid_subsets, subset_size=subset, seed=seed)
    precision, recall = metrics.precision_recall(f_test, fake, k=pr_k)
    return {"fd": metrics.fd(fake, f_test), "kid": kid_mean, "precision": precision,
            "recall": recall}

  model = scores(f_samples)
  floors = [scores(f_train[idx]) for idx in floor_idx]
  out = {}
  for metric, value in model.items():
    mean, std = _mean_std([f[metric] for f in floors])
    out.update({f"{metric}_{name}": value, f"{metric}_{name}_floor": mean,
                f"{metric}_{name}_floor_std": std})
  out[f"fd_{name}_ratio"] = model["fd"] / out[f"fd_{name}_floor"] if out[f"fd_{name}_floor"] > 0 \
      else None
  out[f"fd_{name}_floor_plus_std"] = out[f"fd_{name}_floor"] + out[f"fd_{name}_floor_std"]
  out[f"kid_{name}_subset_size"] = subset
  return out


def _class_scores(probs: np.ndarray, confidence: float) -> dict:
  return {
      "confident_fraction": metrics.confident_fraction(probs, confidence),
      "class_entropy_bits": metrics.class_entropy_bits(probs),
      "classifier_score": metrics.inception_score(probs, min(10, probs.shape[0]))[0],
  }


def _with_floor(model: dict, floors: list[dict]) -> dict:
  out = dict(model)
  for metric in model:
    out[f"{metric}_floor"], out[f"{metric}_floor_std"] = _mean_std([f[metric] for f in floors])
  return out


def _copy_check(x, train, test, percentile: float, num_splits: int, rng) -> dict:
  """The copy check, and its floor: held-out images scored against a threshold set by the others.

  Floor: split the test set in random halves A, B; the share of B's nearest-training-image
  distances below the ``percentile`` of A's is what a model drawing new images scores (about
  percentile / 100, with the spread of n = |B| images).
  """
  out = metrics.copy_fraction(pixel_features(x), pixel_features(train), pixel_features(test),
                              percentile=percentile)
  d_test = metrics.nearest_neighbor_distances(pixel_features(test), pixel_features(train))
  floors = []
  for _ in range(num_splits):
    order = rng.permutation(d_test.shape[0])
    half = d_test.shape[0] // 2
    tau = np.percentile(d_test[order[:half]], percentile)
    floors.append(float(np.mean(d_test[order[half:]] < tau)))
  out["copy_fraction_floor"], out["copy_fraction_floor_std"] = _mean_std(floors)
  return out


def evaluate(draw, train_set, test_set, *, feature_fns: Mapping[str, FeatureFn], num_samples: int,
             num_floor_splits: int = 10, classifier=None, num_classes: int = 0, seed: int = 0,
             quantize: bool = True, kid_subsets: int = 50, kid_subset_size: int = 1000,
             pr_k: int = 3, confidence: float = 0.9, copy_percentile: float = 5.0,
             primary: str | None = None) -> tuple[dict, dict]:
  """Draw ``num_samples`` images with ``draw(num, cond) -> {"x": (num, H, W, C), "nfe": ...}`` and
  score them against ``test_set`` next to the train-vs-test floor (module docstring).

  ``classifier``: a ``TrainedClassifier`` (``probs``, ``test_accuracy``) for the class metrics.
  ``num_classes`` K > 0: a class-conditional draw with labels 0..K-1 in turn (cond int32 (num,)),
  and ``label_accuracy`` = the share of samples the classifier reads as their label. ``primary``
  names the feature space whose KID / precision / recall are also reported unsuffixed (``kid``,
  ``precision``, ``recall``); default "inception", else "features", else "pixels".

  Returns (summary, plot data {"samples", "labels", "reference"}).
  """
  if not feature_fns:
    raise ValueError("feature_fns must name at least one feature strategy, e.g. "
                     "{'pixels': pixel_features}.")
  if not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
    raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}.")
  if not isinstance(num_floor_splits, (int, np.integer)) or num_floor_splits < 1:
    raise ValueError(f"num_floor_splits must be an int >= 1, got {num_floor_splits!r}.")
  primary = primary or next(p for p in ("inception", "features", *feature_fns) if p in feature_fns)
  if primary not in feature_fns:
    raise ValueError(f"primary must be one of the feature spaces {sorted(feature_fns)}, got "
                     f"{primary!r}.")
  train = np.asarray(train_set.to_model(), np.float32)
  test = np.asarray(test_set.to_model(), np.float32)
  labels = (np.arange(num_samples) % num_classes).astype(np.int32) if num_classes else None
  drawn = draw(num_samples, labels)
  x = np.asarray(drawn["x"], np.float32)
  if x.shape != (num_samples, *train.shape[1:]):
    raise ValueError(f"draw must return x of shape {(num_samples, *train.shape[1:])} (the data's "
                     f"image shape), got {x.shape}.")
  finite = np.isfinite(x.reshape(num_samples, -1)).all(axis=1)
  x, kept_labels = x[finite], None if labels is None else labels[finite]
  num_levels = getattr(train_set, "num_levels", None)
  if quantize and num_levels:
    x = to_cell_centres(x, num_levels)
  n = x.shape[0]
  summary = {
      "num_samples": int(num_samples), "num_scored": int(n),
      "num_nonfinite": int(num_samples - n), "nfe_mean": float(np.mean(drawn["nfe"])),
      "classifier_test_accuracy": None if classifier is None else classifier.test_accuracy,
      "reference": "test set", "reference_size": int(test.shape[0]),
      "train_size": int(train.shape[0]), "quantized": bool(quantize and num_levels),
      "floor_splits": int(num_floor_splits), "floor_subset_fraction": n / train.shape[0],
      "floor_with_replacement": n > train.shape[0], "primary_features": primary,
  }
  plot_data = {"samples": x, "labels": kept_labels, "reference": test}
  if n < max(pr_k + 1, 2):
    return summary, plot_data  # too few finite samples to score anything

  rng = np.random.default_rng(seed)
  floor_idx = [rng.choice(train.shape[0], n, replace=n > train.shape[0])
               for _ in range(num_floor_splits)]
  for name, fn in feature_fns.items():
    f_samples, f_train, f_test = (np.asarray(fn(a), np.float64) for a in (x, train, test))
    summary.update(_space_scores(name, f_samples, f_train, f_test, floor_idx,
                                 kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                                 pr_k=pr_k, seed=seed))
    logits = getattr(fn, "logits", None)
    if name == "inception" and logits is not None:
      probs = _softmax(logits(x))
      summary["inception_score"], summary["inception_score_std"] = metrics.inception_score(
          probs, min(10, n))
  for metric in ("kid", "precision", "recall"):
    for suffix in ("", "_floor", "_floor_std"):
      summary[metric + suffix] = summary[f"{metric}_{primary}{suffix}"]

  if classifier is not None:
    # The data's level at the same n: held-out images, which the classifier has not seen (on its
    # training images it is more confident), resampled with replacement to n.
    probs, test_probs = classifier.probs(x), classifier.probs(test)
    resampled = [test_probs[rng.choice(test.shape[0], n)] for _ in range(num_floor_splits)]
    summary.update(_with_floor(_class_scores(probs, confidence),
                               [_class_scores(p, confidence) for p in resampled]))
    summary["class_histogram"] = metrics.class_histogram(probs).tolist()
    if kept_labels is not None:
      summary["label_accuracy"] = float(np.mean(probs.argmax(axis=1) == kept_labels))
  summary.update(_copy_check(x, train, test, copy_percentile, num_floor_splits, rng))
  return summary, plot_data


def _softmax(logits) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def tile(images: np.ndarray, ncols: int) -> np.ndarray:
  """(N, H, W, C) in [-1, 1] -> one mosaic in [0, 1], ``ncols`` images a row, white 1-px gaps."""
  pictures = np.clip((np.nan_to_num(images, nan=-1.0) + 1.0) / 2.0, 0.0, 1.0)
  return to_grid(pictures.astype(np.float32), ncols, padding=1, pad_value=1.0)


def _save_mosaic(path, grid: np.ndarray, title: str, row_labels=None, row_height=None) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  height, width = grid.shape[:2]
  scale = 8.0 / max(height, width)
  fig, ax = plt.subplots(figsize=(max(width * scale, 3.0) + (1.0 if row_labels else 0.0),
                                  height * scale + 0.6))
  if grid.shape[-1] == 1:
    ax.imshow(grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  else:
    ax.imshow(grid, interpolation="nearest")
  ax.set_xticks([])
  if row_labels:
    ax.set_yticks([1 + row_height / 2 + i * (row_height + 1) for i in range(len(row_labels))])
    ax.set_yticklabels(row_labels)
  else:
    ax.set_yticks([])
  ax.set_title(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save_grid(path, images, *, title: str, ncols: int | None = None) -> None:
  """A PNG grid of model-space images (N, H, W, C) in [-1, 1] under a title; NaN pixels black."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be a non-empty NHWC batch with 1 or 3 channels, got shape "
                     f"{images.shape}.")
  ncols = ncols or int(np.ceil(np.sqrt(images.shape[0])))
  _save_mosaic(path, tile(images, ncols), title)


def save_class_grid(path, images, labels, *, title: str, per_class: int = 10,
                    class_names=None) -> None:
  """A PNG grid with one labelled row per class: the first ``per_class`` images of each label."""
  images, labels = np.asarray(images, np.float32), np.asarray(labels)
  if images.ndim != 4 or labels.shape != images.shape[:1]:
    raise ValueError(f"images must be NHWC and labels (N,), got {images.shape} and {labels.shape}.")
  classes = np.unique(labels)
  h, w, c = images.shape[1:]
  rows = []
  for k in classes:
    chosen = images[labels == k][:per_class]
    pad = np.full((per_class - chosen.shape[0], h, w, c), -1.0, np.float32)  # short rows: blank
    rows.append(np.concatenate([chosen, pad]))
  names = [str(class_names[k]) if class_names is not None else f"class {k}" for k in classes]
  _save_mosaic(path, tile(np.concatenate(rows), per_class), title, names, h)
