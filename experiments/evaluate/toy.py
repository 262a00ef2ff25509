"""Two-sample evaluation of generated toy data against exact draws, written once.

One reference convention everywhere (end of training and --mode=sample): the model's samples and
``floor_repeats`` fresh exact draws of the same size are each compared with ONE reference set of
exact draws (all from the evaluation key). The floor band of a distance is the mean + 3 std of
the exact-vs-exact values: an exact sampler's distance is a draw from that same distribution, so it
lies inside the band with probability about 0.99.

A class-conditional model (``num_classes`` K > 0, labels = mixture components) is evaluated per
class from one sharded draw that holds every class and the null label K side by side: class k's
samples against exact draws of component k, the null label's against the whole mixture.
"""

from __future__ import annotations

import pathlib

import jax.random as jr
import numpy as np

from diffusion_jax import metrics as metrics_lib
from diffusion_jax.analytic import GaussianMixture

DISTANCES = ("energy_distance", "mmd", "sliced_w1")


def two_sample_distances(x: np.ndarray, y: np.ndarray, key, *, mmd_bandwidth: float,
                         num_projections: int) -> dict:
  """Energy distance, squared MMD (RBF) and sliced W1 between sample sets x and y."""
  return {
      "energy_distance": float(metrics_lib.energy_distance(x, y)),
      "mmd": float(metrics_lib.mmd_rbf(x, y, bandwidth=mmd_bandwidth)),
      "sliced_w1": float(metrics_lib.sliced_wasserstein(x, y, key, num_projections=num_projections)),
  }


def floor_band_hi(values) -> float:
  """mean + 3 std (ddof = 1) of exact-vs-exact distances; with one value, that value."""
  values = np.asarray(values, float)
  return float(values.mean() + 3 * values.std(ddof=1)) if values.size > 1 else float(values.max())


def compare(samples: np.ndarray, exact_fn, key, *, floor_repeats: int, mmd_bandwidth: float,
            num_projections: int) -> dict:
  """``samples`` against exact draws ``exact_fn(key, n)``, next to the exact-vs-exact floor band.

  Returns (summary, the reference set).

  Non-finite samples are not scored (a distance of a NaN set means nothing): the distances are
  then None and ``num_nonfinite_samples`` says why.
  """
  samples = np.asarray(samples)
  num = samples.shape[0]
  nonfinite = int(np.sum(~np.isfinite(samples.reshape(num, -1)).all(axis=1)))
  ref_key, fresh_key, proj_key = jr.split(key, 3)
  reference = np.asarray(exact_fn(ref_key, num))
  kwargs = dict(mmd_bandwidth=mmd_bandwidth, num_projections=num_projections)
  floors = [two_sample_distances(np.asarray(exact_fn(k, num)), reference, proj_key, **kwargs)
            for k in jr.split(fresh_key, floor_repeats)]
  floor = {k: float(np.mean([f[k] for f in floors])) for k in DISTANCES}
  band = {k: floor_band_hi([f[k] for f in floors]) for k in DISTANCES}
  out = {
      "num_samples": num,
      "num_nonfinite_samples": nonfinite,
      "data_vs_data": floor,
      "data_vs_data_std": {k: float(np.std([f[k] for f in floors], ddof=1)) if len(floors) > 1
                           else 0.0 for k in DISTANCES},
      "floor_band_hi": band,
      "floor_repeats": len(floors),
  }
  if nonfinite:
    out["model_vs_data"] = None
    out["within_floor_band"] = None
    return out, reference
  model = two_sample_distances(samples, reference, proj_key, **kwargs)
  out["model_vs_data"] = model
  out["within_floor_band"] = {k: model[k] <= band[k] for k in DISTANCES}
  # Energy distance and MMD are unbiased: their floor scatters around 0, so the ratio is given
  # only where the floor is positive (sliced W1).
  out["ratio_to_floor"] = {k: model[k] / floor[k] if floor[k] > 0 else None for k in DISTANCES}
  return out, reference


def _component(mixture: GaussianMixture, k: int) -> GaussianMixture:
  return GaussianMixture.create([1.0], mixture.means[k:k + 1], mixture.variances[k:k + 1])


def evaluate(draw, dataset, key, *, num_samples: int, floor_repeats: int, mmd_bandwidth: float,
             num_projections: int, num_classes: int = 0) -> tuple[dict, dict]:
  """Sample through ``draw(num, cond) -> {"x", ...}`` and compare with exact draws.

  Returns (summary, plot data {"samples", "reference"[, "labels"]}). ``num_classes`` K > 0: cond
  is an int32 label per example, class k = mixture component k, K = the null label.
  """
  kwargs = dict(floor_repeats=floor_repeats, mmd_bandwidth=mmd_bandwidth,
                num_projections=num_projections)
  if not num_classes:
    drawn = draw(num_samples, None)
    result = compare(drawn["x"], dataset.sample, key, **kwargs)
    summary, reference = result
    return {**summary, "nfe_mean": float(np.mean(drawn["nfe"]))}, {
        "samples": drawn["x"], "reference": reference}
  mixture = getattr(dataset, "mixture", None)
  if mixture is None or mixture.weights.shape[0] != num_classes:
    raise ValueError(f"a class-conditional evaluation needs data whose law is a mixture with one "
                     f"component per class (num_classes={num_classes}); got {type(dataset).__name__}.")
  labels = np.repeat(np.arange(num_classes + 1, dtype=np.int32), num_samples)
  drawn = draw(labels.size, labels)  # every class and the null label in one sharded draw
  classes, class_keys = {}, jr.split(key, num_classes + 1)
  for k in range(num_classes):
    classes[str(k)], _ = compare(drawn["x"][labels == k], _component(mixture, k).sample,
                                 class_keys[k], **kwargs)
    classes[str(k)]["weight"] = float(mixture.weights[k])
  unconditional, reference = compare(drawn["x"][labels == num_classes], dataset.sample,
                                     class_keys[num_classes], **kwargs)
  verdicts = [c["within_floor_band"] for c in [*classes.values(), unconditional]]
  summary = {
      "num_samples_per_class": num_samples, "num_classes": num_classes,
      "classes": classes, "unconditional": unconditional,
      "every_class_within_energy_floor_band": all(
          v is not None and v["energy_distance"] for v in verdicts),
      "nfe_mean": float(np.mean(drawn["nfe"])),
  }
  return summary, {"samples": drawn["x"], "labels": labels, "reference": reference}


def plot_samples(path: pathlib.Path, model_samples: np.ndarray, data_samples: np.ndarray,
                 title: str, labels: np.ndarray | None = None) -> None:
  """Data (left) and model samples over data (right), first two coordinates; colours by label."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  finite = np.isfinite(model_samples).all(axis=1)
  model_samples = model_samples[finite][:, :2]
  labels = None if labels is None else labels[finite]
  data_samples = data_samples[:, :2]
  both = np.concatenate([model_samples, data_samples])
  lo, hi = np.percentile(both, 0.5, axis=0), np.percentile(both, 99.5, axis=0)
  pad = 0.1 * (hi - lo)
  fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
  axes[0].scatter(*data_samples.T, s=2, c="tab:gray", alpha=0.5)
  axes[0].set_title("data")
  axes[1].scatter(*data_samples.T, s=2, c="tab:gray", alpha=0.25, label="data")
  if labels is None:
    axes[1].scatter(*model_samples.T, s=2, c="tab:blue", alpha=0.6, label="model (EMA)")
  else:
    for k in np.unique(labels):
      name = "null label" if k == labels.max() else f"class {k}"
      axes[1].scatter(*model_samples[labels == k].T, s=2, alpha=0.6, label=f"model, {name}")
  axes[1].set_title(title)
  axes[1].legend(loc="upper right", markerscale=4)
  for ax in axes:
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_aspect("equal")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
