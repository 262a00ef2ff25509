"""Input pipelines. Toy data are per-example samplers; batches are pure functions of (key, step, rows).

Datasets expose ``shape`` (one example's shape, a tuple), ``sample(key, num)`` -> (num, *shape) and
``batch(key, step, batch_size, *, start, stop)`` -> a dict of rows ({"x0"} or {"x0", "label"}).
"""

from diffusion_jax.data.labelled import LabelledDataset, labelled_mixture
from diffusion_jax.data.toy2d import (ToyDataset, checkerboard, eight_gaussians, gaussian_mixture,
                                      swiss_roll, two_moons)

__all__ = ["LabelledDataset", "ToyDataset", "checkerboard", "eight_gaussians", "gaussian_mixture",
           "labelled_mixture", "swiss_roll", "two_moons"]
