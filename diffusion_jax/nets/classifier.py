"""A small convolutional image classifier: logits and penultimate features, optionally noisy.

Used as the evaluation classifier of image models (its penultimate features play the role that
Inception's pool3 plays for FID; its probabilities give the Inception Score, class balance and
confidence) and, with ``noise_conditional=True``, as the noisy classifier p(y | x_t, t) of
classifier guidance (Dhariwal & Nichol 2021, Sec. 4), which is why it takes the contract's t.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from diffusion_jax.nets.embeddings import GaussianFourierEmbedding


def _groups(channels: int, num_groups: int) -> int:
  # The largest divisor of channels not above num_groups, so any width works.
  return max(g for g in range(1, min(num_groups, channels) + 1) if channels % g == 0)


class _ResBlock(nn.Module):
  """h + conv(act(GN(conv(act(GN(h))) + emb))), a pre-activation residual block (He et al. 2016)."""

  channels: int
  num_groups: int
  dropout_rate: float

  @nn.compact
  def __call__(self, h, emb, deterministic: bool):
    skip = h if h.shape[-1] == self.channels else nn.Conv(self.channels, (1, 1), name="skip")(h)
    h = nn.Conv(self.channels, (3, 3))(nn.silu(
        nn.GroupNorm(_groups(h.shape[-1], self.num_groups))(h)))
    if emb is not None:
      h = h + nn.Dense(self.channels)(emb)[:, None, None, :]
    h = nn.silu(nn.GroupNorm(_groups(self.channels, self.num_groups))(h))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return skip + nn.Conv(self.channels, (3, 3))(h)


class Classifier(nn.Module):
  """logits = W_out f, features f = act(W_f mean_hw(blocks(x))); residual blocks (He et al. 2016).

  A conv stem, then one stage per entry of ``channels`` (``blocks_per_stage`` residual blocks with
  GroupNorm, Wu & He 2018) with 2x2 average pooling between stages while the image is larger than
  2x2, a global mean pool and a dense layer of ``feature_dim`` units. NHWC at any resolution
  (8x8x1 up to 32x32x3 are tested).

  Attributes:
    num_classes: K, the number of logits.
    channels: width of each stage.
    blocks_per_stage: residual blocks per stage.
    feature_dim: width of the penultimate (feature) layer.
    num_groups: GroupNorm groups (reduced to a divisor of a layer's width when needed).
    dropout_rate: dropout inside blocks and before the logits, with train=True and a "dropout" rng.
    noise_conditional: if True, t (B,) is required: noise_scale * t goes through Fourier features
      and an MLP and is added to every block (as in a U-Net); if False, t must be None.
    embed_dim: width of that noise embedding.
    noise_scale: the factor applied to t before embedding (the network contract).
  """

  num_classes: int = 10
  channels: Sequence[int] = (32, 64, 128)
  blocks_per_stage: int = 1
  feature_dim: int = 128
  num_groups: int = 8
  dropout_rate: float = 0.0
  noise_conditional: bool = False
  embed_dim: int = 64
  noise_scale: float = 1.0

  def _check(self, x, t):
    if not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 2:
      raise ValueError(f"num_classes must be an int >= 2, got {self.num_classes!r}.")
    if not self.channels:
      raise ValueError("channels must name at least one stage width.")
    if x.ndim != 4:
      raise ValueError(f"x must be a batch of NHWC images (B, H, W, C), got shape {x.shape}.")
    if self.noise_conditional:
      if t is None or jnp.shape(t) != (x.shape[0],):
        raise ValueError(f"a noise-conditional classifier needs t of shape ({x.shape[0]},), got "
                         f"{None if t is None else jnp.shape(t)}.")
    elif t is not None:
      raise ValueError("t was given but the classifier has noise_conditional=False; set "
                       "noise_conditional=True for a classifier of noisy images.")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array | None = None, *, train: bool = False,
               return_features: bool = False):
    """Logits (B, K), or (logits, features (B, feature_dim)) with return_features=True."""
    self._check(x, t)
    deterministic = not train or self.dropout_rate == 0.0 or not self.has_rng("dropout")
    emb = None
    if self.noise_conditional:
      t = jnp.asarray(t, x.dtype) * self.noise_scale
      emb = GaussianFourierEmbedding(self.embed_dim, name="noise_embedding")(t)
      emb = nn.silu(nn.Dense(self.embed_dim)(nn.silu(nn.Dense(self.embed_dim)(emb))))
    h = nn.Conv(self.channels[0], (3, 3), name="stem")(x)
    for stage, width in enumerate(self.channels):
      if stage > 0 and min(h.shape[1:3]) > 2:
        h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="SAME")
      for _ in range(self.blocks_per_stage):
        h = _ResBlock(width, self.num_groups, self.dropout_rate)(h, emb, deterministic)
    h = nn.silu(nn.GroupNorm(_groups(h.shape[-1], self.num_groups))(h))
    features = nn.silu(nn.Dense(self.feature_dim, name="features")(jnp.mean(h, axis=(1, 2))))
    dropped = nn.Dropout(self.dropout_rate)(features, deterministic=deterministic)
    logits = nn.Dense(self.num_classes, name="logits")(dropped)
    return (logits, features) if return_features else logits


# flax's lecun_normal: a normal truncated to +-2 std, rescaled so the variance is 1 / fan_in.
_TRUNCATED_STD = 0.87962566103423978


def init_classifier(module: Classifier, key: jax.Array, x: jax.Array, t: jax.Array | None = None):
  """{"params": theta} with the distributions of ``module.init`` (flax's defaults: kernels
  lecun_normal, W ~ TruncNormal(0, 1 / fan_in) on +-2 std; biases 0; GroupNorm scales 1), drawn on
  the host with NumPy and nothing compiled.

  On XLA:CPU even an eager ``module.init`` compiles every random draw of a new shape (several
  seconds for this network on a busy 2-core machine); ``jax.eval_shape`` gives the shapes without
  compiling. Each leaf is seeded by (key, its path), so the same key gives the same parameters.
  ``x`` (and ``t`` for a noise-conditional classifier) are example inputs; one example is used.
  """
  x = jnp.asarray(x)[:1]
  args = (x,) if t is None else (x, jnp.asarray(t)[:1])
  shapes = jax.eval_shape(module.init, key, *args)
  key_data = jr.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  words = [int(w) for w in np.asarray(key_data, np.uint32).ravel()]

  def draw(path, leaf):
    names = [str(getattr(p, "key", p)) for p in path]
    shape, name = tuple(leaf.shape), names[-1]
    if name == "kernel":
      rng = np.random.default_rng(words + [zlib.crc32("/".join(names).encode())])
      std = np.sqrt(1.0 / int(np.prod(shape[:-1]))) / _TRUNCATED_STD
      value = std * _truncated_normal(rng, shape)
    elif name == "bias":
      value = np.zeros(shape)
    elif name == "scale":
      value = np.ones(shape)
    else:
      raise ValueError(f"init_classifier does not know how to draw parameter {'/'.join(names)}.")
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
  """Standard normal draws conditioned on |z| <= 2 (rejection: about 5% are redrawn)."""
  z = rng.standard_normal(shape)
  bad = np.abs(z) > 2
  while bad.any():
    z[bad] = rng.standard_normal(int(bad.sum()))
    bad = np.abs(z) > 2
  return z
