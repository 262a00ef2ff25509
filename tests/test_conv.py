"""Conv2D against flax's nn.Conv, and its custom weight gradients against XLA's and finite differences.

The references are independent of the code under test: the forward pass against ``nn.Conv`` with
the same parameters; gradients against ``jax.grad`` of the plain ``lax.conv_general_dilated``
(XLA's own transpose convolutions); and, in float64, against central finite differences of the
loss, which depend on no gradient code at all.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax import lax

from diffusion_jax.nets.conv import Conv2D, conv2d, resolve_weight_grad

METHODS = ("xla", "im2col", "matmul")
# (H, W, cin, cout, kernel, stride): odd and even sizes (stride 2 drops the last row of an odd
# padded input), a non-square image, 1x1 and 5x5 kernels; a 5x3 kernel for conv2d alone.
CASES = [(8, 8, 3, 5, 3, 1), (8, 8, 3, 5, 3, 2), (7, 6, 2, 4, 3, 2), (5, 9, 4, 3, 1, 1),
         (6, 7, 2, 3, 5, 2)]
GRAD_CASES = CASES + [(6, 7, 2, 3, (5, 3), 2)]


def _padding(kernel_size):
  """p = (k - 1) // 2 on both sides of each spatial axis (PyTorch's padding=p; lax's SAME at stride 1)."""
  return tuple(((k - 1) // 2, (k - 1) // 2) for k in kernel_size)


def _reference_conv(x, kernel, stride):
  return lax.conv_general_dilated(x, kernel, (stride, stride), _padding(kernel.shape[:2]),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _data(case, key=0, batch=3, dtype=jnp.float32):
  h, w, cin, cout, k, _ = case
  kh, kw = (k, k) if isinstance(k, int) else k
  kx, kk, kg = jr.split(jr.PRNGKey(key), 3)
  x = jr.normal(kx, (batch, h, w, cin), dtype)
  kernel = jr.normal(kk, (kh, kw, cin, cout), dtype) / np.sqrt(kh * kw * cin)
  return x, kernel, kg


@pytest.mark.parametrize("case", CASES)
def test_module_matches_nn_conv(case):
  h, w, cin, cout, k, s = case
  x, _, _ = _data(case)
  init = dict(kernel_init=nn.initializers.normal(0.3), bias_init=nn.initializers.normal(0.1))
  ours = Conv2D(cout, kernel_size=k, strides=s, **init)
  theirs = nn.Conv(cout, kernel_size=(k, k), strides=s, padding=_padding((k, k)), **init)
  p_ours = ours.init(jr.PRNGKey(1), x)
  p_theirs = theirs.init(jr.PRNGKey(1), x)
  # Same names, shapes and values: a checkpoint of one loads into the other.
  assert jax.tree.structure(p_ours) == jax.tree.structure(p_theirs)
  for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs)):
    np.testing.assert_array_equal(a, b)
  # The forward pass is the same XLA convolution and bias add: bitwise equal.
  apply_all = jax.jit(lambda p, x: [ours.clone(weight_grad=m).apply(p, x)
                                    for m in METHODS + ("auto",)] + [theirs.apply(p, x)])
  *ys, y_ref = apply_all(p_theirs, x)
  for y in ys:
    np.testing.assert_array_equal(y, y_ref)


def _grads(x, kernel, g, stride):
  """(dx, dW) of the linear functional sum(conv(x, W) * g), for the reference and each method."""
  def loss(method):
    if method == "reference":
      return lambda x, k: jnp.sum(_reference_conv(x, k, stride) * g)
    return lambda x, k: jnp.sum(conv2d(x, k, stride, weight_grad=method) * g)
  return {m: jax.grad(loss(m), argnums=(0, 1))(x, kernel) for m in ("reference",) + METHODS}


@pytest.mark.parametrize("case", GRAD_CASES)
def test_gradients_match_xla_autodiff(case):
  x, kernel, kg = _data(case)
  g = jr.normal(kg, _reference_conv(x, kernel, case[-1]).shape)
  grads = jax.jit(_grads, static_argnums=3)(x, kernel, g, case[-1])
  dx_ref, dw_ref = grads.pop("reference")
  scale = float(jnp.max(jnp.abs(dw_ref)))
  for method, (dx, dw) in grads.items():
    # The input gradient is XLA's transpose convolution in every method: identical.
    np.testing.assert_array_equal(dx, dx_ref, err_msg=method)
    # dW sums B * Ho * Wo <= 3 * 81 products of O(1) terms in another order than XLA's
    # convolution: float32 rounding ~ sqrt(243) * 6e-8 relative; 1e-5 of the largest entry leaves
    # a wide margin and is far below any indexing mistake (an O(1) relative error).
    np.testing.assert_allclose(dw, dw_ref, rtol=0, atol=1e-5 * scale, err_msg=method)


@pytest.mark.x64
@pytest.mark.parametrize("stride", (1, 2))
def test_weight_gradient_matches_finite_differences(stride):
  case = (5, 4, 2, 3, 3, stride)
  with jax.enable_x64(True):
    x, kernel, kg = _data(case, batch=2, dtype=jnp.float64)
    g = jr.normal(kg, _reference_conv(x, kernel, stride).shape, jnp.float64)
    # A nonlinear loss, so the cotangent reaching the convolution depends on W.
    loss = lambda k, m: jnp.sum(jnp.tanh(conv2d(x, k, stride, weight_grad=m)) * g)
    eps = 1e-6
    basis = jnp.eye(kernel.size, dtype=jnp.float64).reshape((-1,) + kernel.shape) * eps
    central = jax.vmap(lambda e: (loss(kernel + e, "xla") - loss(kernel - e, "xla")) / (2 * eps))
    fd = np.asarray(jax.jit(central)(basis)).reshape(kernel.shape)
    for method in ("im2col", "matmul"):
      dw = np.asarray(jax.jit(jax.grad(loss), static_argnums=1)(kernel, method))
      # Central differences in float64 with eps = 1e-6: truncation O(eps^2 |f'''|) ~ 1e-12 and
      # rounding O(1e-16 |f| / eps) ~ 1e-10 on O(1) entries; 1e-7 leaves a 1000x margin.
      np.testing.assert_allclose(dw, fd, rtol=0, atol=1e-7, err_msg=method)


@pytest.mark.parametrize("method", ("im2col", "matmul"))
def test_jit_vmap_and_module_gradient(method):
  case = (6, 6, 2, 3, 3, 2)
  x, _, kg = _data(case, batch=4)
  module = Conv2D(3, strides=2, weight_grad=method)
  params = module.init(jr.PRNGKey(2), x[:1])
  loss = lambda p, xb: jnp.sum(jnp.sin(module.apply(p, xb)))
  batched = jax.jit(jax.grad(loss))(params, x)
  # vmap over examples (each with a unit batch axis) sums to the batched gradient.
  per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, x[:, None])
  summed = jax.tree.map(lambda a: a.sum(0), per_example)
  xla_module = module.clone(weight_grad="xla")
  reference = jax.grad(lambda p, xb: jnp.sum(jnp.sin(xla_module.apply(p, xb))))(params, x)
  for a, b, c in zip(jax.tree.leaves(batched), jax.tree.leaves(summed), jax.tree.leaves(reference)):
    # float32 sums of <= 4 * 9 * 2 terms in different orders: ~1e-6 relative; 1e-5 with margin.
    # An entry where the terms cancel keeps the rounding of the terms, not of its own small value,
    # so the absolute part scales with the leaf's largest entry (a CI run measured 1.2e-6 on an
    # entry of 0.012 in a leaf reaching 6.1: 2e-7 of the leaf's scale).
    atol = 1e-6 * max(1.0, float(np.abs(c).max()))
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(b, c, rtol=1e-5, atol=atol)


def test_auto_and_bad_input():
  on_cpu = jax.default_backend() == "cpu"
  assert resolve_weight_grad("auto", (1, 1)) == ("matmul" if on_cpu else "xla")
  assert resolve_weight_grad("auto", (3, 3)) == "xla"
  x = jnp.zeros((1, 4, 4, 2))
  with pytest.raises(ValueError, match="weight_grad"):
    conv2d(x, jnp.zeros((3, 3, 2, 1)), weight_grad="matmul!")
  with pytest.raises(ValueError, match="kernel"):
    conv2d(x, jnp.zeros((3, 3, 3, 1)))
  with pytest.raises(ValueError, match="odd"):
    conv2d(x, jnp.zeros((2, 3, 2, 1)))
  with pytest.raises(ValueError, match="kernel_size"):
    Conv2D(4, kernel_size=2).init(jr.PRNGKey(0), x)
  with pytest.raises(ValueError, match="strides"):
    conv2d(x, jnp.zeros((3, 3, 2, 1)), 0)
  with pytest.raises(ValueError, match=r"shape \(B, H, W, C\)"):
    Conv2D(4).init(jr.PRNGKey(0), jnp.zeros((4, 4, 2)))
