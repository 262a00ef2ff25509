"""An MLP denoiser for low-dimensional data, conditioned on time and optionally on a class label.

Batched like every linen network here: ``apply(params, x, t[, label])`` with x (B, D), t (B,),
label (B,) integers. ``NetworkScore`` turns it into a per-example ``score_fn``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.nets.embeddings import GaussianFourierEmbedding


class ScoreMLP(nn.Module):
  """h_{l+1} = act(W_l h_l + b_l + U_l act(c)), c = MLP(embed(t)) [+ E[label]], output W_L h_L.

  The conditioning vector c is added to every hidden layer (as in the time-conditioned MLPs of
  Song et al. 2021's toy experiments). The output has the shape of x; what it means (eps, score,
  x0, v) is decided by the caller through ``Prediction``.

  Attributes:
    hidden_sizes: widths of the hidden layers.
    embed_dim: width of the conditioning vector c.
    time_embedding: a module mapping t (B,) to features (B, F); defaults to
      ``GaussianFourierEmbedding(embed_dim)``.
    num_classes: if set, a label embedding with ``num_classes + 1`` rows; row ``num_classes`` is
      the null label ("no class"), used when ``label`` is None and for classifier-free guidance.
    activation: the nonlinearity.
  """

  hidden_sizes: Sequence[int] = (256, 256, 256)
  embed_dim: int = 128
  time_embedding: nn.Module | None = None
  num_classes: int | None = None
  activation: Callable[[jax.Array], jax.Array] = nn.silu

  @property
  def null_label(self) -> int:
    """The label index meaning "unconditional"."""
    if self.num_classes is None:
      raise ValueError("null_label needs num_classes to be set.")
    return self.num_classes

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, label: jax.Array | None = None) -> jax.Array:
    if x.ndim != 2:
      raise ValueError(f"x must have shape (B, D), got {x.shape}.")
    batch = x.shape[0]
    t = jnp.asarray(t, x.dtype)
    if t.shape != (batch,):
      raise ValueError(f"t must have shape ({batch},) to match x {x.shape}, got {t.shape}.")
    if not self.hidden_sizes:
      raise ValueError("hidden_sizes must name at least one hidden layer.")

    embed = self.time_embedding
    if embed is None:
      embed = GaussianFourierEmbedding(features=self.embed_dim, name="fourier_embedding")
    cond = nn.Dense(self.embed_dim)(embed(t))
    cond = nn.Dense(self.embed_dim)(self.activation(cond))

    if self.num_classes is not None:
      if self.num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 or None, got {self.num_classes!r}.")
      if label is None:
        label = jnp.full((batch,), self.num_classes, jnp.int32)
      label = jnp.asarray(label)
      if label.shape != (batch,) or not jnp.issubdtype(label.dtype, jnp.integer):
        raise ValueError(f"label must be integers of shape ({batch},), got {label.dtype}{label.shape}.")
      cond = cond + nn.Embed(self.num_classes + 1, self.embed_dim)(label)
    elif label is not None:
      raise ValueError("label was given but the network has num_classes=None.")

    h = x
    cond = self.activation(cond)
    for width in self.hidden_sizes:
      h = self.activation(nn.Dense(width)(h) + nn.Dense(width, use_bias=False)(cond))
    return nn.Dense(x.shape[-1])(h)
