"""The one 2-D convolution every image network here goes through (NHWC, 'SAME' padding).

    y[b, i, j, o] = bias[o] + sum_{u, v, c} x[b, s i + u - p, s j + v - p, c] kernel[u, v, c, o]

with p = (kernel_size - 1) // 2 zero padding on every side and stride s (PyTorch's padding=p
convention: for stride 1 it is lax's "SAME"). Its parameters are those of ``flax.linen.Conv``
('kernel' (kh, kw, cin, cout), 'bias' (cout,)), so checkpoints and parameter counts do not depend
on which implementation computes it.

The forward pass and the input gradient are always XLA's convolutions; ``weight_grad`` picks how
the kernel gradient is computed. On XLA:CPU (jaxlib 0.10.2, which hands convolutions to YNNPACK)
the weight gradient of a 1x1 convolution was measured 5-7x slower than PyTorch's at 16-32 px, while
the one matmul it is, x^T g, is on par with PyTorch; for 3x3 kernels XLA's gradient was 1.1-2x
PyTorch's and the shifted-view matmuls no better overall (benchmarks/train_throughput.py --micro,
benchmarks/results/train_throughput_micro.json). Hence ``weight_grad="auto"``: matmul for 1x1
kernels on CPU, XLA's gradient otherwise; on GPU and TPU XLA's own convolutions are the fast path.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from diffusion_jax import _checks
from diffusion_jax.nets import init as inits

Initializer = Callable[..., jax.Array]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
WEIGHT_GRADS = ("auto", "xla", "matmul", "im2col")


def _conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, window_strides=strides, padding=padding,
                                  dimension_numbers=_DIMENSION_NUMBERS)


def _shifted_view(xp, u, v, out_hw, strides):
  """xp[:, s_h i + u, s_w j + v, :] for every output position (i, j): (B, Ho, Wo, C)."""
  (ho, wo), (sh, sw) = out_hw, strides
  return xp[:, u:u + (ho - 1) * sh + 1:sh, v:v + (wo - 1) * sw + 1:sw, :]


def _gram(a, b, dtype):
  """a^T b over all leading axes: (..., K), (..., N) -> (K, N), accumulated in at least float32."""
  acc = jnp.promote_types(dtype, jnp.float32)
  out = lax.dot_general(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]),
                        (((0,), (0,)), ((), ())), preferred_element_type=acc)
  return out.astype(dtype)


def _weight_grad(x, g, kernel_shape, strides, padding, method):
  """dL/dW[u, v, c, o] = sum_{b, i, j} x_pad[b, s i + u, s j + v, c] g[b, i, j, o]."""
  kh, kw, cin, cout = kernel_shape
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  views = [_shifted_view(xp, u, v, g.shape[1:3], strides) for u in range(kh) for v in range(kw)]
  if method == "im2col":
    # One matmul: the patch matrix (B Ho Wo, kh kw cin) transposed times g (B Ho Wo, cout).
    return _gram(jnp.concatenate(views, axis=-1), g, x.dtype).reshape(kh, kw, cin, cout)
  # "matmul": one (cin, cout) matmul per kernel tap, without the kh kw times larger patch buffer
  # (for a 1x1 kernel at stride 1 the one view is x itself: dW = x^T g).
  return jnp.stack([_gram(view, g, x.dtype) for view in views]).reshape(kh, kw, cin, cout)


def _conv_in_kernel(x, dk, strides, padding, method):
  """conv(x, dk) written as matrix products of shifted views of x with the kernel's taps: linear
  in dk, so its transpose (what reverse mode needs) is the matmul weight gradient ``_weight_grad``
  computes, dL/dW[u, v] = view_uv^T g, instead of XLA's convolution gradient."""
  kh, kw, cin, cout = dk.shape
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  out_hw = tuple((n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in
                 zip(x.shape[1:3], padding, (kh, kw), strides))
  views = [_shifted_view(xp, u, v, out_hw, strides) for u in range(kh) for v in range(kw)]
  acc = jnp.promote_types(x.dtype, jnp.float32)
  if method == "im2col":
    patches = jnp.concatenate(views, axis=-1)  # (B, Ho, Wo, kh kw cin), taps slowest
    return lax.dot_general(patches, dk.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())),
                           preferred_element_type=acc).astype(x.dtype)
  taps = dk.reshape(kh * kw, cin, cout)
  return sum(lax.dot_general(view, taps[i], (((3,), (0,)), ((), ())), preferred_element_type=acc)
             for i, view in enumerate(views)).astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv_matmul_weight_grad(x, kernel, strides, padding, method):
  return _conv(x, kernel, strides, padding)


def _conv_matmul_weight_grad_jvp(strides, padding, method, primals, tangents):
  # A custom JVP rather than a custom VJP, so forward mode works too (the likelihood's divergence
  # takes Jacobian-vector products): the tangent in x is XLA's convolution (its transpose is
  # XLA's input gradient, as plain autodiff), the tangent in the kernel the matmul form above.
  x, kernel = primals
  dx, dk = tangents
  y = _conv(x, kernel, strides, padding)
  dy = jnp.zeros_like(y)
  if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
    dy = dy + _conv(dx, kernel, strides, padding)
  if not isinstance(dk, jax.custom_derivatives.SymbolicZero):
    dy = dy + _conv_in_kernel(x, dk.astype(x.dtype), strides, padding, method)
  return y, dy


_conv_matmul_weight_grad.defjvp(_conv_matmul_weight_grad_jvp, symbolic_zeros=True)


def resolve_weight_grad(weight_grad: str, kernel_size: Sequence[int] = (3, 3)) -> str:
  """The method ``weight_grad`` stands for, for a kernel of spatial size ``kernel_size``.

  "auto" is "matmul" for 1x1 kernels on the CPU backend (there XLA's weight gradient of a 1x1
  convolution was measured 4-7x slower than the one matmul it is) and "xla" otherwise (for 3x3
  kernels the matmul forms were no faster than XLA:CPU's gradient, in single convolutions and in
  whole training steps; on GPU and TPU XLA's convolutions are the fast path). The backend is
  ``jax.default_backend()`` at trace time.
  """
  _checks.check_choice("weight_grad", weight_grad, WEIGHT_GRADS)
  if weight_grad == "auto":
    on_cpu = jax.default_backend() == "cpu"
    return "matmul" if on_cpu and tuple(kernel_size) == (1, 1) else "xla"
  return weight_grad


def conv2d(x: jax.Array, kernel: jax.Array, strides: int = 1, *,
           weight_grad: str = "auto") -> jax.Array:
  """y[b, i, j, o] = sum_{u, v, c} x[b, s i + u - p, s j + v - p, c] kernel[u, v, c, o], p = (k - 1) / 2.

  Forward and input gradient are XLA's (``lax.conv_general_dilated`` and its autodiff). The
  kernel gradient dL/dW[u, v, c, o] = sum_{b, i, j} x_pad[b, s i + u, s j + v, c] g[b, i, j, o]
  is computed, by ``weight_grad``, as: "xla", XLA's convolution gradient (plain autodiff);
  "matmul", kh * kw matmuls of shifted views of x with the cotangent (one matmul, x^T g, for a
  1x1 kernel); "im2col", one matmul of the im2col patch matrix (B Ho Wo, kh kw cin) with the
  cotangent (Chellapilla et al. 2006, "High performance convolutional neural networks for
  document processing"), the same sum with a kh kw times larger buffer; "auto", see
  ``resolve_weight_grad`` (matmul for 1x1 kernels on CPU, else xla).

  Args:
    x: (B, H, W, cin) images.
    kernel: (kh, kw, cin, cout) with odd kh, kw (the layout of ``flax.linen.Conv``).
    strides: the stride s in both spatial directions.
    weight_grad: "auto" | "xla" | "matmul" | "im2col".
  Returns:
    (B, (H - 1) // s + 1, (W - 1) // s + 1, cout).
  """
  _checks.check_count("strides", strides)
  _checks.check_choice("weight_grad", weight_grad, WEIGHT_GRADS)
  if x.ndim != 4:
    raise ValueError(f"x must be NHWC images of shape (B, H, W, C), got {x.shape}.")
  if kernel.ndim != 4 or kernel.shape[2] != x.shape[-1] or not (kernel.shape[0] % 2
                                                                and kernel.shape[1] % 2):
    raise ValueError(f"kernel must have shape (kh, kw, {x.shape[-1]}, cout) with odd kh, kw for x "
                     f"{x.shape}, got {kernel.shape}.")
  strides = (strides, strides)
  padding = tuple(((k - 1) // 2, (k - 1) // 2) for k in kernel.shape[:2])
  method = resolve_weight_grad(weight_grad, kernel.shape[:2])
  if method == "xla":
    return _conv(x, kernel, strides, padding)
  return _conv_matmul_weight_grad(x, kernel, strides, padding, method)


class Conv2D(nn.Module):
  """A square 2-D convolution on NHWC images, zero-padded so that stride 1 keeps the size.

  y = conv2d(x, kernel) + bias with ``flax.linen.Conv``'s parameters; only the way the kernel
  gradient is computed depends on ``weight_grad`` (see ``conv2d``), never the values.

  Attributes:
    features: output channels.
    kernel_size: the (odd) side of the square kernel.
    strides: the stride in both spatial directions.
    use_bias: add a learned bias.
    kernel_init: initialiser of the (kh, kw, cin, cout) kernel (default Glorot uniform).
    bias_init: initialiser of the bias.
    dtype: computation dtype (parameters stay in float32; None: the input's dtype).
    weight_grad: "auto" | "xla" | "matmul" | "im2col", how dL/dkernel is computed.
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  use_bias: bool = True
  kernel_init: Initializer = inits.variance_scaling(1.0)
  bias_init: Initializer = inits.zeros
  dtype: Any = None
  weight_grad: str = "auto"

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
    y = conv2d(x.astype(dtype), kernel.astype(dtype), self.strides, weight_grad=self.weight_grad)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(dtype)
    return y
