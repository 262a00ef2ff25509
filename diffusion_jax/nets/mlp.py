"""An MLP denoiser for low-dimensional data, conditioned on time and optionally on a condition.

Batched like every network here (``model_fn(params, x, t, cond, *, key, train)``): x (B, D), t (B,),
and cond either integer class labels (B,) or a continuous embedding (B, C). ``as_model_fn`` turns
the module into a model_fn and ``NetworkScore`` into a per-example ``score_fn``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.nets.embeddings import GaussianFourierEmbedding


def _check_labels(cond: jax.Array, batch: int, num_classes: int) -> None:
  if cond.shape != (batch,):
    raise ValueError(f"cond must be integer labels of shape ({batch},) for num_classes="
                     f"{num_classes}, got {cond.dtype}{cond.shape}.")
  try:
    labels = np.asarray(cond)
  except jax.errors.TracerArrayConversionError:
    return  # traced labels cannot be checked here; out-of-range rows of nn.Embed read as NaN
  if labels.size and (labels.min() < 0 or labels.max() > num_classes):
    raise ValueError(f"cond labels must lie in 0..{num_classes} ({num_classes} is the null label), "
                     f"got values in [{labels.min()}, {labels.max()}].")


class ScoreMLP(nn.Module):
  """h_{l+1} = drop(act(W_l h_l + b_l + U_l act(c))), c = MLP(embed(t)) + E(cond), output W_L h_L.

  The conditioning vector c is added to every hidden layer (as in the time-conditioned MLPs of
  Song et al. 2021's toy experiments). E(cond) is a row of a label table (integer cond) or a linear
  projection of a continuous embedding (float cond). The output has the shape of x; what it means
  (eps, score, x0, v) is decided by the caller through ``Prediction``.

  Attributes:
    hidden_sizes: widths of the hidden layers.
    embed_dim: width of the conditioning vector c.
    time_embedding: a module mapping t (B,) to features (B, F); defaults to
      ``GaussianFourierEmbedding(embed_dim)``.
    num_classes: K, for integer labels: a table of K + 1 rows; row K is the null label ("no
      class"), used when cond is None and for classifier-free guidance.
    cond_dim: C, for a continuous condition of shape (B, C); None infers it from the cond given at
      ``init`` (a network initialised without cond is unconditional).
    dropout_rate: dropout after every hidden layer (Srivastava et al. 2014), active only with
      train=True and a "dropout" rng (``model_fn(..., key=k, train=True)``).
    activation: the nonlinearity.
  """

  hidden_sizes: Sequence[int] = (256, 256, 256)
  embed_dim: int = 128
  time_embedding: nn.Module | None = None
  num_classes: int | None = None
  cond_dim: int | None = None
  dropout_rate: float = 0.0
  activation: Callable[[jax.Array], jax.Array] = nn.silu

  @property
  def null_label(self) -> int:
    """The label index meaning "unconditional"."""
    if self.num_classes is None:
      raise ValueError("null_label needs num_classes to be set.")
    return self.num_classes

  def _check_fields(self):
    if not self.hidden_sizes:
      raise ValueError("hidden_sizes must name at least one hidden layer.")
    if self.num_classes is not None and (not isinstance(self.num_classes, (int, np.integer))
                                         or isinstance(self.num_classes, bool)
                                         or self.num_classes < 1):
      raise ValueError(f"num_classes must be an int >= 1 or None, got {self.num_classes!r}.")
    if self.cond_dim is not None and (not isinstance(self.cond_dim, (int, np.integer))
                                      or isinstance(self.cond_dim, bool) or self.cond_dim < 1):
      raise ValueError(f"cond_dim must be an int >= 1 or None, got {self.cond_dim!r}.")
    if self.num_classes is not None and self.cond_dim is not None:
      raise ValueError("set num_classes (integer labels) or cond_dim (a continuous embedding), "
                       "not both.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must lie in [0, 1), got {self.dropout_rate!r}.")

  def _embed_cond(self, cond, batch: int, dtype) -> jax.Array | None:
    """E(cond), (B, embed_dim), or None for an unconditional network."""
    if self.num_classes is not None:
      if cond is None:
        cond = jnp.full((batch,), self.num_classes, jnp.int32)
      cond = jnp.asarray(cond)
      if not jnp.issubdtype(cond.dtype, jnp.integer):
        raise ValueError(f"cond must be integer labels of shape ({batch},) for num_classes="
                         f"{self.num_classes}, got {cond.dtype}{cond.shape}.")
      _check_labels(cond, batch, self.num_classes)
      return nn.Embed(self.num_classes + 1, self.embed_dim, name="label_embedding")(cond)
    if cond is None:
      if self.cond_dim is not None:
        raise ValueError(f"cond must be a float array of shape ({batch}, {self.cond_dim}) for "
                         f"cond_dim={self.cond_dim}, got None.")
      return None
    cond = jnp.asarray(cond)
    if jnp.issubdtype(cond.dtype, jnp.integer) or jnp.issubdtype(cond.dtype, jnp.bool_):
      raise ValueError("cond holds integers (labels?) but the network has num_classes=None; set "
                       "num_classes for labels, or pass a float embedding.")
    want = (batch, self.cond_dim) if self.cond_dim is not None else None
    if cond.ndim != 2 or cond.shape[0] != batch or (want is not None and cond.shape != want):
      raise ValueError(f"cond must be a float array of shape {want or (batch, 'C')}, got "
                       f"{cond.shape}.")
    return nn.Dense(self.embed_dim, name="cond_projection")(cond.astype(dtype))

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, cond=None, *, train: bool = False) -> jax.Array:
    self._check_fields()
    if x.ndim != 2:
      raise ValueError(f"x must have shape (B, D), got {x.shape}.")
    batch = x.shape[0]
    t = jnp.asarray(t, x.dtype)
    if t.shape != (batch,):
      raise ValueError(f"t must have shape ({batch},) to match x {x.shape}, got {t.shape}.")

    embed = self.time_embedding
    if embed is None:
      embed = GaussianFourierEmbedding(features=self.embed_dim, name="fourier_embedding")
    c = nn.Dense(self.embed_dim)(embed(t))
    c = nn.Dense(self.embed_dim)(self.activation(c))
    cond_embedding = self._embed_cond(cond, batch, x.dtype)
    if cond_embedding is not None:
      c = c + cond_embedding

    # No dropout key means no dropout, even in training (the model contract: key=None).
    deterministic = not train or self.dropout_rate == 0.0 or not self.has_rng("dropout")
    h = x
    c = self.activation(c)
    for width in self.hidden_sizes:
      h = self.activation(nn.Dense(width)(h) + nn.Dense(width, use_bias=False)(c))
      h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return nn.Dense(x.shape[-1])(h)
