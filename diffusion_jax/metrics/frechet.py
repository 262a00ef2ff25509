"""Frechet distance between Gaussians fitted to feature sets (FID with Inception's features).

    d^2 = |mu_1 - mu_2|^2 + tr(C_1) + tr(C_2) - 2 tr((C_1^{1/2} C_2 C_1^{1/2})^{1/2})

(Frechet 1957; Dowson & Landau 1982; Heusel et al. 2017). Computed on the host in float64: the
result is a difference of traces of size O(D var) that, at the train-vs-test floor, can be a
thousandth of them, and a float32 eigendecomposition of a (D, D) covariance (D up to 2048) loses
that to rounding. It runs once per evaluation, so the host's cost (O(D^3)) does not matter.

The matrix square root goes through two symmetric eigendecompositions, never a general ``sqrtm``:
tr sqrt(C_1 C_2) = tr sqrt(C_1^{1/2} C_2 C_1^{1/2}), and the matrix inside is symmetric positive
semi-definite, so its eigenvalues are real and >= 0 up to rounding (clipped at 0). This is exact
for singular covariances (fewer samples than dimensions), where scipy's Schur-based ``sqrtm``
returns complex parts and pytorch-fid adds an eps offset to the diagonal.

The estimate from n samples is biased upwards by O(D / n) (Chong & Forsyth 2020): compare FDs only
at equal sample sizes, which is what the floors of experiments/evaluate/images.py do.
"""

from __future__ import annotations

import numpy as np

from diffusion_jax.metrics._host import as_features, check_same_dim


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """(mu, C): the sample mean (D,) and the unbiased sample covariance (D, D), ddof = 1, float64."""
  x = as_features("features", features)
  mu = x.mean(axis=0)
  centred = x - mu
  return mu, centred.T @ centred / (x.shape[0] - 1)


def _check_stats(name: str, mu, cov) -> tuple[np.ndarray, np.ndarray]:
  mu, cov = np.asarray(mu, np.float64), np.asarray(cov, np.float64)
  if mu.ndim != 1 or cov.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"mu{name} must have shape (D,) and cov{name} shape (D, D), got "
                     f"{mu.shape} and {cov.shape}.")
  if not (np.isfinite(mu).all() and np.isfinite(cov).all()):
    raise ValueError(f"mu{name} and cov{name} must be finite.")
  scale = max(np.abs(cov).max(), np.finfo(np.float64).tiny)
  if np.abs(cov - cov.T).max() > 1e-6 * scale:  # covariances are symmetric up to rounding
    raise ValueError(f"cov{name} must be a symmetric (D, D) covariance matrix.")
  return mu, 0.5 * (cov + cov.T)


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(cov)
  return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2):
  |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^{1/2} C2 C1^{1/2})^{1/2}) (Dowson & Landau 1982).

  Like FID (Heusel et al. 2017), this is the squared distance; it is >= 0 exactly (rounding is
  clipped at 0).
  """
  mu1, cov1 = _check_stats("1", mu1, cov1)
  mu2, cov2 = _check_stats("2", mu2, cov2)
  if mu1.shape != mu2.shape:
    raise ValueError(f"the two Gaussians must have the same dimension, got mu1 {mu1.shape} and "
                     f"mu2 {mu2.shape}.")
  root1 = _psd_sqrt(cov1)
  inner = root1 @ cov2 @ root1
  eig = np.linalg.eigvalsh(0.5 * (inner + inner.T))
  trace_cross = np.sum(np.sqrt(np.maximum(eig, 0.0)))
  diff = mu1 - mu2
  value = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_cross
  return float(max(value, 0.0))


def fd(x_features, y_features) -> float:
  """Frechet distance between Gaussians fitted to two feature sets (n, D) and (m, D) (Heusel et al.
  2017): ``frechet_distance(*gaussian_stats(x), *gaussian_stats(y))``."""
  x = as_features("x_features", x_features)
  y = as_features("y_features", y_features)
  check_same_dim(x, y, ("x_features", "y_features"))
  return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
