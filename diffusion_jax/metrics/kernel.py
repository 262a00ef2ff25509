"""Kernel Inception Distance: the unbiased squared MMD with the cubic polynomial kernel.

    k(a, b) = (a.b / D + 1)^3,
    MMD_u^2 = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2

averaged over random subsets of size m of each set (Binkowski et al. 2018, "Demystifying MMD
GANs", Sec. 4 and App. D). Unlike the Frechet distance, the estimate is unbiased whatever m: its
expectation is the population MMD^2, so two sets from one law score about 0 (and can score below
it). Host NumPy float64, like the Frechet distance.
"""

from __future__ import annotations

import numpy as np

from diffusion_jax.metrics._host import as_features, check_int, check_same_dim


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(a, b) = (a.b / D + 1)^3 for every row pair: (n, m) (Binkowski et al. 2018, Eq. 9)."""
  k = x @ y.T / x.shape[1] + 1.0
  return k * k * k  # two products: several times faster than a float power


def mmd2_unbiased(x, y) -> float:
  """The unbiased MMD^2 between two sets of equal size m with the cubic polynomial kernel
  (Gretton et al. 2012, Eq. 3 with the cross term over all m^2 pairs, as Binkowski et al. 2018)."""
  x, y = as_features("x", x), as_features("y", y)
  check_same_dim(x, y)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"x and y must have the same number of rows m, got {x.shape[0]} and "
                     f"{y.shape[0]}.")
  return _mmd2_unbiased(x, y)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  m = x.shape[0]
  kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
  return float(within - 2.0 * kxy.sum() / m**2)


def kid(x, y, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
        ) -> tuple[float, float]:
  """(mean, std) over ``num_subsets`` draws of the unbiased MMD^2 (cubic kernel) between subsets
  of ``subset_size`` rows of x and of y, each drawn without replacement (Binkowski et al. 2018).

  The subsets come from ``np.random.default_rng(seed)``. The mean over subsets is itself an
  unbiased estimate of MMD^2 and its expectation over subsets is exactly the full-set U-statistic.
  ``subset_size`` must not exceed either set's size; when it equals both, every subset is a
  permutation of the sets and the full-set value is returned once, with std 0.
  """
  x, y = as_features("x", x), as_features("y", y)
  check_same_dim(x, y)
  num_subsets = check_int("num_subsets", num_subsets)
  subset_size = check_int("subset_size", subset_size, minimum=2)
  if subset_size > min(x.shape[0], y.shape[0]):
    raise ValueError(f"subset_size must be <= the size of both sets ({x.shape[0]}, {y.shape[0]}), "
                     f"got {subset_size}.")
  if subset_size == x.shape[0] == y.shape[0]:
    return _mmd2_unbiased(x, y), 0.0
  rng = np.random.default_rng(seed)
  values = np.empty(num_subsets)
  for s in range(num_subsets):
    ix = rng.choice(x.shape[0], subset_size, replace=False)
    iy = rng.choice(y.shape[0], subset_size, replace=False)
    values[s] = _mmd2_unbiased(x[ix], y[iy])
  return float(values.mean()), float(values.std(ddof=1)) if num_subsets > 1 else 0.0
