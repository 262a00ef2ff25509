"""The DDPM++ / NCSN++ U-Net family (Song et al. 2021, "Score-based generative modeling through
SDEs", score_sde's ``ncsnpp.py``; Karras et al. 2022's ``SongUNet``), batched NHWC.

    F(x, t, cond) = decoder(encoder(x, e), e),   e = MLP(embed(noise_scale t) + E(cond))

Residual blocks h = (skip(x) + conv(drop(silu(GN(conv(silu(GN(x)))) + W e)))) / sqrt(2), with
GroupNorm, self-attention at chosen resolutions, channel multipliers per level, BigGAN-style
resampling inside the residual blocks (or DDPM-style resampling convolutions), and NCSN++'s
progressive input paths ("skip" / "residual") and output path ("skip"). The output has the input's
shape (or ``out_channels`` channels); what it means (eps, x0, ...) is the caller's choice through
``Prediction`` or ``EDMPrecond``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import _checks
from diffusion_jax.nets import init as inits
from diffusion_jax.nets.conv import Conv2D
from diffusion_jax.nets.embeddings import GaussianFourierEmbedding


def _init(scale: float) -> inits.HostInit:
  """Variance-scaling ("fan_avg", uniform) init; scale 1 is Xavier/Glorot uniform, the init of
  score_sde's ``default_init`` and EDM's ``xavier_uniform``. Tiny scales stand for the papers'
  zero-initialised layers (score_sde: init_scale 0 -> 1e-10; EDM: init_weight 1e-5 -> 1e-10)."""
  return inits.variance_scaling(scale)


def _dense(features: int, name: str, dtype, scale: float = 1.0) -> nn.Dense:
  return nn.Dense(features, kernel_init=_init(scale), bias_init=inits.zeros, dtype=dtype, name=name)


_ZERO = 1e-10  # the papers' "zero" init (see _init)


def num_groups(channels: int) -> int:
  """GroupNorm groups for ``channels``: min(32, channels // 4) (EDM's GroupNorm, score_sde's
  min(C // 4, 32)), at least 1, lowered to the nearest divisor of ``channels``."""
  groups = max(min(32, channels // 4), 1)
  while channels % groups:
    groups -= 1
  return groups


def _group_norm(channels: int, name: str, dtype) -> nn.GroupNorm:
  # Statistics per example over (H, W, C / groups): examples in a batch never mix.
  return nn.GroupNorm(num_groups=num_groups(channels), epsilon=1e-6, dtype=dtype,
                      scale_init=inits.ones, bias_init=inits.zeros, name=name)


def positional_embedding(t: jax.Array, features: int, max_period: float = 10_000.0) -> jax.Array:
  """[sin(t w_k), cos(t w_k)], w_k = max_period^(-k / (K - 1)), k = 0..K-1, K = features / 2:
  the DDPM timestep embedding as score_sde's ``get_timestep_embedding`` and EDM's
  ``PositionalEmbedding(endpoint=True)`` write it (Vaswani et al. 2017; Ho et al. 2020)."""
  half = features // 2
  freqs = max_period ** (-np.arange(half) / max(half - 1, 1))
  angles = t[:, None] * jnp.asarray(freqs, t.dtype)[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _filter_2d(taps: Sequence[float]) -> np.ndarray:
  f = np.asarray(taps, np.float64)
  f = np.outer(f, f)
  return f / f.sum()


def downsample(x: jax.Array, taps: Sequence[float] = (1, 1)) -> jax.Array:
  """Halve H and W: blur each channel with the separable filter outer(taps, taps) / sum^2 and keep
  every second pixel (taps (1, 1): 2x2 mean pooling; (1, 3, 3, 1): score_sde / StyleGAN2's FIR)."""
  b, h, w, c = x.shape
  if tuple(taps) == (1, 1):
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  f = _filter_2d(taps)
  pad = (f.shape[0] - 1) // 2
  kernel = jnp.asarray(np.tile(f[:, :, None, None], (1, 1, 1, c)), x.dtype)
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=c)


def upsample(x: jax.Array, taps: Sequence[float] = (1, 1)) -> jax.Array:
  """Double H and W: zero-stuff, then blur with 4 outer(taps, taps) / sum^2 (the transpose of
  ``downsample``, times 4); taps (1, 1) is nearest-neighbour upsampling."""
  b, h, w, c = x.shape
  if tuple(taps) == (1, 1):
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)
  f = 4.0 * _filter_2d(taps)
  k = f.shape[0]
  pad = k - 1 - (k - 1) // 2
  kernel = jnp.asarray(np.tile(f[::-1, ::-1, None, None], (1, 1, 1, c)), x.dtype)
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                      lhs_dilation=(2, 2),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=c)


def embed_condition(cond, *, num_classes: int, cond_dim: int, batch: int, features: int,
                    dtype=None) -> jax.Array | None:
  """E(cond), (B, features): a row of a (K + 1)-row table for integer labels in 0..K (K =
  ``num_classes``, the null label, also used for cond=None), a Dense projection of a float
  (B, cond_dim) condition, or None for an unconditional network. Call it inside a compact method:
  the layers it creates belong to that module ("label_embedding" / "cond_projection")."""
  if num_classes:
    if cond is None:
      cond = jnp.full((batch,), num_classes, jnp.int32)
    cond = jnp.asarray(cond)
    if not jnp.issubdtype(cond.dtype, jnp.integer) or cond.shape != (batch,):
      raise ValueError(f"cond must be integer labels of shape ({batch},) in 0..{num_classes} for "
                       f"num_classes={num_classes}, got {cond.dtype}{cond.shape}.")
    labels = _checks.concrete_or_none(cond)
    if labels is not None and labels.size and (labels.min() < 0 or labels.max() > num_classes):
      raise ValueError(f"cond labels must lie in 0..{num_classes} ({num_classes} is the null "
                       f"label), got values in [{labels.min()}, {labels.max()}].")
    table = nn.Embed(num_classes + 1, features, embedding_init=inits.normal(1.0),
                     name="label_embedding")
    return table(cond) if dtype is None else table(cond).astype(dtype)
  if cond_dim:
    if cond is None:
      raise ValueError(f"cond must be a float array of shape ({batch}, {cond_dim}) for "
                       f"cond_dim={cond_dim}, got None.")
    cond = jnp.asarray(cond)
    if not jnp.issubdtype(cond.dtype, jnp.floating) or cond.shape != (batch, cond_dim):
      raise ValueError(f"cond must be a float array of shape ({batch}, {cond_dim}) for "
                       f"cond_dim={cond_dim}, got {cond.dtype}{cond.shape}.")
    return _dense(features, "cond_projection", dtype)(cond)
  if cond is not None:
    raise ValueError("cond was given but the network is unconditional; set num_classes (integer "
                     "labels) or cond_dim (a float condition).")
  return None


def check_condition_fields(num_classes, cond_dim) -> None:
  """num_classes and cond_dim: ints >= 0, not both set."""
  _checks.check_count("num_classes", num_classes, minimum=0)
  _checks.check_count("cond_dim", cond_dim, minimum=0)
  if num_classes and cond_dim:
    raise ValueError("set num_classes (integer labels) or cond_dim (a continuous condition), "
                     "not both.")


def noise_embedding(t: jax.Array, *, embedding: str, features: int, fourier_scale: float):
  """The fixed embedding of the (scaled) noise input: positional or Gaussian Fourier features."""
  if embedding == "positional":
    return positional_embedding(t, features)
  return GaussianFourierEmbedding(features, scale=fourier_scale, name="fourier")(t)


class ResBlock(nn.Module):
  """h = silu(GN(x)) [resampled]; h = conv(h) + W e; h = conv(drop(silu(GN(h))));
  x = (skip(x) + h) * skip_scale, then optionally x = (x + attn(GN(x))) * skip_scale.

  score_sde's ``ResnetBlockBigGANpp`` + ``AttnBlockpp`` and EDM's ``UNetBlock`` (with
  resample_proj=True, adaptive_scale=False): ``up`` / ``down`` resample inside the block (BigGAN,
  Brock et al. 2019); ``skip`` is a 1x1 convolution when the shape changes; the second convolution
  and the attention output projection start at zero, so a new block is the identity map times
  skip_scale.
  """

  features: int
  up: bool = False
  down: bool = False
  attention: bool = False
  num_heads: int = 1
  dropout: float = 0.0
  skip_scale: float = 1.0
  resample_filter: Sequence[float] = (1, 1)
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, deterministic: bool = True) -> jax.Array:
    c_in, c = x.shape[-1], self.features
    h = nn.silu(_group_norm(c_in, "norm0", self.dtype)(x))
    if self.up:
      h, x = upsample(h, self.resample_filter), upsample(x, self.resample_filter)
    elif self.down:
      h, x = downsample(h, self.resample_filter), downsample(x, self.resample_filter)
    h = Conv2D(c, 3, kernel_init=_init(1.0), dtype=self.dtype, name="conv0")(h)
    h = h + _dense(c, "emb_proj", self.dtype)(emb)[:, None, None, :]
    h = nn.silu(_group_norm(c, "norm1", self.dtype)(h))
    if self.dropout > 0.0:
      h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = Conv2D(c, 3, kernel_init=_init(_ZERO), dtype=self.dtype, name="conv1")(h)
    if c_in != c or self.up or self.down:
      x = Conv2D(c, 1, kernel_init=_init(1.0), dtype=self.dtype, name="skip")(x)
    x = (x + h) * self.skip_scale
    if not self.attention:
      return x
    b, height, width, _ = x.shape
    heads = self.num_heads
    qkv = Conv2D(3 * c, 1, kernel_init=_init(0.2), dtype=self.dtype, name="qkv")(
        _group_norm(c, "norm2", self.dtype)(x))
    q, k, v = jnp.split(qkv.reshape(b, height * width, heads, 3 * (c // heads)), 3, axis=-1)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(c // heads)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    a = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, height, width, c)
    a = Conv2D(c, 1, kernel_init=_init(_ZERO), dtype=self.dtype, name="proj")(a)
    return (x + a) * self.skip_scale


class Resample(nn.Module):
  """DDPM-style resampling between levels (Ho et al. 2020; score_sde's ``Upsample`` /
  ``Downsample`` with resamp_with_conv): resample with the filter, then a 3x3 convolution."""

  features: int
  up: bool = False
  resample_filter: Sequence[float] = (1, 1)
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = upsample(x, self.resample_filter) if self.up else downsample(x, self.resample_filter)
    return Conv2D(self.features, 3, kernel_init=_init(1.0), dtype=self.dtype, name="conv")(x)


_EMBEDDINGS = ("positional", "fourier")
_RESBLOCKS = ("biggan", "ddpm")
_ENCODERS = ("standard", "skip", "residual")
_DECODERS = ("standard", "skip")


class UNet(nn.Module):
  """The DDPM++ / NCSN++ U-Net (Song et al. 2021; Karras et al. 2022, ``SongUNet``):

      F(x, t, cond): e = silu(W2 silu(W1 (embed(noise_scale t) + E(cond)))), levels of residual
      blocks down and up with skip connections, output conv(silu(GN(h))).

  ``__call__(x, t, cond=None, *, train=False)``: x (B, H, W, C) with H, W divisible by
  2^(len(channel_mult) - 1); t (B,) the noise input; cond None | int labels (B,) in 0..K
  (``num_classes`` = K; K is the null label, also used when cond is None) | float (B, cond_dim).

  Attributes:
    model_channels: base width (score_sde's ``nf``); level l has model_channels * channel_mult[l].
    channel_mult: width multiplier per resolution level, finest first.
    num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
    attn_resolutions: spatial sizes (H at that level) with self-attention after the blocks.
    dropout: dropout rate inside the residual blocks; active only with train=True and a
      "dropout" rng.
    channel_mult_emb: the embedding MLP's width is model_channels * channel_mult_emb.
    channel_mult_noise: the noise embedding has model_channels * channel_mult_noise features
      (score_sde's Fourier embedding has 2 nf, its positional nf).
    embedding: "positional" (sinusoidal, DDPM++) or "fourier" (Gaussian Fourier, NCSN++).
    fourier_scale: the std of the Fourier frequencies (score_sde: 16).
    noise_scale: t is multiplied by it before the embedding (e.g. 999 for VP time t in [0, 1] as
      score_sde does; 1 for log sigma or EDM's c_noise).
    skip_rescale: scale residual sums by 1/sqrt(2) (score_sde's skip_rescale; always on in EDM).
    resblock: "biggan" (resampling inside residual blocks) or "ddpm" (separate resampling convs).
    encoder: "standard", "skip" (NCSN++ progressive_input "input_skip": the downsampled input
      added through a 1x1 conv at each level) or "residual" (progressive_input "residual").
    decoder: "standard" or "skip" (NCSN++ progressive "output_skip": an output head per level,
      upsampled and summed).
    resample_filter: separable resampling filter taps ((1, 1): box; (1, 3, 3, 1): FIR).
    num_heads: attention heads.
    num_classes: K > 0 for integer labels (an embedding table of K + 1 rows, row K the null
      label); 0 for none.
    cond_dim: width of a continuous condition (B, cond_dim) embedded by a Dense layer; 0 for none.
    out_channels: output channels; None means the input's.
    dtype: computation dtype (None: the input's); parameters are float32.
  """

  model_channels: int = 128
  channel_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  channel_mult_emb: int = 4
  channel_mult_noise: int = 1
  embedding: str = "positional"
  fourier_scale: float = 16.0
  noise_scale: float = 1.0
  skip_rescale: bool = True
  resblock: str = "biggan"
  encoder: str = "standard"
  decoder: str = "standard"
  resample_filter: Sequence[float] = (1, 1)
  num_heads: int = 1
  num_classes: int = 0
  cond_dim: int = 0
  out_channels: int | None = None
  dtype: Any = None

  @property
  def null_label(self) -> int:
    """The label index meaning "unconditional"."""
    if not self.num_classes:
      raise ValueError("null_label needs num_classes > 0.")
    return self.num_classes

  def _check_fields(self) -> None:
    _checks.check_count("model_channels", self.model_channels)
    if not self.channel_mult or not all(_checks.is_int(m) and m >= 1 for m in self.channel_mult):
      raise ValueError(f"channel_mult must be a non-empty sequence of ints >= 1, got "
                       f"{self.channel_mult!r}.")
    _checks.check_count("num_res_blocks", self.num_res_blocks, minimum=0)
    _checks.check_count("channel_mult_emb", self.channel_mult_emb)
    _checks.check_count("channel_mult_noise", self.channel_mult_noise)
    _checks.check_count("num_heads", self.num_heads)
    check_condition_fields(self.num_classes, self.cond_dim)
    if self.out_channels is not None:
      _checks.check_count("out_channels", self.out_channels)
    _checks.check_choice("embedding", self.embedding, _EMBEDDINGS)
    _checks.check_choice("resblock", self.resblock, _RESBLOCKS)
    _checks.check_choice("encoder", self.encoder, _ENCODERS)
    _checks.check_choice("decoder", self.decoder, _DECODERS)
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}.")
    if (self.model_channels * self.channel_mult_noise) % 2:
      raise ValueError("model_channels * channel_mult_noise must be even (sin/cos pairs), got "
                       f"{self.model_channels * self.channel_mult_noise}.")
    for m in self.channel_mult:
      if (self.model_channels * m) % self.num_heads:
        raise ValueError(f"num_heads={self.num_heads} must divide every level's width "
                         f"model_channels * channel_mult = {self.model_channels * m}.")
    taps = np.asarray(self.resample_filter, np.float64)
    if taps.ndim != 1 or taps.size < 2 or taps.size % 2 or taps.sum() <= 0:
      raise ValueError(f"resample_filter must be an even number (>= 2) of taps with a positive "
                       f"sum, e.g. (1, 1) or (1, 3, 3, 1), got {self.resample_filter!r}.")

  def check_input(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """Checks the fields and the shapes of (x, t); returns t in x's dtype."""
    self._check_fields()
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC images of shape (B, H, W, C), got {x.shape}.")
    batch, height, width, _ = x.shape
    factor = 2 ** (len(self.channel_mult) - 1)
    if height % factor or width % factor:
      raise ValueError(f"x's height and width must be divisible by 2^(len(channel_mult) - 1) = "
                       f"{factor}, got {x.shape}.")
    t = jnp.asarray(t, x.dtype)
    if t.shape != (batch,):
      raise ValueError(f"t must have shape ({batch},) to match x {x.shape}, got {t.shape}.")
    return t

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, cond=None, *, train: bool = False,
               residuals: Sequence[jax.Array] | None = None) -> jax.Array:
    """``residuals``: one array per skip connection and one for the middle output, added to them
    before the decoder reads them (a ControlNet's output; None: none)."""
    t = self.check_input(x, t)
    deterministic = not train or self.dropout == 0.0 or not self.has_rng("dropout")
    emb = embed(self, t, cond)
    h, skips = encode(self, x, emb, deterministic)
    if residuals is not None:
      if len(residuals) != len(skips) + 1:
        raise ValueError(f"residuals must hold {len(skips) + 1} arrays (one per skip connection "
                         f"and one for the middle), got {len(residuals)}.")
      skips = [s + r for s, r in zip(skips, residuals[:-1])]
      h = h + residuals[-1]
    return decode(self, h, skips, emb, deterministic, x.shape[-1]).astype(x.dtype)


def embed(net: UNet, t: jax.Array, cond) -> jax.Array:
  """e = silu(W2 silu(W1 (embed(noise_scale t) + E(cond)))), with ``net``'s fields, as layers of the
  calling module (see ``encode``)."""
  features = net.model_channels * net.channel_mult_noise
  c = embed_condition(cond, num_classes=net.num_classes, cond_dim=net.cond_dim,
                      batch=t.shape[0], features=features, dtype=net.dtype)
  e = noise_embedding(net.noise_scale * t, embedding=net.embedding, features=features,
                      fourier_scale=net.fourier_scale)
  if c is not None:
    e = e + c
  width = net.model_channels * net.channel_mult_emb
  e = nn.silu(_dense(width, "emb_dense0", net.dtype)(e))
  return nn.silu(_dense(width, "emb_dense1", net.dtype)(e))


def _block(net: UNet, features: int, name: str, **kw) -> ResBlock:
  skip_scale = 1 / math.sqrt(2) if net.skip_rescale else 1.0
  return ResBlock(features, num_heads=net.num_heads, dropout=net.dropout, skip_scale=skip_scale,
                  resample_filter=tuple(float(v) for v in net.resample_filter), dtype=net.dtype,
                  name=name, **kw)


def encode(net: UNet, x: jax.Array, emb: jax.Array, deterministic: bool, *,
           stem_offset: jax.Array | None = None) -> tuple[jax.Array, list[jax.Array]]:
  """The U-Net's stem, encoder levels and middle blocks with ``net``'s fields, as layers of the
  module whose compact method calls it (the U-Net itself, or a ControlNet's trainable copy, whose
  layers then carry the U-Net's names): (middle output, the skip connections, finest first).
  ``stem_offset`` is added to the stem's output (a ControlNet's control input)."""
  dtype, taps = net.dtype, tuple(float(v) for v in net.resample_filter)
  skip_scale = 1 / math.sqrt(2) if net.skip_rescale else 1.0
  height = x.shape[1]
  # A 3x3 stem, then per level [down] + num_res_blocks blocks; every output is a skip.
  h = Conv2D(net.model_channels, 3, kernel_init=_init(1.0), dtype=dtype, name="stem")(x)
  if stem_offset is not None:
    h = h + stem_offset
  skips, aux = [h], x
  for level, mult in enumerate(net.channel_mult):
    res = height >> level
    if level > 0:
      c = h.shape[-1]
      if net.resblock == "biggan":
        h = _block(net, c, f"enc{res}_down", down=True)(h, emb, deterministic)
      else:
        h = Resample(c, resample_filter=taps, dtype=dtype, name=f"enc{res}_down")(h)
      if net.encoder == "skip":
        aux = downsample(aux, taps)
        h = h + Conv2D(c, 1, kernel_init=_init(1.0), dtype=dtype, name=f"enc{res}_aux_skip")(aux)
      elif net.encoder == "residual":
        aux = Conv2D(c, 3, kernel_init=_init(1.0), dtype=dtype,
                     name=f"enc{res}_aux_residual")(downsample(aux, taps))
        h = aux = (h + aux) * skip_scale
      skips.append(h)
    for i in range(net.num_res_blocks):
      h = _block(net, net.model_channels * mult, f"enc{res}_block{i}",
                 attention=res in net.attn_resolutions)(h, emb, deterministic)
      skips.append(h)
  # Middle: a block with attention and a block without, at the coarsest level.
  c = h.shape[-1]
  h = _block(net, c, "mid0", attention=True)(h, emb, deterministic)
  h = _block(net, c, "mid1")(h, emb, deterministic)
  return h, skips


def decode(net: UNet, h: jax.Array, skips: list[jax.Array], emb: jax.Array, deterministic: bool,
           in_channels: int) -> jax.Array:
  """The U-Net's decoder: per level [up] + num_res_blocks + 1 blocks on (h, skip) concatenations,
  then the output head(s)."""
  dtype, taps = net.dtype, tuple(float(v) for v in net.resample_filter)
  out_channels = in_channels if net.out_channels is None else net.out_channels
  height = skips[0].shape[1]
  last = len(net.channel_mult) - 1
  skips = list(skips)
  out = None
  for level in reversed(range(len(net.channel_mult))):
    mult, res = net.channel_mult[level], height >> level
    if level < last:
      c = h.shape[-1]
      if net.resblock == "biggan":
        h = _block(net, c, f"dec{res}_up", up=True)(h, emb, deterministic)
      else:
        h = Resample(c, up=True, resample_filter=taps, dtype=dtype, name=f"dec{res}_up")(h)
    for i in range(net.num_res_blocks + 1):
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = _block(net, net.model_channels * mult, f"dec{res}_block{i}",
                 attention=i == net.num_res_blocks and res in net.attn_resolutions)(
                     h, emb, deterministic)
    if net.decoder == "skip" or level == 0:
      y = nn.silu(_group_norm(h.shape[-1], f"dec{res}_out_norm", dtype)(h))
      y = Conv2D(out_channels, 3, kernel_init=_init(_ZERO), dtype=dtype, name=f"dec{res}_out")(y)
      out = y if out is None else upsample(out, taps) + y
  assert not skips
  return out


# The papers' CIFAR-10 networks. Parameter counts (32x32x3, unconditional), as jax.eval_shape
# counts them here; tests/test_unet.py checks them against a layer-by-layer count written from the
# reference code (score_sde's ncsnpp.py, EDM's SongUNet.__init__).

def ddpmpp_cifar10(*, deep: bool = False, **overrides) -> UNet:
  """DDPM++ cont. (VP / sub-VP) of Song et al. 2021 (score_sde configs/vp/cifar10_ddpmpp[_deep]
  _continuous.py): nf 128, ch_mult (1, 2, 2, 2), 4 (deep: 8) BigGAN blocks per level, attention at
  16x16, positional embedding of 999 t, dropout 0.1, box resampling, no progressive paths.
  61,804,419 parameters (deep: 106,632,579), as score_sde's code has them."""
  fields = dict(model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=8 if deep else 4,
                attn_resolutions=(16,), dropout=0.1, embedding="positional", noise_scale=999.0,
                resblock="biggan", encoder="standard", decoder="standard", resample_filter=(1, 1))
  return UNet(**{**fields, **overrides})


def ncsnpp_cifar10(*, deep: bool = False, **overrides) -> UNet:
  """NCSN++ cont. (VE) of Song et al. 2021 (score_sde configs/ve/cifar10_ncsnpp[_deep]
  _continuous.py): as DDPM++ but a Gaussian Fourier embedding (2 nf features, scale 16) of
  log sigma (feed t = log sigma; noise_scale 1), FIR resampling (1, 3, 3, 1) and the "residual"
  input path (progressive_input="residual"). 62,758,787 parameters (deep: 107,586,947); score_sde's
  code counts 128 more, its Fourier frequencies W, a stop-gradient parameter there and a constant
  here. score_sde divides the output by sigma (scale_by_sigma): read it as Prediction.EPS."""
  fields = dict(model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=8 if deep else 4,
                attn_resolutions=(16,), dropout=0.1, embedding="fourier", fourier_scale=16.0,
                channel_mult_noise=2, noise_scale=1.0, resblock="biggan", encoder="residual",
                decoder="standard", resample_filter=(1, 3, 3, 1))
  return UNet(**{**fields, **overrides})


def edm_ddpmpp_cifar10(**overrides) -> UNet:
  """EDM's DDPM++ for CIFAR-10 (Karras et al. 2022, config F; NVlabs/edm train.py --arch=ddpmpp):
  SongUNet with model_channels 128, channel_mult (2, 2, 2), 4 blocks, attention at 16, positional
  embedding of c_noise = log(sigma) / 4 (noise_scale 1; EDMPrecond supplies it), dropout 0.13.
  55,732,739 parameters (55.73M, the capacity Karras et al. 2022 list in their Table 7); EDM's
  9-dimensional augmentation label adds 1,152 (not built here)."""
  fields = dict(model_channels=128, channel_mult=(2, 2, 2), num_res_blocks=4,
                attn_resolutions=(16,), dropout=0.13, embedding="positional", noise_scale=1.0,
                resblock="biggan", encoder="standard", decoder="standard", resample_filter=(1, 1))
  return UNet(**{**fields, **overrides})


def edm_ncsnpp_cifar10(**overrides) -> UNet:
  """EDM's NCSN++ for CIFAR-10 (NVlabs/edm train.py --arch=ncsnpp): as ``edm_ddpmpp_cifar10`` with
  a Fourier embedding of 2 x 128 features, FIR (1, 3, 3, 1) resampling and the residual encoder.
  56,395,523 parameters (+1,152 with EDM's augmentation label)."""
  fields = dict(model_channels=128, channel_mult=(2, 2, 2), num_res_blocks=4,
                attn_resolutions=(16,), dropout=0.13, embedding="fourier", fourier_scale=16.0,
                channel_mult_noise=2, noise_scale=1.0, resblock="biggan", encoder="residual",
                decoder="standard", resample_filter=(1, 3, 3, 1))
  return UNet(**{**fields, **overrides})
