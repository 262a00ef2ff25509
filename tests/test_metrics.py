"""Two-sample distances against slow NumPy/SciPy references."""

import jax.random as jr
import numpy as np
import pytest
from scipy import stats

from diffusion_jax import metrics


def _samples(n, m, d, shift=0.0, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), (rng.normal(size=(m, d)) + shift).astype(
      np.float32)


def _energy_reference(x, y):
  x, y = x.astype(np.float64), y.astype(np.float64)
  d = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)
  n, m = len(x), len(y)
  return 2 * d(x, y).mean() - d(x, x).sum() / (n * (n - 1)) - d(y, y).sum() / (m * (m - 1))


def _mmd_reference(x, y, h):
  x, y = x.astype(np.float64), y.astype(np.float64)
  k = lambda a, b: np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / (2 * h**2))
  n, m = len(x), len(y)
  kxx, kyy = k(x, x), k(y, y)
  return ((kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * k(x, y).mean())


@pytest.mark.parametrize("n, m", [(50, 40), (1500, 1100)])  # 1500 crosses the 1024-row block
def test_energy_distance_and_mmd_match_loops(n, m):
  x, y = _samples(n, m, 3, shift=0.3)
  # float32 sums of ~1e6 distances of size ~2 against float64: relative 1e-4.
  np.testing.assert_allclose(metrics.energy_distance(x, y), _energy_reference(x, y), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(metrics.mmd_rbf(x, y, 1.5), _mmd_reference(x, y, 1.5), rtol=1e-3,
                             atol=1e-6)


def test_sliced_wasserstein_in_1d_is_wasserstein():
  x, y = _samples(2000, 2000, 1, shift=0.5)
  # In 1-D every unit direction is +-1, so the sliced distance is W1 itself.
  ours = float(metrics.sliced_wasserstein(x, y, jr.key(0), num_projections=8))
  np.testing.assert_allclose(ours, stats.wasserstein_distance(x[:, 0], y[:, 0]), rtol=1e-4)
  # Unequal sizes: quantiles on a common grid of 3000 levels; W1 within one grid cell's mass.
  x2, y2 = _samples(3000, 1000, 1, shift=0.5, seed=1)
  ours2 = float(metrics.sliced_wasserstein(x2, y2, jr.key(0), num_projections=8))
  np.testing.assert_allclose(ours2, stats.wasserstein_distance(x2[:, 0], y2[:, 0]), rtol=2e-2)


def test_distances_separate_distributions():
  same_x, same_y = _samples(2000, 2000, 2, shift=0.0, seed=2)
  diff_x, diff_y = _samples(2000, 2000, 2, shift=0.5, seed=2)
  assert metrics.energy_distance(diff_x, diff_y) > 10 * abs(metrics.energy_distance(same_x, same_y))
  k = jr.key(1)
  assert metrics.sliced_wasserstein(diff_x, diff_y, k) > 3 * metrics.sliced_wasserstein(same_x,
                                                                                        same_y, k)


def test_bad_shapes():
  with pytest.raises(ValueError, match=r"x and y must have shapes \(n, D\) and \(m, D\)"):
    metrics.energy_distance(np.zeros((5, 2)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match="at least 2 samples"):
    metrics.mmd_rbf(np.zeros((1, 2)), np.zeros((5, 2)))
