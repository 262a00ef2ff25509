"""Improved precision and recall of a generative model from k-nearest-neighbour balls.

    precision = (1/M) sum_j 1[exists i: |f_j - r_i| <= d_k(r_i; R)]
    recall    = (1/N) sum_i 1[exists j: |r_i - f_j| <= d_k(f_j; F)]

d_k(a; A) is the distance from a to its k-th nearest neighbour in A other than itself: the union of
those balls estimates the support of each distribution (Kynkaanniemi et al. 2019, Eq. 1-3, k = 3).
Precision: the share of generated samples inside the real manifold (fidelity); recall: the share of
real samples inside the generated manifold (coverage). Host NumPy float64, blocked over rows.
"""

from __future__ import annotations

import numpy as np

from diffusion_jax.metrics._host import (as_features, check_int, check_same_dim,
                                         squared_distance_blocks)


def knn_radii(x, k: int = 3) -> np.ndarray:
  """d_k(x_i; X): the distance from each row to its k-th nearest other row (self excluded), (n,)."""
  x = as_features("x", x)
  k = check_int("k", k)
  if k >= x.shape[0]:
    raise ValueError(f"k must be < the number of samples {x.shape[0]}, got {k}.")
  radii = np.empty(x.shape[0])
  for start, sq in squared_distance_blocks(x, x):
    # The row's own distance (0) is the smallest, so the k-th other neighbour is entry k.
    rows = np.arange(sq.shape[0])
    sq[rows, start + rows] = 0.0
    radii[start:start + sq.shape[0]] = np.sqrt(np.partition(sq, k, axis=1)[:, k])
  return radii


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
  """1[exists i: |p - c_i| <= r_i] for each point."""
  out = np.empty(points.shape[0], bool)
  sq_radii = radii**2
  for start, sq in squared_distance_blocks(points, centres):
    out[start:start + sq.shape[0]] = (sq <= sq_radii[None, :]).any(axis=1)
  return out


def precision_recall(real, fake, *, k: int = 3) -> tuple[float, float]:
  """(precision, recall) of ``fake`` (M, D) against ``real`` (N, D) by k-NN balls
  (Kynkaanniemi et al. 2019, Eq. 1-3)."""
  real, fake = as_features("real", real), as_features("fake", fake)
  check_same_dim(real, fake, ("real", "fake"))
  precision = _inside(fake, real, knn_radii(real, k)).mean()
  recall = _inside(real, fake, knn_radii(fake, k)).mean()
  return float(precision), float(recall)
