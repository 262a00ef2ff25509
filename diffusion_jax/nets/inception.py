"""The FID Inception-v3: the 2015-12-05 TensorFlow graph behind FID, IS and KID, in flax.linen.

This is the network of Heusel et al. 2017's FID code (``inception-2015-12-05.tgz``) as ported to
PyTorch by pytorch-fid (its ``FIDInceptionA/C/E_1/E_2`` blocks), written NHWC: Szegedy et al.
2016's Inception-v3 with three quirks of that graph kept, because FID numbers depend on them:

- the average pools inside the Inception blocks divide by the number of *real* pixels in the
  window (TensorFlow's ``avg_pool``; ``count_include_pad=False`` in PyTorch);
- the last block (Mixed_7c) pools its pool branch with a *max* pool, not an average;
- 1008 output classes (1000 ImageNet classes and 8 unused ones).

Batch normalisation runs in inference mode only, with epsilon 1e-3 as in the TF graph. No
weights ship with the library: ``experiments.evaluate.inception_weights.load(path)`` reads the
file a user supplies (pytorch-fid's ``.pth`` or the numpy pickle of the JAX FID ports).

Input: ``preprocess`` takes NHWC images in model space [-1, 1] of any size, 1 or 3 channels, and
resizes them to 299 x 299 with the antialiased bicubic filter of clean-fid (Parmar et al. 2022,
"On Aliased Resizing and Surprising Subtleties in GAN Evaluation"). The network reads images in
[-1, 1] (pytorch-fid maps its [0, 1] input by 2x - 1).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import _checks

INCEPTION_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008
BN_EPSILON = 1e-3

_Pad = Sequence[tuple[int, int]] | str


class ConvBN(nn.Module):
  """y = relu(s * (W * x) + b), s = gamma / sqrt(var + eps), b = beta - s mean (inference BN).

  torchvision's ``BasicConv2d``: a bias-free convolution followed by batch normalisation with
  frozen statistics, folded into one per-channel scale and shift. Parameters: ``conv/kernel``
  (kh, kw, cin, cout) and ``bn/{scale, bias, mean, var}`` (cout,). ``padding="SAME"`` is
  torchvision's symmetric padding (k - 1) / 2: every padded convolution here has stride 1 and odd k.
  """

  features: int
  kernel_size: tuple[int, int] = (1, 1)
  strides: tuple[int, int] = (1, 1)
  padding: _Pad = "VALID"
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, self.kernel_size, self.strides, padding=self.padding,
                use_bias=False, precision=self.precision, name="conv")(x)
    bn = BatchNormInference(name="bn")
    return jax.nn.relu(bn(x))


class BatchNormInference(nn.Module):
  """y = (x - mean) / sqrt(var + eps) * scale + bias per channel (Ioffe & Szegedy 2015), frozen.

  The running statistics are ordinary parameters here (the network is never trained), so one
  ``params`` collection holds the whole network.
  """

  epsilon: float = BN_EPSILON

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, shape)
    bias = self.param("bias", nn.initializers.zeros, shape)
    mean = self.param("mean", nn.initializers.zeros, shape)
    var = self.param("var", nn.initializers.ones, shape)
    s = scale * jax.lax.rsqrt(var + self.epsilon)
    return x * s + (bias - mean * s)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 mean over the real pixels of each window (TF; count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 max pool, padding 1 (FIDInceptionE_2's pool branch)."""
  return nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
  """Mixed_5b/c/d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1, concatenated (64+64+96+pool)."""

  pool_features: int
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    a = conv(64, name="branch1x1")(x)
    b = conv(48, name="branch5x5_1")(x)
    b = conv(64, (5, 5), padding="SAME", name="branch5x5_2")(b)
    c = conv(64, name="branch3x3dbl_1")(x)
    c = conv(96, (3, 3), padding="SAME", name="branch3x3dbl_2")(c)
    c = conv(96, (3, 3), padding="SAME", name="branch3x3dbl_3")(c)
    d = conv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([a, b, c, d], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a, grid reduction 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 (384+96+cin)."""

  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    a = conv(384, (3, 3), (2, 2), name="branch3x3")(x)
    b = conv(64, name="branch3x3dbl_1")(x)
    b = conv(96, (3, 3), padding="SAME", name="branch3x3dbl_2")(b)
    b = conv(96, (3, 3), (2, 2), name="branch3x3dbl_3")(b)
    return jnp.concatenate([a, b, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1 (4 x 192 channels)."""

  channels_7x7: int
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    c7 = self.channels_7x7
    a = conv(192, name="branch1x1")(x)
    b = conv(c7, name="branch7x7_1")(x)
    b = conv(c7, (1, 7), padding="SAME", name="branch7x7_2")(b)
    b = conv(192, (7, 1), padding="SAME", name="branch7x7_3")(b)
    c = conv(c7, name="branch7x7dbl_1")(x)
    c = conv(c7, (7, 1), padding="SAME", name="branch7x7dbl_2")(c)
    c = conv(c7, (1, 7), padding="SAME", name="branch7x7dbl_3")(c)
    c = conv(c7, (7, 1), padding="SAME", name="branch7x7dbl_4")(c)
    c = conv(192, (1, 7), padding="SAME", name="branch7x7dbl_5")(c)
    d = conv(192, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([a, b, c, d], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a, grid reduction 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 (320+192+cin)."""

  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    a = conv(192, name="branch3x3_1")(x)
    a = conv(320, (3, 3), (2, 2), name="branch3x3_2")(a)
    b = conv(192, name="branch7x7x3_1")(x)
    b = conv(192, (1, 7), padding="SAME", name="branch7x7x3_2")(b)
    b = conv(192, (7, 1), padding="SAME", name="branch7x7x3_3")(b)
    b = conv(192, (3, 3), (2, 2), name="branch7x7x3_4")(b)
    return jnp.concatenate([a, b, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/c: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1 (320+768+768+192 = 2048).

  ``max_pool=True`` is FIDInceptionE_2 (Mixed_7c): the TF graph pools that branch with a max pool
  where the paper and torchvision average; Mixed_7b averages over real pixels only.
  """

  max_pool: bool = False
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    a = conv(320, name="branch1x1")(x)
    b = conv(384, name="branch3x3_1")(x)
    b = jnp.concatenate([conv(384, (1, 3), padding="SAME", name="branch3x3_2a")(b),
                         conv(384, (3, 1), padding="SAME", name="branch3x3_2b")(b)], -1)
    c = conv(448, name="branch3x3dbl_1")(x)
    c = conv(384, (3, 3), padding="SAME", name="branch3x3dbl_2")(c)
    c = jnp.concatenate([conv(384, (1, 3), padding="SAME", name="branch3x3dbl_3a")(c),
                         conv(384, (3, 1), padding="SAME", name="branch3x3dbl_3b")(c)], -1)
    pooled = _max_pool_3x3(x) if self.max_pool else _avg_pool_3x3(x)
    d = conv(192, name="branch_pool")(pooled)
    return jnp.concatenate([a, b, c, d], axis=-1)


class InceptionV3(nn.Module):
  """pool3 = mean_{h,w} f(x) in R^2048, logits = W pool3 + b in R^1008 (Szegedy et al. 2016).

  The FID network (module docstring). ``__call__(x)`` takes (B, H, W, 3) images in [-1, 1],
  normally 299 x 299 from ``preprocess`` (the convolutions accept any H, W >= 75), and returns
  ``(pool3, logits)``: the 2048 pool3 features of FID / KID / precision-recall and the 1008
  logits whose softmax Inception Score reads. Parameter names follow torchvision and pytorch-fid
  (``Conv2d_1a_3x3/conv/kernel``, ``Mixed_5b/branch1x1/bn/mean``, ``fc/kernel``, ...), which is
  also the layout of the JAX FID ports' weight pickle.

  ``precision`` goes to every convolution and the dense layer: HIGHEST (full float32) by default,
  so GPU / TPU features match the CPU's instead of drifting with TF32 / bfloat16 passes.
  """

  num_classes: int = NUM_CLASSES
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    conv = functools.partial(ConvBN, precision=self.precision)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"x must be RGB images (B, H, W, 3) in [-1, 1], got shape {x.shape}.")
    if min(x.shape[1:3]) < 75:
      raise ValueError(f"x must be at least 75 x 75 pixels (299 x 299 for FID; see preprocess), "
                       f"got {x.shape[1]} x {x.shape[2]}.")
    x = conv(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = conv(64, (3, 3), padding="SAME", name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = conv(80, name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, precision=self.precision, name="Mixed_5b")(x)
    x = InceptionA(64, precision=self.precision, name="Mixed_5c")(x)
    x = InceptionA(64, precision=self.precision, name="Mixed_5d")(x)
    x = InceptionB(precision=self.precision, name="Mixed_6a")(x)
    x = InceptionC(128, precision=self.precision, name="Mixed_6b")(x)
    x = InceptionC(160, precision=self.precision, name="Mixed_6c")(x)
    x = InceptionC(160, precision=self.precision, name="Mixed_6d")(x)
    x = InceptionC(192, precision=self.precision, name="Mixed_6e")(x)
    x = InceptionD(precision=self.precision, name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, precision=self.precision, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, precision=self.precision, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, precision=self.precision, name="fc")(pool3)
    return pool3, logits


def param_shapes(module: InceptionV3 | None = None) -> dict[str, Any]:
  """The variables ``{'params': ...}`` of the network as ``jax.ShapeDtypeStruct`` (no memory)."""
  return _param_shapes(InceptionV3() if module is None else module)


@functools.lru_cache(maxsize=4)
def _param_shapes(module: InceptionV3) -> dict[str, Any]:
  # Tracing ~100 convolutions takes seconds on a busy CPU; modules are hashable by their fields.
  x = jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), jnp.float32)
  return jax.eval_shape(module.init, jax.random.key(0), x)


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  """Keys' cubic convolution kernel (Keys 1981) with a = -0.5, PIL's and clean-fid's bicubic."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((x - 5) * x + 8) * x * a - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
  """W (out_size, in_size), float64: row i holds the weights of output pixel i (rows sum to 1).

  W_ij = k((j + 1/2 - c_i) / s) / sum_j' k((j' + 1/2 - c_i) / s) over the pixels j' of the image,
  with c_i = (i + 1/2) in / out and s = max(in / out, 1): Keys' cubic stretched by the downscale
  factor (the antialiasing of PIL's ``Image.resize``; upsampling uses the plain kernel).
  """
  _checks.check_count("in_size", in_size)
  _checks.check_count("out_size", out_size)
  scale = in_size / out_size
  stretch = max(scale, 1.0)
  centres = (np.arange(out_size) + 0.5) * scale
  w = _cubic((np.arange(in_size)[None, :] + 0.5 - centres[:, None]) / stretch)
  return w / w.sum(axis=1, keepdims=True)


def resize_antialiased(images: jax.Array, size: int = INCEPTION_SIZE) -> jax.Array:
  """y = W_h x W_w^T per image and channel, W = ``bicubic_weights``: clean-fid's resize.

  The resize of clean-fid (Parmar et al. 2022): PIL's ``Image.resize(..., BICUBIC)`` of each
  channel as a float ('F') image, antialiased when shrinking. Separable: columns then rows, each
  one matrix product at full float32 precision (the weights are computed in float64 on the host;
  ``jax.image.resize``'s float32 sample positions cost up to 5e-5 against PIL at 300 px).
  (B, H, W, C) -> (B, size, size, C).
  """
  _, h, w, _ = images.shape
  wh = jnp.asarray(bicubic_weights(h, size), jnp.float32)
  ww = jnp.asarray(bicubic_weights(w, size), jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("pw,bhwc->bhpc", ww, images, precision=hi)
  return jnp.einsum("oh,bhpc->bopc", wh, x, precision=hi)


def preprocess(images: jax.Array, size: int = INCEPTION_SIZE) -> jax.Array:
  """x -> clip(resize(rgb(clip(x, -1, 1))), -1, 1): model-space images to the network's input.

  images: (B, H, W, C) floats in [-1, 1] (the model space), C = 1 (grey, repeated to RGB) or 3,
  any H, W. Values are clipped to [-1, 1] first (as quantising samples to 8 bits does in clean-fid)
  and again after the bicubic resize, whose overshoot clean-fid clips at [0, 255]. The network
  reads [-1, 1] directly (pytorch-fid scales its [0, 1] input by 2x - 1), so no rescaling follows.
  Returns (B, size, size, 3) float32.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be NHWC with 1 or 3 channels, (B, H, W, 1|3), got shape "
                     f"{images.shape}.")
  _checks.check_count("size", size)
  x = jnp.clip(jnp.asarray(images, jnp.float32), -1.0, 1.0)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (size, size):
    x = jnp.clip(resize_antialiased(x, size), -1.0, 1.0)
  return x


def _check_range(images: np.ndarray) -> None:
  """Catch [0, 1] / [0, 255] mix-ups early; samples slightly outside [-1, 1] are clipped."""
  if not np.all(np.isfinite(images)):
    raise ValueError("images must be finite; got NaN or inf values.")
  if images.size and (images.min() < -1.5 or images.max() > 1.5):
    raise ValueError(f"images must be in model space [-1, 1], got values in [{images.min():.3g}, "
                     f"{images.max():.3g}]; map [0, 255] or [0, 1] data to [-1, 1] first.")


class InceptionFeatures:
  """images -> (pool3 features, logits) of the FID Inception-v3, in batches, compiled once.

  ``InceptionFeatures(params)`` binds the variables from ``inception_weights.load``. Calling it on
  (N, H, W, C) images in [-1, 1] returns the (N, 2048) pool3 features as a NumPy array;
  ``features_and_logits`` returns the (N, 1008) logits too. Images go through ``preprocess`` and
  the network in batches of ``batch_size`` (the last one padded), so the network compiles once,
  for (batch_size, 299, 299, 3); the resize compiles once per input size.
  """

  def __init__(self, params: Any, batch_size: int = 50):
    _checks.check_count("batch_size", batch_size)
    self.batch_size = batch_size
    self.params = jax.device_put(params)
    module = InceptionV3()
    self._network = jax.jit(module.apply)
    self._preprocess = jax.jit(preprocess)

  def features_and_logits(self, images) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"images must be NHWC with 1 or 3 channels, (N, H, W, 1|3), got shape "
                       f"{images.shape}.")
    _check_range(images)
    n = images.shape[0]
    features, logits = [], []
    for start in range(0, n, self.batch_size):
      batch = images[start:start + self.batch_size]
      rows = batch.shape[0]
      if rows < self.batch_size:
        pad = np.zeros((self.batch_size - rows,) + batch.shape[1:], batch.dtype)
        batch = np.concatenate([batch, pad])
      f, l = self._network(self.params, self._preprocess(batch))
      features.append(np.asarray(f)[:rows])
      logits.append(np.asarray(l)[:rows])
    if not features:
      return np.zeros((0, NUM_FEATURES), np.float32), np.zeros((0, NUM_CLASSES), np.float32)
    return np.concatenate(features), np.concatenate(logits)

  def __call__(self, images) -> np.ndarray:
    return self.features_and_logits(images)[0]

  def logits(self, images) -> np.ndarray:
    return self.features_and_logits(images)[1]
