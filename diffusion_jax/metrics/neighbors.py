"""Nearest-neighbour distances, for the check that a model does not copy its training set.

A sample is flagged as a copy when it lies nearer to some training image than the q-th percentile
(q = 5) of the held-out images' own nearest-training-image distances: genuinely new images from
the data's law fall that close to a training image only q% of the time (the memorisation test of
the nearest-neighbour kind used by e.g. Somepalli et al. 2023 and Carlini et al. 2023, with a
threshold calibrated on held-out data instead of a fixed one).
"""

from __future__ import annotations

import numpy as np

from diffusion_jax.metrics._host import as_features, check_same_dim, squared_distance_blocks


def nearest_neighbor_distances(x, y) -> np.ndarray:
  """min_j |x_i - y_j| for each row of x, (n,): Euclidean, float64."""
  x, y = as_features("x", x, min_rows=1), as_features("y", y, min_rows=1)
  check_same_dim(x, y)
  out = np.empty(x.shape[0])
  for start, sq in squared_distance_blocks(x, y):
    out[start:start + sq.shape[0]] = np.sqrt(sq.min(axis=1))
  return out


def copy_fraction(samples, train, held_out, *, percentile: float = 5.0) -> dict:
  """Share of samples with min_j |s - train_j| < tau, tau = the ``percentile``-th percentile of
  min_j |h - train_j| over held-out images h.

  Returns {"copy_fraction", "copy_threshold", "sample_nn_median", "held_out_nn_median"}; a model
  that draws new images from the data's law scores about percentile / 100.
  """
  if not 0.0 < percentile < 100.0:
    raise ValueError(f"percentile must lie in (0, 100), got {percentile!r}.")
  samples = as_features("samples", samples, min_rows=1)
  train = as_features("train", train, min_rows=1)
  held_out = as_features("held_out", held_out, min_rows=1)
  check_same_dim(samples, train, ("samples", "train"))
  check_same_dim(held_out, train, ("held_out", "train"))
  d_held = nearest_neighbor_distances(held_out, train)
  d_samples = nearest_neighbor_distances(samples, train)
  tau = float(np.percentile(d_held, percentile))
  return {"copy_fraction": float(np.mean(d_samples < tau)), "copy_threshold": tau,
          "sample_nn_median": float(np.median(d_samples)),
          "held_out_nn_median": float(np.median(d_held))}
