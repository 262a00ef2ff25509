"""A small noise-conditional score network for annealed Langevin dynamics (Song & Ermon 2019).

NCSN conditions every normalisation layer on the noise level through conditional instance
normalisation++ (CondInstanceNorm++):

    z_k = gamma_k (x_k - mu_k) / s_k + beta_k + alpha_k (mu_k - m) / v

(mu_k, s_k: the spatial mean and std of channel k of one example; m, v: the mean and std of the
mu_k over channels). The original looks gamma, beta, alpha up per noise level i; here they are a
linear function of an embedding of the noise input t (log sigma, fed by the runner), so one network
serves a continuous range of levels. The body is a compact conditional U-Net of pre-activation
residual blocks (ELU) in place of the RefineNet cascade, sized for 8x8-32x32 images on a CPU. Read
the output as Prediction.EPS: score = -output / sigma (NCSNv2's output scaling, Song & Ermon 2020).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax import _checks
from diffusion_jax.nets import init as inits
from diffusion_jax.nets import unet as unet_lib
from diffusion_jax.nets.conv import Conv2D


class CondInstanceNormPP(nn.Module):
  """z = gamma (x - mu) / s + beta + alpha (mu - m) / v per example and channel, with
  (gamma, beta, alpha) = (1, 0, 1) + W e from the conditioning vector e (Song & Ermon 2019,
  App. A)."""

  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    c = x.shape[-1]
    mu = jnp.mean(x, axis=(1, 2), keepdims=True)  # (B, 1, 1, C): statistics of one example
    var = jnp.var(x, axis=(1, 2), keepdims=True)
    m = jnp.mean(mu, axis=-1, keepdims=True)
    v = jnp.var(mu, axis=-1, keepdims=True)
    # NCSN initialises gamma and alpha near 1 (N(1, 0.02^2)) and beta at 0.
    mod = nn.Dense(3 * c, kernel_init=inits.normal(0.02), bias_init=inits.zeros, name="modulation")
    gamma, beta, alpha = jnp.split(mod(emb)[:, None, None, :], 3, axis=-1)
    h = (x - mu) * jax.lax.rsqrt(var + self.epsilon)
    return (1.0 + gamma) * h + beta + (1.0 + alpha) * (mu - m) * jax.lax.rsqrt(v + self.epsilon)


class CondResBlock(nn.Module):
  """x + conv(act(CIN++(conv(act(CIN++(x)))))) with a 1x1 skip when the width changes (NCSN's
  ConditionalResidualBlock, without dilation)."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    h = Conv2D(self.features, 3, name="conv0")(nn.elu(CondInstanceNormPP(name="norm0")(x, emb)))
    h = Conv2D(self.features, 3, name="conv1")(nn.elu(CondInstanceNormPP(name="norm1")(h, emb)))
    if x.shape[-1] != self.features:
      x = Conv2D(self.features, 1, name="skip")(x)
    return x + h


class NCSN(nn.Module):
  """A noise-conditional score network (Song & Ermon 2019) as a compact conditional U-Net:

      e = MLP(embed(noise_scale t) + E(cond));  levels of CondResBlocks (CIN++ on e) down by 2x2
      mean pooling and up by nearest upsampling with concatenated skips; out = conv(elu(CIN++(h))).

  ``__call__(x, t, cond=None, *, train=False)`` as every network here: x (B, H, W, C) with H, W
  divisible by 2^(len(channel_mult) - 1), t (B,) the noise input (log sigma for NCSN), cond None |
  labels (B,) in 0..num_classes | float (B, cond_dim). No dropout (``train`` is accepted and
  ignored).

  Attributes:
    features: base width; level l has features * channel_mult[l] channels.
    channel_mult: width multiplier per level, finest first.
    num_res_blocks: residual blocks per level, in the encoder and in the decoder.
    embed_dim: width of the conditioning vector e.
    embedding: "fourier" (Gaussian Fourier features, as NCSN++ embeds log sigma) or "positional".
    fourier_scale: std of the Fourier frequencies.
    noise_scale: t is multiplied by it before the embedding.
    num_classes, cond_dim: an optional label / continuous condition added to the embedding.
    out_channels: output channels; None means the input's.
  """

  features: int = 64
  channel_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 2
  embed_dim: int = 128
  embedding: str = "fourier"
  fourier_scale: float = 16.0
  noise_scale: float = 1.0
  num_classes: int = 0
  cond_dim: int = 0
  out_channels: int | None = None

  def _check_fields(self) -> None:
    _checks.check_count("features", self.features)
    _checks.check_count("num_res_blocks", self.num_res_blocks)
    _checks.check_count("embed_dim", self.embed_dim)
    if self.embed_dim % 2:
      raise ValueError(f"embed_dim must be even (sin/cos pairs), got {self.embed_dim}.")
    if not self.channel_mult or not all(_checks.is_int(m) and m >= 1 for m in self.channel_mult):
      raise ValueError(f"channel_mult must be a non-empty sequence of ints >= 1, got "
                       f"{self.channel_mult!r}.")
    _checks.check_choice("embedding", self.embedding, ("positional", "fourier"))
    unet_lib.check_condition_fields(self.num_classes, self.cond_dim)
    if self.out_channels is not None:
      _checks.check_count("out_channels", self.out_channels)

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, cond: Any = None, *,
               train: bool = False) -> jax.Array:
    del train  # no dropout or batch statistics: training and evaluation are the same function
    self._check_fields()
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC images of shape (B, H, W, C), got {x.shape}.")
    batch, height, width, channels = x.shape
    factor = 2 ** (len(self.channel_mult) - 1)
    if height % factor or width % factor:
      raise ValueError(f"x's height and width must be divisible by 2^(len(channel_mult) - 1) = "
                       f"{factor}, got {x.shape}.")
    t = jnp.asarray(t, x.dtype)
    if t.shape != (batch,):
      raise ValueError(f"t must have shape ({batch},) to match x {x.shape}, got {t.shape}.")

    e = unet_lib.noise_embedding(self.noise_scale * t, embedding=self.embedding,
                                 features=self.embed_dim, fourier_scale=self.fourier_scale)
    c = unet_lib.embed_condition(cond, num_classes=self.num_classes, cond_dim=self.cond_dim,
                                 batch=batch, features=self.embed_dim)
    if c is not None:
      e = e + c
    e = nn.elu(nn.Dense(self.embed_dim, kernel_init=inits.variance_scaling(1.0),
                        bias_init=inits.zeros, name="emb_dense0")(e))
    e = nn.Dense(self.embed_dim, kernel_init=inits.variance_scaling(1.0), bias_init=inits.zeros,
                 name="emb_dense1")(e)

    h = Conv2D(self.features, 3, name="stem")(x)
    skips = []
    for level, mult in enumerate(self.channel_mult):
      if level > 0:
        h = unet_lib.downsample(h)
      for i in range(self.num_res_blocks):
        h = CondResBlock(self.features * mult, name=f"enc{level}_block{i}")(h, e)
      skips.append(h)
    h = skips.pop()
    for level in reversed(range(len(self.channel_mult) - 1)):
      h = jnp.concatenate([unet_lib.upsample(h), skips.pop()], axis=-1)
      for i in range(self.num_res_blocks):
        block = CondResBlock(self.features * self.channel_mult[level], name=f"dec{level}_block{i}")
        h = block(h, e)
    h = nn.elu(CondInstanceNormPP(name="out_norm")(h, e))
    out_channels = channels if self.out_channels is None else self.out_channels
    return Conv2D(out_channels, 3, kernel_init=inits.variance_scaling(1e-10), name="out")(h)
