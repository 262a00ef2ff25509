"""2-D convolution (NHWC, HWIO, SAME padding) whose weight gradient can be computed as matmuls.

Every convolution of the image networks goes through ``Conv2D``. Its parameters are those of
``flax.linen.Conv`` ('kernel' (kh, kw, cin, cout), 'bias' (cout,)), its forward pass is the same
XLA convolution, and only the backward pass differs: ``weight_grad`` picks how dL/dW is computed.

XLA:CPU lowers the weight gradient of a convolution (itself a convolution, with the batch as the
contracted dimension and the output cotangent as a large "kernel") through a path much slower
than its forward convolution; PyTorch's CPU backend does far better there. Writing the same sum
as matrix products (im2col, Chellapilla et al. 2006) hands the work to XLA's GEMM instead. On
GPU and TPU XLA's own convolution gradient is the fast one, hence ``weight_grad="auto"``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
WEIGHT_GRADS = ("auto", "xla", "im2col", "shifted")


def _pair(name: str, value) -> tuple[int, int]:
  if isinstance(value, bool):
    raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}.")
  if isinstance(value, int):
    value = (value, value)
  value = tuple(value)
  if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                for v in value):
    raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}.")
  return value


def _conv(x, kernel, strides):
  return lax.conv_general_dilated(x, kernel, strides, "SAME", dimension_numbers=_DIMENSION_NUMBERS)


def _padded_input(x, kernel_hw, strides):
  """x zero-padded exactly as lax's SAME padding pads it (so out[h] reads xp[s h : s h + k])."""
  pads = lax.padtype_to_pads(x.shape[1:3], kernel_hw, strides, "SAME")
  return jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))


def _shifted_view(xp, i, j, out_hw, strides):
  """xp[:, s_h h + i, s_w w + j, :] for every output position (h, w): (B, Ho, Wo, C)."""
  (ho, wo), (sh, sw) = out_hw, strides
  return xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]


def _gram(a, b, dtype):
  """a^T b over the flattened leading axes: (M, K), (M, N) -> (K, N), accumulated in float32+."""
  acc = jnp.promote_types(dtype, jnp.float32)
  out = lax.dot_general(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]),
                        (((0,), (0,)), ((), ())), preferred_element_type=acc)
  return out.astype(dtype)


def _weight_grad_im2col(x, g, kernel_shape, strides):
  """dW as one matmul: im2col patches (B Ho Wo, kh kw cin) transposed times g (B Ho Wo, cout)."""
  kh, kw, cin, cout = kernel_shape
  xp = _padded_input(x, (kh, kw), strides)
  patches = jnp.concatenate([_shifted_view(xp, i, j, g.shape[1:3], strides)
                             for i in range(kh) for j in range(kw)], axis=-1)
  return _gram(patches, g, x.dtype).reshape(kh, kw, cin, cout)


def _weight_grad_shifted(x, g, kernel_shape, strides):
  """dW[i, j] = view_ij(x)^T g, one (cin, cout) matmul per kernel tap (no patch buffer)."""
  kh, kw, cin, cout = kernel_shape
  xp = _padded_input(x, (kh, kw), strides)
  taps = [_gram(_shifted_view(xp, i, j, g.shape[1:3], strides), g, x.dtype)
          for i in range(kh) for j in range(kw)]
  return jnp.stack(taps).reshape(kh, kw, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_custom_grad(x, kernel, strides, weight_grad):
  return _conv(x, kernel, strides)


def _conv_custom_grad_fwd(x, kernel, strides, weight_grad):
  return _conv(x, kernel, strides), (x, kernel)


def _conv_custom_grad_bwd(strides, weight_grad, residuals, g):
  x, kernel = residuals
  # Input gradient: the transposed convolution exactly as autodiff of lax.conv gives it.
  _, input_vjp = jax.vjp(lambda x_: _conv(x_, kernel, strides), x)
  (dx,) = input_vjp(g)
  compute = _weight_grad_im2col if weight_grad == "im2col" else _weight_grad_shifted
  dw = compute(x, g.astype(x.dtype), kernel.shape, strides).astype(kernel.dtype)
  return dx, dw


_conv_custom_grad.defvjp(_conv_custom_grad_fwd, _conv_custom_grad_bwd)


def resolve_weight_grad(weight_grad: str) -> str:
  """The concrete method for ``weight_grad``: "auto" is "shifted" on the CPU backend, else "xla"."""
  if weight_grad not in WEIGHT_GRADS:
    raise ValueError(f"weight_grad must be one of {WEIGHT_GRADS}, got {weight_grad!r}.")
  if weight_grad == "auto":
    return "shifted" if jax.default_backend() == "cpu" else "xla"
  return weight_grad


def conv2d(x: jax.Array, kernel: jax.Array, strides: int | Sequence[int] = 1, *,
           weight_grad: str = "auto") -> jax.Array:
  """y[n, h, w, o] = sum_{i, j, c} x_pad[n, s h + i, s w + j, c] W[i, j, c, o] (SAME padding).

  Forward and input gradient are XLA's (``lax.conv_general_dilated`` and its autodiff). The
  weight gradient dL/dW[i, j, c, o] = sum_{n, h, w} x_pad[n, s h + i, s w + j, c] g[n, h, w, o]
  is, by ``weight_grad``: "xla", XLA's convolution gradient (plain autodiff); "im2col", one matmul
  of the im2col patch matrix with the cotangent (Chellapilla et al. 2006); "shifted", kh * kw
  matmuls of shifted views of x with the cotangent (the same sum, without the kh * kw times larger
  patch buffer); "auto", "shifted" when ``jax.default_backend()`` is "cpu" at trace time, else
  "xla".

  Args:
    x: (B, H, W, cin) input.
    kernel: (kh, kw, cin, cout) weights, the layout of ``flax.linen.Conv``.
    strides: an int or a (sh, sw) pair.
    weight_grad: "auto" | "xla" | "im2col" | "shifted".
  Returns:
    (B, ceil(H / sh), ceil(W / sw), cout).
  """
  strides = _pair("strides", strides)
  method = resolve_weight_grad(weight_grad)
  if x.ndim != 4:
    raise ValueError(f"x must have shape (B, H, W, C), got {x.shape}.")
  if kernel.ndim != 4 or kernel.shape[2] != x.shape[-1]:
    raise ValueError(f"kernel must have shape (kh, kw, {x.shape[-1]}, cout) for x {x.shape}, got "
                     f"{kernel.shape}.")
  if method == "xla":
    return _conv(x, kernel, strides)
  return _conv_custom_grad(x, kernel, strides, method)


class Conv2D(nn.Module):
  """y = conv2d(x, W) + b, W: (kh, kw, cin, cout), SAME padding; ``flax.linen.Conv``'s parameters.

  Drop-in for ``nn.Conv(features, (k, k), strides, padding="SAME")``: the same parameter names,
  shapes and initial values for the same ``kernel_init``, and the same forward computation; only
  the backward pass of the kernel can differ (see ``conv2d`` and ``weight_grad``).

  Attributes:
    features: cout.
    kernel_size: k or (kh, kw).
    strides: s or (sh, sw).
    use_bias: add a learned bias b (cout,).
    kernel_init, bias_init: initialisers of W and b.
    dtype: the computation dtype (None: promote inputs and parameters, as flax does).
    param_dtype: the parameters' dtype.
    weight_grad: "auto" | "xla" | "im2col" | "shifted", how dL/dW is computed.
  """

  features: int
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  use_bias: bool = True
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  weight_grad: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if not isinstance(self.features, int) or isinstance(self.features, bool) or self.features < 1:
      raise ValueError(f"features must be a positive int, got {self.features!r}.")
    kh, kw = _pair("kernel_size", self.kernel_size)
    if x.ndim != 4:
      raise ValueError(f"x must have shape (B, H, W, C), got {x.shape}.")
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, self.strides, weight_grad=self.weight_grad)
    if bias is not None:
      y = y + bias.reshape((1, 1, 1, -1))
    return y
