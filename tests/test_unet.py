"""Image networks: the U-Net's batch boundary (vmap of the per-example score == the batched apply;
GroupNorm never mixes examples), its dropout key and labels, resampling against written-out
formulas, host-side initialisation against the distributions it names, the papers' parameter
counts (``jax.eval_shape``: nothing allocated or compiled) and EDM preconditioning around it.

Compiles are the cost here (several seconds each on 2 CPU cores), so one tiny network is compiled
once per module-scoped fixture and shared; shape checks go through ``jax.eval_shape``.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import nets, sdes
from diffusion_jax.nets import unet as unet_lib
from diffusion_jax.parameterization import EDMPrecond, NetworkScore, Prediction, edm_coefficients

K = 3  # classes of the labelled test network; label K is the null label
B = 4


def _perturbed(params, seed=0, scale=0.1):
  """The params plus N(0, scale^2) noise (drawn with NumPy: no compile), so that the
  zero-initialised output layers do not make every output ~1e-5 and every comparison vacuous."""
  rng = np.random.default_rng(seed)
  noise = lambda p: scale * rng.standard_normal(p.shape).astype(np.float32)  # noqa: E731
  return jax.tree.map(lambda p: np.asarray(p) + noise(p), params)


@pytest.fixture(scope="module")
def labelled():
  """A tiny labelled U-Net on 8x8x1 (one level of width 8 with attention: stem, a block, the middle
  pair and two decoder blocks; the two-level paths run in ``ncsnpp_16``), its params and a jitted
  apply."""
  module = nets.UNet(model_channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(8,),
                     dropout=0.3, num_classes=K, noise_scale=10.0)
  x = jr.normal(jr.key(1), (B, 8, 8, 1))
  t = jnp.array([0.1, 0.4, 0.7, 1.0])
  params = _perturbed(nets.init_params(module, jr.key(0), x, t, jnp.zeros((B,), jnp.int32)))
  apply = jax.jit(lambda p, x, t, c: module.apply(p, x, t, c))
  return module, params, x, t, apply


def test_output_has_input_shape_and_is_finite(labelled):
  module, params, x, t, apply = labelled
  out = apply(params, x, t, jnp.array([0, 1, 2, K]))
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))


def test_vmap_of_network_score_equals_batched_apply(labelled):
  """The batch-boundary contract: the per-example score_fn (a unit batch axis in and out) under vmap
  equals the batched network, each example carrying its own label."""
  module, params, x, t, apply = labelled
  sde = sdes.VPSDE()
  labels = jnp.array([2, 0, K, 1])
  score = NetworkScore(nets.as_model_fn(module), params, sde, Prediction.EPS)
  per_example = jax.jit(jax.vmap(lambda x, t, y: score.replace(cond=y)(x, t)))(x, t, labels)
  sigma = sde.sigma(t)[:, None, None, None]
  # Same network on the same rows; float32 summation order differs between batch sizes.
  np.testing.assert_allclose(per_example, -apply(params, x, t, labels) / sigma, rtol=1e-4,
                             atol=1e-5)


def test_no_condition_is_the_null_label(labelled):
  # cond=None traces to the very program of cond = K everywhere (compared, not compiled again).
  module, params, x, t, apply = labelled

  def jaxpr(make_cond):
    return str(jax.make_jaxpr(lambda p: module.apply(p, x, t, make_cond()))(params))

  assert jaxpr(lambda: None) == jaxpr(lambda: jnp.full((B,), K, jnp.int32))
  assert jaxpr(lambda: None) != jaxpr(lambda: jnp.full((B,), 0, jnp.int32))


def test_examples_do_not_mix(labelled):
  """GroupNorm normalises each example alone: changing example 2 leaves the others' outputs as they
  were, bit for bit up to float32 reassociation."""
  module, params, x, t, apply = labelled
  labels = jnp.array([0, 1, 2, K])
  before = apply(params, x, t, labels)
  after = apply(params, x.at[2].set(5.0 * x[2] + 1.0), t, labels)
  np.testing.assert_allclose(np.delete(after, 2, 0), np.delete(before, 2, 0), rtol=1e-6, atol=1e-6)
  assert not np.allclose(after[2], before[2], atol=1e-3)


def test_labels_change_the_output_and_are_checked(labelled):
  module, params, x, t, apply = labelled
  outs = [apply(params, x, t, jnp.full((B,), k, jnp.int32)) for k in range(K + 1)]  # no recompile
  for a in range(K + 1):
    for b in range(a):
      assert not np.allclose(outs[a], outs[b], atol=1e-3)
  with pytest.raises(ValueError, match=r"cond labels must lie in 0..3"):
    module.apply(params, x, t, jnp.array([0, 1, 2, K + 1]))
  with pytest.raises(ValueError, match="integer labels"):
    module.apply(params, x, t, jnp.zeros((B, 2)))


def test_dropout_only_with_train_and_a_key(labelled):
  module, params, x, t, apply = labelled
  labels = jnp.array([0, 1, 2, K])
  model_fn = nets.as_model_fn(module)
  train = jax.jit(lambda key: model_fn(params, x, t, labels, key=key, train=True))
  a, b = train(jr.key(1)), train(jr.key(2))
  eval_out = apply(params, x, t, labels)
  assert not np.allclose(a, b, atol=1e-4) and not np.allclose(a, eval_out, atol=1e-4)
  np.testing.assert_array_equal(a, train(jr.key(1)))  # the key decides the mask

  # Without a key (train=True) and with a key but train=False the network traces to the very same
  # computation as evaluation: compare the programs instead of compiling them again (with a key
  # and train=True the outputs above already differ).
  def jaxpr(**kw):
    return str(jax.make_jaxpr(lambda p: model_fn(p, x, t, labels, **kw))(params))

  reference = jaxpr()
  assert jaxpr(key=None, train=True) == reference
  assert jaxpr(key=jr.key(1), train=False) == reference


_NCSNPP = dict(embedding="fourier", encoder="skip", decoder="skip", resample_filter=(1, 3, 3, 1),
               channel_mult_noise=2)
_DDPM_RESIDUAL = dict(encoder="residual", resblock="ddpm", cond_dim=5, skip_rescale=False,
                      num_heads=2)


@pytest.mark.parametrize("size,channels,variant", [
    (8, 1, {}), (16, 3, _NCSNPP), (8, 3, _DDPM_RESIDUAL), (16, 1, _DDPM_RESIDUAL)])
def test_output_shapes_across_sizes_channels_and_variants(size, channels, variant):
  module = nets.UNet(model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attn_resolutions=(size // 2,), **variant)
  cond = jnp.zeros((2, 5)) if variant.get("cond_dim") else None
  x, t = jnp.zeros((2, size, size, channels)), jnp.ones((2,))
  out, _ = jax.eval_shape(lambda: module.init_with_output(jr.key(0), x, t, cond))  # traced once
  assert out.shape == x.shape
  if size == 8 and channels == 1:
    wide = module.clone(out_channels=3)
    out, _ = jax.eval_shape(lambda: wide.init_with_output(jr.key(0), x, t, cond))
    assert out.shape == (2, 8, 8, 3)


@pytest.fixture(scope="module")
def ncsnpp_16():
  """The NCSN++ options at 16x16x3 (FIR resampling, skip encoder/decoder, Fourier embedding,
  continuous condition), tiny, compiled once."""
  module = nets.UNet(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                     embedding="fourier", encoder="skip", decoder="skip",
                     resample_filter=(1, 3, 3, 1), cond_dim=5)
  x = jr.normal(jr.key(3), (B, 16, 16, 3))
  t = jnp.linspace(-1.0, 1.0, B)
  cond = jr.normal(jr.key(4), (B, 5))
  params = _perturbed(nets.init_params(module, jr.key(0), x, t, cond))
  return module, params, x, t, cond, jax.jit(module.apply)


def test_ncsnpp_variant_runs_and_keeps_examples_apart(ncsnpp_16):
  module, params, x, t, cond, apply = ncsnpp_16
  before = apply(params, x, t, cond)
  assert before.shape == x.shape and np.all(np.isfinite(before))
  after = apply(params, x.at[0].set(-x[0]), t, cond.at[0].set(0.0))
  np.testing.assert_allclose(after[1:], before[1:], rtol=1e-6, atol=1e-6)  # float32 reassociation
  assert not np.allclose(after[0], before[0], atol=1e-3)
  with pytest.raises(ValueError, match=r"cond must be a float array of shape \(4, 5\)"):
    module.apply(params, x, t, None)


def test_bad_inputs_name_the_argument():
  module = nets.UNet(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
  x, t = jnp.zeros((1, 8, 8, 1)), jnp.ones((1,))

  def init(m=module, x=x, t=t, cond=None):
    jax.eval_shape(lambda: m.init(jr.key(0), x, t, cond))

  with pytest.raises(ValueError, match="x must be NHWC"):
    init(x=jnp.zeros((8, 8, 1)))
  with pytest.raises(ValueError, match="divisible by"):
    init(x=jnp.zeros((1, 5, 5, 1)))
  with pytest.raises(ValueError, match=r"t must have shape \(1,\)"):
    init(t=jnp.ones((2,)))
  with pytest.raises(ValueError, match="unconditional"):
    init(cond=jnp.zeros((1,), jnp.int32))
  with pytest.raises(ValueError, match="embedding must be one of"):
    init(m=module.clone(embedding="sinusoid"))
  with pytest.raises(ValueError, match="resample_filter"):
    init(m=module.clone(resample_filter=(1, 2, 1)))
  with pytest.raises(ValueError, match="not both"):
    init(m=module.clone(num_classes=2, cond_dim=3))
  with pytest.raises(ValueError, match="dropout"):
    init(m=module.clone(dropout=1.0))


def test_group_count_divides_the_width():
  # min(32, C // 4) (EDM / score_sde), lowered to a divisor of C, at least 1.
  assert [unet_lib.num_groups(c) for c in (1, 4, 8, 16, 64, 128, 256, 136, 6)] == \
         [1, 1, 2, 4, 16, 32, 32, 17, 1]


def test_positional_embedding_matches_ddpm_formula():
  t = jnp.array([0.0, 3.0, 999.0])
  emb = unet_lib.positional_embedding(t, 8)
  for k in range(4):  # w_k = 10000^(-k / (K - 1)) with K = 4 (score_sde / EDM, endpoint=True)
    w = 10_000.0 ** (-k / 3)
    # float32 sin / cos of arguments up to 999.
    np.testing.assert_allclose(emb[:, k], np.sin(np.asarray(t) * w), atol=2e-4)
    np.testing.assert_allclose(emb[:, 4 + k], np.cos(np.asarray(t) * w), atol=2e-4)


def _downsample_reference(x, taps):
  """Slow loop: out[i, j] = sum_uv f[u, v] x[2 i + u - p, 2 j + v - p] with f = outer(taps, taps) /
  sum^2, zero padding p = (len(taps) - 1) // 2 (score_sde / EDM's FIR downsampling)."""
  f = np.outer(taps, taps) / np.sum(taps) ** 2
  k, p = len(taps), (len(taps) - 1) // 2
  xp = np.pad(x, ((0, 0), (p, k), (p, k), (0, 0)))
  h, w = x.shape[1] // 2, x.shape[2] // 2
  out = np.zeros((x.shape[0], h, w, x.shape[3]), x.dtype)
  for i in range(h):
    for j in range(w):
      out[:, i, j, :] = np.einsum("bijc,ij->bc", xp[:, 2 * i:2 * i + k, 2 * j:2 * j + k, :], f)
  return out


@pytest.mark.parametrize("taps", [(1, 1), (1, 3, 3, 1)])
def test_resampling_against_loops_and_adjointness(taps):
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
  y = np.random.default_rng(1).standard_normal((2, 4, 4, 3)).astype(np.float32)
  down = np.asarray(unet_lib.downsample(jnp.asarray(x), taps))
  # float32 sums of <= 16 terms.
  np.testing.assert_allclose(down, _downsample_reference(x, taps), rtol=1e-5, atol=1e-6)
  up = np.asarray(unet_lib.upsample(jnp.asarray(y), taps))
  assert up.shape == (2, 8, 8, 3)
  # upsample is 4 x the transpose of downsample: <up(y), x> = 4 <y, down(x)>.
  np.testing.assert_allclose(np.vdot(up, x), 4 * np.vdot(y, down), rtol=1e-4)  # float32 dots of 384
  if taps == (1, 1):
    # float32 means of 4 terms, summed in another order.
    box = x.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(down, box, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(y, 2, axis=1), 2, axis=2))


def test_init_params_draws_the_named_distributions_on_the_host():
  module = nets.UNet(model_channels=32, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                     num_classes=2)
  x, t, y = jnp.zeros((3, 8, 8, 2)), jnp.ones((3,)), jnp.zeros((3,), jnp.int32)
  # strict: every parameter of the U-Net and of the NCSN is drawn by NumPy (no fallback).
  params = nets.init_params(module, jr.key(0), x, t, y, strict=True)
  nets.init_params(nets.NCSN(features=8, channel_mult=(1,), num_res_blocks=1, embed_dim=8),
                   jr.key(0), x, t, strict=True)
  # The same tree as flax's own init (traced only), and independent of the example batch size.
  reference = jax.eval_shape(lambda: module.init(jr.key(0), x[:1], t[:1], y[:1]))
  assert jax.tree.structure(params) == jax.tree.structure(reference)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference)
  again = nets.init_params(module, jr.key(0), x[:1], t[:1], y[:1])
  jax.tree.map(np.testing.assert_array_equal, params, again)
  other = nets.init_params(module, jr.key(1), x, t, y)
  p = params["params"]
  assert not np.allclose(p["stem"]["kernel"], other["params"]["stem"]["kernel"])
  # Glorot uniform: U[-a, a] with a^2 = 6 / (fan_in + fan_out); conv fans count the 3x3 window.
  kernel = np.asarray(p["enc8_block0"]["conv0"]["kernel"])  # (3, 3, 32, 32)
  limit = math.sqrt(6.0 / (9 * 32 + 9 * 32))
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.99 * limit
  # Variance a^2 / 3 from 9216 draws: relative std of the estimate sqrt(0.8 / 9216) ~ 0.01; 5%.
  np.testing.assert_allclose(kernel.var(), limit**2 / 3, rtol=0.05)
  # The "zero" layers (second conv of a block, output conv) are ~1e-5 of that.
  assert np.abs(p["enc8_block0"]["conv1"]["kernel"]).max() < 1e-4 * limit
  np.testing.assert_array_equal(p["enc8_block0"]["norm0"]["scale"], 1.0)
  np.testing.assert_array_equal(p["enc8_block0"]["norm0"]["bias"], 0.0)
  table = np.asarray(p["label_embedding"]["embedding"])  # (3, 32) ~ N(0, 1)
  assert table.shape == (3, 32) and 0.6 < table.std() < 1.4  # 96 draws: std within +-40%


def test_init_params_falls_back_to_eager_init_for_other_initialisers():
  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, t, cond=None, *, train=False):
      return nn.Dense(x.shape[-1])(x) * t[:, None]

  params = nets.init_params(Tiny(), jr.key(0), jnp.ones((2, 3)), jnp.ones((2,)))
  expected = Tiny().init(jr.key(0), jnp.ones((1, 3)), jnp.ones((1,)))
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  with pytest.raises(ValueError, match="not HostInit"):
    nets.init_params(Tiny(), jr.key(0), jnp.ones((2, 3)), jnp.ones((2,)), strict=True)
  with pytest.raises(ValueError, match="t must be a scalar or have shape"):
    nets.init_params(Tiny(), jr.key(0), jnp.ones((2, 3)), jnp.ones((3,)))


def _reference_count(*, model_channels, channel_mult, num_res_blocks, attn_resolutions,
                     channel_mult_noise, encoder, resolution=32, channels=3):
  """Parameters of the reference networks, layer by layer as NVlabs/edm's SongUNet.__init__ lists
  them (score_sde's ncsnpp.py builds the same layers for these options): Linear = i o + o,
  Conv k x k = k^2 i o + o, GroupNorm = 2 C."""
  emb, noise = 4 * model_channels, channel_mult_noise * model_channels

  def conv(cin, cout, k):
    return k * k * cin * cout + cout

  def block(cin, cout, attention=False, resample=False):
    n = 2 * cin + conv(cin, cout, 3) + emb * cout + cout + 2 * cout + conv(cout, cout, 3)
    if cin != cout or resample:
      n += conv(cin, cout, 1)
    if attention:  # norm, qkv, proj (score_sde: norm + four 1x1 "NIN" layers, the same count)
      n += 2 * cout + conv(cout, 3 * cout, 1) + conv(cout, cout, 1)
    return n

  total = noise * emb + emb + emb * emb + emb  # map_layer0, map_layer1
  cout, caux, skips = channels, channels, []
  for level, mult in enumerate(channel_mult):
    res = resolution >> level
    if level == 0:
      total += conv(cout, model_channels, 3)
      cout = model_channels
    else:
      total += block(cout, cout, resample=True)
      if encoder == "residual":
        total += conv(caux, cout, 3)
        caux = cout
    skips.append(cout)
    for _ in range(num_res_blocks):
      total += block(cout, model_channels * mult, attention=res in attn_resolutions)
      cout = model_channels * mult
      skips.append(cout)
  for level, mult in reversed(list(enumerate(channel_mult))):
    res = resolution >> level
    if level == len(channel_mult) - 1:
      total += block(cout, cout, attention=True) + block(cout, cout)
    else:
      total += block(cout, cout, resample=True)
    for i in range(num_res_blocks + 1):
      total += block(cout + skips.pop(), model_channels * mult,
                     attention=i == num_res_blocks and res in attn_resolutions)
      cout = model_channels * mult
  return total + 2 * cout + conv(cout, channels, 3)  # output norm and conv


def _count(module, size=32, channels=3):
  x, t = jnp.zeros((1, size, size, channels)), jnp.ones((1,))
  shapes = jax.eval_shape(lambda: module.init(jr.key(0), x, t))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


@pytest.mark.parametrize("factory,expected,fields", [
    # score_sde's configs/vp/cifar10_ddpmpp_continuous.py (sub-VP uses the same network).
    (nets.ddpmpp_cifar10, 61_804_419,
     dict(channel_mult=(1, 2, 2, 2), channel_mult_noise=1, encoder="standard")),
    # configs/ve/cifar10_ncsnpp_continuous.py; score_sde's code adds its 128 Fourier frequencies.
    (nets.ncsnpp_cifar10, 62_758_787,
     dict(channel_mult=(1, 2, 2, 2), channel_mult_noise=2, encoder="residual")),
    # EDM config F, 55.73M in Karras et al. 2022, Table 7 (without the 1,152 augmentation weights).
    (nets.edm_ddpmpp_cifar10, 55_732_739,
     dict(channel_mult=(2, 2, 2), channel_mult_noise=1, encoder="standard")),
    (nets.edm_ncsnpp_cifar10, 56_395_523,
     dict(channel_mult=(2, 2, 2), channel_mult_noise=2, encoder="residual")),
])
def test_paper_configurations_have_the_papers_parameter_counts(factory, expected, fields):
  reference = _reference_count(model_channels=128, num_res_blocks=4, attn_resolutions=(16,),
                               **fields)
  assert reference == expected
  assert _count(factory()) == expected


def test_deep_configurations_add_four_blocks_per_level():
  # DDPM++ / NCSN++ cont. (deep): 8 blocks per level (score_sde's *_deep_continuous.py configs).
  for factory, expected, noise, encoder in [(nets.ddpmpp_cifar10, 106_632_579, 1, "standard"),
                                            (nets.ncsnpp_cifar10, 107_586_947, 2, "residual")]:
    assert factory(deep=True).num_res_blocks == 8
    assert _reference_count(model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=8,
                            attn_resolutions=(16,), channel_mult_noise=noise,
                            encoder=encoder) == expected


def test_edm_preconditioning_wraps_the_unet(labelled):
  """D(x; s) = c_skip x~ + c_out F(c_in x~; c_noise), x~ = x / alpha (Karras et al. 2022, eq. 7):
  the wrapper around the U-Net against the formula assembled from the raw network by hand."""
  module, params, x, t, apply = labelled
  sde = sdes.VESDE(sigma_min=0.01, sigma_max=50.0)
  labels = jnp.array([0, 1, 2, K])
  # The raw network is the fixture's compiled apply (the module's model_fn, already compiled): the
  # wrapper's arithmetic runs outside jit and nothing compiles again.
  precond = EDMPrecond(lambda p, x, t, c, key=None, train=False: apply(p, x, t, c), sde,
                       sigma_data=0.5)

  def denoise(p, x, t):
    return precond(p, x, t, labels)

  x_t = 3.0 * x
  out = denoise(params, x_t, t)
  assert out.shape == x.shape and np.all(np.isfinite(out))
  alpha, sigma = sde.alpha(t), sde.sigma(t)
  s = sigma / alpha
  c_skip, c_out, c_in, c_noise = edm_coefficients(s, 0.5)
  e = lambda a: a[:, None, None, None]  # noqa: E731
  x_tilde = x_t / e(alpha)
  raw = apply(params, e(c_in) * x_tilde, c_noise, labels)
  # The same float32 operations in another order: a few ulps of outputs of size ~1.
  np.testing.assert_allclose(out, e(c_skip) * x_tilde + e(c_out) * raw, rtol=1e-5, atol=1e-5)
  # At initialisation F ~ 0 (zero-initialised output convolution), so D = c_skip x~: the noisy
  # input shrunk towards 0 by sd^2 / (s^2 + sd^2).
  fresh = nets.init_params(module, jr.key(0), x, t, labels)
  np.testing.assert_allclose(denoise(fresh, x_t, t), e(c_skip) * x_tilde, atol=1e-4)  # F ~ 1e-5


def test_cond_instance_norm_pp_matches_its_formula():
  """z_k = gamma_k (x_k - mu_k) / s_k + beta_k + alpha_k (mu_k - m) / v, written out in NumPy."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 4, 3)).astype(np.float32) * 2.0 + 1.0
  emb = rng.standard_normal((2, 5)).astype(np.float32)
  norm = nets.CondInstanceNormPP()
  variables = _perturbed(nets.init_params(_NormAdapter(), jr.key(0), x, jnp.ones((2,)), emb),
                         scale=0.5)
  out = np.asarray(jax.jit(_NormAdapter().apply)(variables, x, jnp.ones((2,)), emb))
  w = variables["params"]["norm"]["modulation"]
  mod = emb @ np.asarray(w["kernel"]) + np.asarray(w["bias"])  # (2, 9)
  gamma, beta, alpha = 1 + mod[:, :3], mod[:, 3:6], 1 + mod[:, 6:]
  for b in range(2):
    mu = x[b].mean(axis=(0, 1))
    s = np.sqrt(x[b].var(axis=(0, 1)) + norm.epsilon)
    m, v = mu.mean(), np.sqrt(mu.var() + norm.epsilon)
    expected = gamma[b] * (x[b] - mu) / s + beta[b] + alpha[b] * (mu - m) / v
    np.testing.assert_allclose(out[b], expected, rtol=1e-4, atol=1e-5)  # float32 moments of 16


class _NormAdapter(nn.Module):
  """CondInstanceNormPP with the network signature, so init_params can build it."""

  @nn.compact
  def __call__(self, x, t, cond=None, *, train=False):
    return nets.CondInstanceNormPP(name="norm")(x, cond)


def test_ncsn_batch_boundary_and_noise_conditioning():
  module = nets.NCSN(features=8, channel_mult=(1, 2), num_res_blocks=1, embed_dim=16,
                     fourier_scale=1.0)
  x = jr.normal(jr.key(5), (B, 8, 8, 1))
  log_sigma = jnp.log(jnp.array([0.01, 0.1, 1.0, 10.0]))
  params = _perturbed(nets.init_params(module, jr.key(0), x, log_sigma))
  run = jax.jit(module.apply)
  batched = run(params, x, log_sigma)
  assert batched.shape == x.shape and np.all(np.isfinite(batched))
  # Instance statistics are per example: changing example 0 leaves the others unchanged (float32
  # reassociation aside), so vmap over examples and the batched call agree (the model_fn adapter
  # is the U-Net's, tested above).
  changed = run(params, x.at[0].set(3.0 * x[0] - 1.0), log_sigma)
  np.testing.assert_allclose(changed[1:], batched[1:], rtol=1e-6, atol=1e-6)
  # The same images at other noise levels give other outputs (the level enters every CIN++).
  assert not np.allclose(run(params, x, log_sigma[::-1]), batched, atol=1e-3)
  with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
    module.apply(params, x, log_sigma[:2])
