"""A labelled Gaussian mixture as a dataset: examples {"x0", "label"} with label = component index.

The exact conditional law of every class is known (``analytic.ConditionalDiffusedMixture``), so a
class-conditional model trained on it can be scored class by class against exact samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.data.toy2d import ToyDataset


class LabelledDataset(ToyDataset):
  """A ``ToyDataset`` whose examples carry an int32 class label: {"x0": (*shape), "label": ()}.

  ``sample`` returns x0 only and draws the same x0 as ``example`` for the same key.
  """

  @property
  def num_classes(self) -> int:
    return self.mixture.num_components

  def example(self, key: jax.Array) -> dict:
    x, k = self.mixture.sample_with_components(key, 1)
    return {"x0": x[0], "label": k[0].astype(jnp.int32)}

  def sample_class(self, key: jax.Array, label: int, num: int) -> jax.Array:
    """``num`` exact draws of x0 | label (component ``label`` alone), shape (num, *shape)."""
    if not 0 <= int(label) < self.num_classes:
      raise ValueError(f"label must lie in 0..{self.num_classes - 1}, got {label!r}.")
    return self.mixture.conditioned(int(label)).sample(key, num)


def labelled_mixture(mixture: GaussianMixture) -> LabelledDataset:
  """Draws (x0, label) from a Gaussian mixture, label = the component x0 came from.

  Batches are pure functions of (key, step, rows), as for every toy dataset.
  """
  if not isinstance(mixture, GaussianMixture):
    raise TypeError(f"mixture must be an analytic.GaussianMixture, got {type(mixture).__name__}.")
  return LabelledDataset(lambda key: mixture.sample_with_components(key, 1)[0][0], (mixture.dim,),
                         mixture)
