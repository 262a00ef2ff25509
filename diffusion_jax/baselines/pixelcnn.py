"""An autoregressive image model in the PixelCNN++ style (Salimans et al. 2017): two shifted
convolution streams without a blind spot, gated residual blocks, and a discretised logistic
mixture per pixel; its log-likelihood is exact (the chain rule over pixels in raster order).

The "down" stream u at pixel (i, j) sees the rows above i; the "down-right" stream ul sees those
and the pixels left of j in row i. Both are built from convolutions padded on the top (and left)
and shifted by one row (column) at the input, so no output depends on its own pixel or a later
one (``tests/test_baselines.py`` checks the Jacobian). Colour channels are modelled as independent
given the previous pixels (PixelCNN++ couples them linearly; the digits have one channel). The
multi-resolution U-Net of PixelCNN++ is left out: an 8x8 image's context is covered by the
stacks' receptive field after four blocks.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax.baselines import discretized


def down_shift(x):
  """(N, H, W, C) moved one row down (zeros in the top row)."""
  return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def right_shift(x):
  return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


class DownConv(nn.Module):
  """A convolution whose output at (i, j) sees rows i-kh+1..i, columns centred on j."""

  features: int
  kernel: tuple[int, int] = (2, 3)
  zero_init: bool = False

  def _columns(self, kw: int) -> tuple[int, int]:
    """The zero columns padded (left, right) before a VALID convolution."""
    return (kw - 1) // 2, (kw - 1) // 2

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel
    x = jnp.pad(x, ((0, 0), (kh - 1, 0), self._columns(kw), (0, 0)))
    init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
    return nn.Conv(self.features, self.kernel, padding="VALID", kernel_init=init)(x)


class DownRightConv(DownConv):
  """A convolution whose output at (i, j) sees rows i-kh+1..i and columns j-kw+1..j."""

  kernel: tuple[int, int] = (2, 2)

  def _columns(self, kw: int) -> tuple[int, int]:
    return kw - 1, 0


class GatedResidual(nn.Module):
  """x + a * sigmoid(b), (a, b) from conv(elu(conv(elu(x)) + 1x1(elu(aux)))) (PixelCNN++)."""

  conv: type
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, aux=None, *, train: bool = False):
    f = x.shape[-1]
    c = self.conv(f)(nn.elu(x))
    if aux is not None:
      c = c + nn.Dense(f)(nn.elu(aux))
    c = nn.Dropout(self.dropout, deterministic=not train)(nn.elu(c))
    a, b = jnp.split(self.conv(2 * f, zero_init=True)(c), 2, axis=-1)
    return x + a * nn.sigmoid(b)


class PixelCNN(nn.Module):
  """(N, H, W, C) images in [-1, 1] -> (N, H, W, C, 3K) mixture parameters for each pixel given
  the pixels before it."""

  features: int = 64
  num_blocks: int = 4
  num_mixtures: int = 5
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    n, h, w, c = x.shape
    # A constant channel of ones lets the padding be told apart from black pixels (PixelCNN++).
    x = jnp.concatenate([x, jnp.ones((n, h, w, 1), x.dtype)], axis=-1)
    u = down_shift(DownConv(self.features, (2, 3))(x))
    ul = (down_shift(DownConv(self.features, (1, 3))(x))
          + right_shift(DownRightConv(self.features, (2, 1))(x)))
    for _ in range(self.num_blocks):
      u = GatedResidual(DownConv, self.dropout)(u, train=train)
      ul = GatedResidual(DownRightConv, self.dropout)(ul, u, train=train)
    out = nn.Dense(c * 3 * self.num_mixtures)(nn.elu(ul))
    return out.reshape(n, h, w, c, 3 * self.num_mixtures)


def log_likelihood(module: PixelCNN, params, x, num_levels: int, *, train: bool = False,
                   rngs=None):
  """Exact log P(x) in nats per image (N,), x: (N, H, W, C) cell centres of ``num_levels``."""
  out = module.apply(params, x, train=train, rngs=rngs)
  return discretized.image_logprob(out, x, module.num_mixtures, num_levels)


def sample(module: PixelCNN, params, key, shape, num_levels: int):
  """Draws (N, H, W, C) by H*W network passes, one pixel at a time in raster order (why an
  autoregressive model is slow to sample); jit-able (a ``lax.fori_loop``)."""
  n, h, w, c = shape

  def body(i, x):
    out = module.apply(params, x)
    row, col = i // w, i % w
    logits, means, log_scales = discretized.split_params(out[:, row, col], module.num_mixtures)
    pixel = discretized.mixture_sample(jr.fold_in(key, i), logits, means, log_scales, num_levels)
    return jax.lax.dynamic_update_slice(x, pixel[:, None, None, :], (0, row, col, 0))

  return jax.lax.fori_loop(0, h * w, body, jnp.zeros(shape, jnp.float32))
