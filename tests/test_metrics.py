"""Two-sample distances against slow NumPy/SciPy references."""

import jax
import jax.numpy as jnp
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


# --- bad input (issue #11): rejected at the boundary with the argument's name; NaN under jit -------

GOOD = _samples(20, 20, 2)
METRICS = {
    "energy": lambda x, y: metrics.energy_distance(x, y),
    "mmd": lambda x, y: metrics.mmd_rbf(x, y, 1.0),
    "sliced": lambda x, y: metrics.sliced_wasserstein(x, y, jr.key(0), num_projections=8),
}


@pytest.mark.parametrize("name", sorted(METRICS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_rejected(name, bad):
  x, y = GOOD
  one_bad = x.copy()
  one_bad[3, 1] = bad
  with pytest.raises(ValueError, match=r"x has 1 of 20 samples with non-finite"):
    METRICS[name](one_bad, y)
  with pytest.raises(ValueError, match=r"y has 20 of 20 samples with non-finite"):
    METRICS[name](x, np.full_like(y, bad))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_under_jit_a_non_finite_set_gives_nan(name):
  x, y = GOOD
  fn = jax.jit(METRICS[name])
  assert np.isfinite(float(fn(x, y)))
  # Today's defect: energy_distance of an all-NaN set was -1.68, a finite number below the floor.
  assert np.isnan(float(fn(jnp.full_like(x, jnp.nan), y)))
  assert np.isnan(float(fn(x, jnp.asarray(y).at[0, 0].set(jnp.inf))))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_empty_unbatched_and_mismatched_inputs(name):
  x, y = GOOD
  fn = METRICS[name]
  with pytest.raises(ValueError, match="x needs at least 2 samples, got 0"):
    fn(np.zeros((0, 2), np.float32), y)
  with pytest.raises(ValueError, match="y needs at least 2 samples, got 1"):
    fn(x, y[:1])
  with pytest.raises(ValueError, match=r"x must have shape \(num_samples, D\), got shape \(20,\)"):
    fn(x[:, 0], y)
  with pytest.raises(ValueError, match=r"y must have at least one dimension D >= 1"):
    fn(x, np.zeros((5, 0), np.float32))
  with pytest.raises(ValueError, match=r"x and y must have the same dimension D, got x \(20, 2\) "
                                       r"and y \(20, 3\)"):
    fn(x, np.zeros((20, 3), np.float32))
  with pytest.raises(ValueError, match="x must hold real numbers"):
    fn(x.astype(np.complex64), y)


def test_bandwidth_and_num_projections_are_checked():
  x, y = GOOD
  for bad in (0.0, -1.0, np.inf, np.nan, True, "1.0"):
    with pytest.raises(ValueError, match="bandwidth must be a finite float > 0"):
      metrics.mmd_rbf(x, y, bad)
  for bad in (0, -3, 2.0, True, None):
    with pytest.raises(ValueError, match="num_projections must be an int >= 1"):
      metrics.sliced_wasserstein(x, y, jr.key(0), num_projections=bad)
  with pytest.raises(ValueError, match="key must be a JAX PRNG key"):
    metrics.sliced_wasserstein(x, y, 0)
  # Legitimate variants are accepted: a NumPy integer count, an integer bandwidth, int samples.
  metrics.sliced_wasserstein(x, y, jr.key(0), num_projections=np.int64(4))
  np.testing.assert_allclose(metrics.mmd_rbf(x, y, 2), metrics.mmd_rbf(x, y, 2.0), rtol=1e-6)
  np.testing.assert_allclose(metrics.energy_distance(np.round(x * 10).astype(np.int32), y * 10),
                             metrics.energy_distance(np.round(x * 10), y * 10), rtol=1e-5)
