"""Input pipelines. Toy 2-D data are per-example samplers; batches are pure functions of (key, step)."""

from diffusion_jax.data.toy2d import (ToyDataset, checkerboard, eight_gaussians, gaussian_mixture,
                                      swiss_roll, two_moons)

__all__ = ["ToyDataset", "checkerboard", "eight_gaussians", "gaussian_mixture", "swiss_roll",
           "two_moons"]
