"""The one 2-D convolution every image network here goes through (NHWC, 'SAME' padding).

    y[b, i, j, o] = bias[o] + sum_{u, v, c} x[b, s i + u - p, s j + v - p, c] kernel[u, v, c, o]

with p = (kernel_size - 1) // 2 zero padding and stride s. Its parameters are those of
``flax.linen.Conv`` ('kernel' (kh, kw, cin, cout), 'bias' (cout,)), so checkpoints and parameter
counts do not depend on which implementation computes it.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax import _checks
from diffusion_jax.nets import init as inits

Initializer = Callable[..., jax.Array]


class Conv2D(nn.Module):
  """A square 2-D convolution on NHWC images, zero-padded so that stride 1 keeps the size.

  Attributes:
    features: output channels.
    kernel_size: the (odd) side of the square kernel.
    strides: the stride in both spatial directions.
    use_bias: add a learned bias.
    kernel_init: initialiser of the (kh, kw, cin, cout) kernel (default Glorot uniform).
    bias_init: initialiser of the bias.
    dtype: computation dtype (parameters stay in float32).
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  use_bias: bool = True
  kernel_init: Initializer = inits.variance_scaling(1.0)
  bias_init: Initializer = inits.zeros
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _checks.check_count("features", self.features)
    _checks.check_count("kernel_size", self.kernel_size)
    _checks.check_count("strides", self.strides)
    if self.kernel_size % 2 == 0:
      raise ValueError(f"kernel_size must be odd (symmetric 'SAME' padding), got "
                       f"{self.kernel_size}.")
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC images of shape (B, H, W, C), got {x.shape}.")
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
    dtype = self.dtype or x.dtype
    pad = (k - 1) // 2
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), window_strides=(self.strides, self.strides),
        padding=((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(dtype)
    return y
