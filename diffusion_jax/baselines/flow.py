"""A normalising flow in the Glow / RealNVP style (Dinh et al. 2017; Kingma & Dhariwal 2018):
multi-scale levels of squeeze -> K x (actnorm, invertible 1x1 convolution, affine coupling) ->
split, with a standard normal base; its log-density is exact by the change of variables,

  log p(x) = sum_levels log N(z_level; 0, I) + sum_layers log |det dz/dx|.

On images the data are dequantised uniformly in their level cells (``dequantize``), and the
bits/dim of ``likelihood.to_bits_per_dim`` bound the discrete ones (Theis et al. 2016), in the
same convention as the diffusion model's PF-ODE bits/dim.

Every layer is a flax module with ``__call__(x) -> (y, logdet)`` and ``inverse(y) -> x``; the
coupling network ends in a zero-initialised convolution and actnorm starts at the identity, so a
new flow is linear: its 1x1 convolutions (random rotations) and each coupling's scale sigmoid(2)
on the second half of the channels.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from diffusion_jax import _checks
from diffusion_jax.baselines import discretized
from diffusion_jax.likelihood import dequantization


def squeeze(x):
  """(N, H, W, C) -> (N, H/2, W/2, 4C): each 2x2 block into channels (volume-preserving)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // 2, w // 2, 4 * c)


def unsqueeze(x):
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, 2 * h, 2 * w, c // 4)


def _spatial(x) -> int:
  return x.shape[1] * x.shape[2]


class ActNorm(nn.Module):
  """y = x * exp(log_scale) + bias per channel (started at the identity)."""

  @nn.compact
  def __call__(self, x, inverse: bool = False):
    c = x.shape[-1]
    log_scale = self.param("log_scale", nn.initializers.zeros, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    logdet = _spatial(x) * jnp.sum(log_scale) * jnp.ones(x.shape[0])
    if inverse:
      return (x - bias) * jnp.exp(-log_scale), -logdet
    return x * jnp.exp(log_scale) + bias, logdet


class InvConv1x1(nn.Module):
  """y = x W per pixel, W started at a random rotation (Glow); log|det| = H W log|det W|."""

  @nn.compact
  def __call__(self, x, inverse: bool = False):
    c = x.shape[-1]
    init = lambda key, shape: jnp.linalg.qr(jr.normal(key, shape))[0]  # noqa: E731
    w = self.param("kernel", init, (c, c))
    logdet = _spatial(x) * jnp.linalg.slogdet(w)[1] * jnp.ones(x.shape[0])
    if inverse:
      return x @ jnp.linalg.inv(w), -logdet
    return x @ w, logdet


class AffineCoupling(nn.Module):
  """The second half of the channels scaled and shifted by a network of the first half:
  y_b = (x_b + shift(x_a)) * sigmoid(raw(x_a) + 2), Glow's bounded scale."""

  hidden: int = 64

  @nn.compact
  def __call__(self, x, inverse: bool = False):
    c = x.shape[-1]
    xa, xb = x[..., : c // 2], x[..., c // 2:]
    h = nn.relu(nn.Conv(self.hidden, (3, 3))(xa))
    h = nn.relu(nn.Conv(self.hidden, (1, 1))(h))
    h = nn.Conv(2 * (c - c // 2), (3, 3), kernel_init=nn.initializers.zeros)(h)
    shift, raw = h[..., 0::2], h[..., 1::2]
    log_scale = jax.nn.log_sigmoid(raw + 2.0)
    logdet = jnp.sum(log_scale, axis=(1, 2, 3))
    if inverse:
      return jnp.concatenate([xa, xb * jnp.exp(-log_scale) - shift], -1), -logdet
    return jnp.concatenate([xa, (xb + shift) * jnp.exp(log_scale)], -1), logdet


class Glow(nn.Module):
  """``num_scales`` levels of ``num_steps`` flow steps; every level but the last factors out
  half its channels to the base. ``__call__(x) -> (zs, logdet)``, ``inverse(zs) -> x``."""

  num_scales: int = 2
  num_steps: int = 8
  hidden: int = 64

  def setup(self):
    self.steps = [[(ActNorm(), InvConv1x1(), AffineCoupling(self.hidden))
                   for _ in range(self.num_steps)] for _ in range(self.num_scales)]

  def __call__(self, x):
    zs, logdet = [], jnp.zeros(x.shape[0])
    for level, steps in enumerate(self.steps):
      x = squeeze(x)
      for layers in steps:
        for layer in layers:
          x, ld = layer(x)
          logdet = logdet + ld
      if level < self.num_scales - 1:
        c = x.shape[-1] // 2
        zs.append(x[..., :c])
        x = x[..., c:]
    zs.append(x)
    return zs, logdet

  def inverse(self, zs):
    x = zs[-1]
    for level in reversed(range(self.num_scales)):
      if level < self.num_scales - 1:
        x = jnp.concatenate([zs[level], x], -1)
      for layers in reversed(self.steps[level]):
        for layer in reversed(layers):
          x, _ = layer(x, inverse=True)
      x = unsqueeze(x)
    return x

  def latent_shapes(self, image_shape):
    """The shapes of ``zs`` for one (H, W, C) image."""
    h, w, c = image_shape
    shapes = []
    for level in range(self.num_scales):
      h, w, c = h // 2, w // 2, 4 * c
      if level < self.num_scales - 1:
        shapes.append((h, w, c // 2))
        c = c - c // 2
    shapes.append((h, w, c))
    return shapes


def check_image_shape(module: Glow, image_shape) -> None:
  _checks.check_divisible_image("image_shape", image_shape, 2 ** module.num_scales,
                                "2^num_scales")


def log_density(module: Glow, params, x):
  """Exact log p(x) in nats per example (N,), x continuous (N, H, W, C)."""
  zs, logdet = module.apply(params, x)
  base = sum(jnp.sum(-0.5 * (z ** 2 + np.log(2 * np.pi)), axis=(1, 2, 3)) for z in zs)
  return base + logdet


def dequantize(key, x, num_levels: int):
  """Cell centres in [-1, 1] -> a uniform point of each one's cell (width 2/L): the likelihood
  package's ``dequantize`` of their levels."""
  kw = dict(num_levels=num_levels, data_range=discretized.DATA_RANGE)
  return dequantization.dequantize(key, dequantization.levels_of(x, **kw), **kw)


def sample(module: Glow, params, key, num: int, image_shape, *, temperature: float = 1.0):
  """Draws (num, H, W, C): base normals (scaled by ``temperature``) through the inverse."""
  shapes = module.latent_shapes(image_shape)
  keys = jr.split(key, len(shapes))
  zs = [temperature * jr.normal(k, (num, *s)) for k, s in zip(keys, shapes)]
  return module.apply(params, zs, method=Glow.inverse)
