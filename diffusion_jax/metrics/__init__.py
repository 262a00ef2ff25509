"""Sample-quality metrics.

Two-sample distances on raw samples, in JAX (``two_sample``): energy distance, MMD, sliced
Wasserstein-1. Image-quality metrics on feature vectors, on the host in NumPy float64: Frechet
distance (``frechet``), KID (``kernel``), improved precision / recall (``manifold``),
nearest-neighbour copy distances (``neighbors``), Inception Score and class balance (``classes``).
The feature extractor (pixels, a classifier, Inception) is the caller's strategy:
experiments/evaluate/images.py.
"""

from diffusion_jax.metrics.classes import (class_entropy_bits, class_histogram, confident_fraction,
                                          inception_score)
from diffusion_jax.metrics.frechet import fd, frechet_distance, gaussian_stats
from diffusion_jax.metrics.kernel import kid, mmd2_unbiased, polynomial_kernel
from diffusion_jax.metrics.manifold import knn_radii, precision_recall
from diffusion_jax.metrics.neighbors import copy_fraction, nearest_neighbor_distances
from diffusion_jax.metrics.two_sample import energy_distance, mmd_rbf, sliced_wasserstein

__all__ = ["class_entropy_bits", "class_histogram", "confident_fraction", "copy_fraction",
           "energy_distance", "fd", "frechet_distance", "gaussian_stats", "inception_score", "kid",
           "knn_radii", "mmd2_unbiased", "mmd_rbf", "nearest_neighbor_distances",
           "polynomial_kernel", "precision_recall", "sliced_wasserstein"]
