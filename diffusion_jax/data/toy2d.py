"""2-D toy distributions, each a per-example sampler ``sample_fn(key) -> x`` of shape (2,).

A batch is a pure function of (key, step, example index): example i of step s is
``sample_fn(fold_in(fold_in(key, s), i))``. So the global batch at step s is the same however it
is split across processes (each builds rows [start, stop) only), and a resumed run replays the
exact batches of an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from diffusion_jax import analytic
from diffusion_jax.analytic import GaussianMixture

SampleFn = Callable[[jax.Array], jax.Array]


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class ToyDataset(flax.struct.PyTreeNode):
  """A per-example sampler, the shape of one example and, where known, its exact law as a mixture.

  ``shape`` is a tuple (an int n is read as (n,)); ``sample_fn(key)`` returns one x0 of that shape.
  """

  sample_fn: SampleFn = flax.struct.field(pytree_node=False)
  shape: tuple[int, ...] = flax.struct.field(pytree_node=False)
  mixture: GaussianMixture | None = None  # the exact law of the data, when it is a Gaussian mixture

  def __post_init__(self):
    shape = (self.shape,) if _is_int(self.shape) else self.shape
    if not isinstance(shape, tuple) or not all(_is_int(n) and n >= 1 for n in shape):
      raise ValueError(f"shape must be a tuple of ints >= 1, got {self.shape!r}.")
    object.__setattr__(self, "shape", tuple(int(n) for n in shape))

  def example(self, key: jax.Array) -> dict:
    """One example, {"x0": (*shape)}; the key decides it entirely."""
    return {"x0": self.sample_fn(key)}

  def sample(self, key: jax.Array, num: int) -> jax.Array:
    """``num`` independent draws of x0, shape (num, *shape)."""
    if not _is_int(num) or num < 1:
      raise ValueError(f"num must be an int >= 1, got {num!r}.")
    return jax.vmap(lambda k: self.example(k)["x0"])(jr.split(key, num))

  def batch(self, key: jax.Array, step, batch_size: int, *, start: int = 0,
            stop: int | None = None) -> dict:
    """Rows [start, stop) of the global batch of ``batch_size`` examples at ``step``: a dict of
    rows, example i being ``example(fold_in(fold_in(key, step), i))``."""
    stop = batch_size if stop is None else stop
    if not all(_is_int(v) for v in (batch_size, start, stop)):
      raise ValueError(f"batch_size, start and stop must be ints, got {batch_size!r}, {start!r}, "
                       f"{stop!r}.")
    if not 0 <= start < stop <= batch_size:
      raise ValueError(f"need 0 <= start < stop <= batch_size={batch_size}, got start={start}, "
                       f"stop={stop}.")
    step_key = jr.fold_in(key, step)
    keys = jax.vmap(lambda i: jr.fold_in(step_key, i))(jnp.arange(start, stop))
    return jax.vmap(self.example)(keys)


def gaussian_mixture(mixture: GaussianMixture) -> ToyDataset:
  """Draws from a Gaussian mixture whose density (and diffused density) is known exactly."""
  return ToyDataset(lambda key: mixture.sample(key, 1)[0], (mixture.dim,), mixture)


def eight_gaussians(radius: float = 2.0, std: float = 0.1) -> ToyDataset:
  """Eight equal Gaussians with std ``std`` on a circle of radius ``radius`` (a known density)."""
  return gaussian_mixture(analytic.eight_gaussians(radius, std))


def checkerboard(scale: float = 1.0) -> ToyDataset:
  """Uniform on the 8 dark squares of a 4 x 4 board of side 4 * scale centred at 0 (Grathwohl et al. 2019)."""

  def sample_fn(key):
    cell_key, pos_key = jr.split(key)
    cell = jr.randint(cell_key, (), 0, 8)
    row = cell // 2
    col = 2 * (cell % 2) + row % 2  # dark squares: (row + col) even
    offset = jr.uniform(pos_key, (2,))
    return scale * (jnp.stack([col, row]).astype(offset.dtype) + offset - 2.0)

  return ToyDataset(sample_fn, (2,))


def two_moons(noise: float = 0.05, scale: float = 1.5) -> ToyDataset:
  """Two interleaved half circles of radius ``scale``, centred at 0, plus N(0, noise^2) jitter."""

  def sample_fn(key):
    moon_key, angle_key, noise_key = jr.split(key, 3)
    angle = jr.uniform(angle_key, (), maxval=math.pi)
    upper = jnp.stack([jnp.cos(angle), jnp.sin(angle)])
    lower = jnp.stack([1.0 - jnp.cos(angle), 0.5 - jnp.sin(angle)])
    x = jnp.where(jr.bernoulli(moon_key), upper, lower) - jnp.array([0.5, 0.25])
    return scale * x + noise * jr.normal(noise_key, (2,))

  return ToyDataset(sample_fn, (2,))


def swiss_roll(noise: float = 0.05, scale: float = 0.2) -> ToyDataset:
  """The 2-D Swiss roll: scale u (cos u, sin u), u ~ U[1.5 pi, 4.5 pi], plus N(0, noise^2) jitter."""

  def sample_fn(key):
    angle_key, noise_key = jr.split(key)
    u = jr.uniform(angle_key, (), minval=1.5 * math.pi, maxval=4.5 * math.pi)
    x = u * jnp.stack([jnp.cos(u), jnp.sin(u)])
    return scale * x + noise * jr.normal(noise_key, (2,))

  return ToyDataset(sample_fn, (2,))
