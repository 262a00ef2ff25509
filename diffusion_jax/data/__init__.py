"""Data: toy per-example samplers (batches are pure functions of (key, step, rows)) and images.

Toy datasets expose ``shape`` (one example's shape, a tuple), ``sample(key, num)`` -> (num, *shape)
and ``batch(key, step, batch_size, *, start, stop)`` -> a dict of rows ({"x0"} or {"x0", "label"}).
Image datasets are ``ImageDataset`` records of integer levels (``images.py``), served in model space
[-1, 1] by ``experiments/input_pipeline.py``: ``digits(split)`` and ``shapes(num, ...)``. The
constructors shadow their modules here; import the modules' other names from them directly
(``from diffusion_jax.data.shapes import parse_caption, SHAPES``).
"""

from diffusion_jax.data.digits import digits, digits_split_indices
from diffusion_jax.data.images import (ImageDataset, center_crop, levels_to_model, model_to_levels,
                                       random_flip, resize, to_grid)
from diffusion_jax.data.labelled import LabelledDataset, labelled_mixture
from diffusion_jax.data.shapes import shapes
from diffusion_jax.data.toy2d import (ToyDataset, checkerboard, eight_gaussians, gaussian_mixture,
                                      swiss_roll, two_moons)

__all__ = ["ImageDataset", "LabelledDataset", "ToyDataset", "center_crop", "checkerboard", "digits",
           "digits_split_indices", "eight_gaussians", "gaussian_mixture", "labelled_mixture",
           "levels_to_model", "model_to_levels", "random_flip", "resize", "shapes", "swiss_roll",
           "to_grid", "two_moons"]
