"""Networks: time embeddings against their formulas, the model_fn contract (conditions, dropout key
and train flag), the MLP's batch boundary and errors."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import sdes
from diffusion_jax.nets import GaussianFourierEmbedding, ScoreMLP, SinusoidalEmbedding, as_model_fn
from diffusion_jax.parameterization import NetworkScore, Prediction

TS = jnp.array([0.0, 1e-3, 0.25, 0.5, 1.0])


def test_sinusoidal_embedding_matches_transformer_formula():
  features, period, scale = 8, 100.0, 10.0
  emb = SinusoidalEmbedding(features, max_period=period, time_scale=scale).apply({}, TS)
  for k in range(features // 2):
    # Written out per frequency: omega_k = period^(-k / K), K = features / 2.
    omega = period ** (-k / (features // 2))
    np.testing.assert_allclose(emb[:, k], np.sin(scale * omega * np.asarray(TS)), atol=1e-6)
    np.testing.assert_allclose(emb[:, features // 2 + k], np.cos(scale * omega * np.asarray(TS)),
                               atol=1e-6)  # float32 sin/cos of arguments up to 10


def test_fourier_embedding_is_unit_circle_features_with_gaussian_frequencies():
  features = 4096
  emb = GaussianFourierEmbedding(features, scale=3.0, seed=1).apply({}, TS)
  half = features // 2
  # Each (sin, cos) pair lies on the unit circle: |emb(t)|^2 = K for every t.
  np.testing.assert_allclose(jnp.sum(emb**2, axis=-1), half, rtol=1e-5)  # float32 sum of 2048 terms
  # At t = 0 every phase is 0; at t = 1 the phases are 2 pi w with w ~ N(0, scale^2), so
  # E[cos(2 pi w)] = exp(-2 pi^2 scale^2) ~ 0 and E[sin] = 0 (symmetric law).
  np.testing.assert_array_equal(emb[0], jnp.concatenate([jnp.zeros(half), jnp.ones(half)]))
  # Monte-Carlo over 2048 frequencies: the std of a mean of bounded terms is < 1/sqrt(2048) = 0.022.
  assert abs(float(jnp.mean(emb[-1, :half]))) < 0.1
  assert abs(float(jnp.mean(emb[-1, half:]))) < 0.1
  # Small t: sin(2 pi w t) ~ 2 pi w t, so mean of sin^2 / (2 pi t)^2 estimates E[w^2] = scale^2.
  small = GaussianFourierEmbedding(features, scale=3.0, seed=1).apply({}, jnp.array([1e-4]))
  w2 = jnp.mean(small[0, :half] ** 2) / (2 * math.pi * 1e-4) ** 2
  # chi-square with 2048 dof: relative std sqrt(2 / 2048) = 0.03; 0.15 is five of those.
  np.testing.assert_allclose(w2, 9.0, rtol=0.15)


def test_fourier_embedding_depends_only_on_seed():
  a = GaussianFourierEmbedding(16, seed=0).apply({}, TS)
  b = GaussianFourierEmbedding(16, seed=0).apply({}, TS)
  c = GaussianFourierEmbedding(16, seed=1).apply({}, TS)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


@pytest.mark.parametrize("module", [GaussianFourierEmbedding(7), SinusoidalEmbedding(0)])
def test_embedding_rejects_odd_features(module):
  with pytest.raises(ValueError, match="features"):
    module.apply({}, TS)


def test_embedding_rejects_unbatched_time():
  with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
    SinusoidalEmbedding(8).apply({}, jnp.zeros((2, 3)))


def _init(model, dim=2, cond=None):
  x, t = jnp.zeros((1, dim)), jnp.ones((1,))
  return jax.jit(model.init)(jr.key(0), x, t, cond)


@pytest.fixture(scope="module")
def conditional():
  model = ScoreMLP(hidden_sizes=(32, 32), embed_dim=16, num_classes=3,
                   time_embedding=SinusoidalEmbedding(16))
  return model, _init(model, 3, jnp.zeros((1,), jnp.int32))


@pytest.fixture(scope="module")
def embedded():
  model = ScoreMLP(hidden_sizes=(32,), embed_dim=16, cond_dim=5)
  return model, _init(model, 3, jnp.zeros((1, 5)))


def test_vmap_of_network_score_equals_batched_apply():
  """The batch-boundary contract: per-example score_fn under vmap == the batched network."""
  model = ScoreMLP(hidden_sizes=(32, 32), embed_dim=16)
  params = _init(model)
  sde = sdes.VPSDE()
  x = jr.normal(jr.key(1), (16, 2))
  t = jr.uniform(jr.key(2), (16,), minval=0.01, maxval=1.0)
  score_fn = NetworkScore(as_model_fn(model), params, sde, Prediction.EPS)
  per_example = jax.jit(jax.vmap(score_fn.raw))(x, t)
  batched = jax.jit(model.apply)(params, x, t)
  # Same network on the same rows; only float32 summation order may differ.
  np.testing.assert_allclose(per_example, batched, rtol=1e-5, atol=1e-6)
  # And the score reading is -eps / sigma(t).
  np.testing.assert_allclose(jax.jit(jax.vmap(score_fn))(x, t), -batched / sde.sigma(t)[:, None],
                             rtol=1e-5, atol=1e-5)


def test_vmap_with_labels_equals_batched_apply(conditional):
  model, params = conditional
  x = jr.normal(jr.key(1), (6, 3))
  t = jnp.linspace(0.1, 1.0, 6)
  labels = jnp.array([0, 1, 2, 3, 0, 1])  # 3 is the null label
  score_fn = NetworkScore(as_model_fn(model), params, sdes.VPSDE())
  per_example = jax.jit(jax.vmap(lambda x, t, y: score_fn.replace(cond=y).raw(x, t)))(x, t, labels)
  batched = jax.jit(model.apply)(params, x, t, labels)
  np.testing.assert_allclose(per_example, batched, rtol=1e-5, atol=1e-6)  # float32 summation order


def test_vmap_with_embeddings_equals_batched_apply(embedded):
  model, params = embedded
  x, t = jr.normal(jr.key(1), (6, 3)), jnp.linspace(0.1, 1.0, 6)
  cond = jr.normal(jr.key(2), (6, 5))
  score_fn = NetworkScore(as_model_fn(model), params, sdes.VESDE())
  per_example = jax.jit(jax.vmap(lambda x, t, c: score_fn.replace(cond=c).raw(x, t)))(x, t, cond)
  batched = jax.jit(model.apply)(params, x, t, cond)
  np.testing.assert_allclose(per_example, batched, rtol=1e-5, atol=1e-6)  # float32 summation order
  # The embedding reaches the output: another condition, another prediction, row by row.
  other = jax.jit(model.apply)(params, x, t, cond + 1.0)
  assert np.all(np.max(np.abs(np.asarray(other - batched)), axis=1) > 1e-4)


def test_cond_dim_is_inferred_at_init():
  model = ScoreMLP(hidden_sizes=(8,), embed_dim=8)
  params = _init(model, 2, jnp.zeros((1, 4)))
  assert params["params"]["cond_projection"]["kernel"].shape == (4, 8)


def test_label_none_is_the_null_label_and_labels_matter(conditional):
  model, params = conditional
  x, t = jr.normal(jr.key(1), (4, 3)), jnp.full((4,), 0.3)
  apply = jax.jit(model.apply)
  null = jnp.full((4,), model.null_label)
  np.testing.assert_array_equal(apply(params, x, t), apply(params, x, t, null))
  out0 = apply(params, x, t, jnp.zeros((4,), jnp.int32))
  out1 = apply(params, x, t, jnp.ones((4,), jnp.int32))
  assert float(jnp.max(jnp.abs(out0 - out1))) > 1e-4  # the embedding rows differ at init


DROPOUT = ScoreMLP(hidden_sizes=(64, 64), embed_dim=8, dropout_rate=0.5)


def test_dropout_acts_only_in_training_with_a_key():
  params = _init(DROPOUT)
  model_fn = jax.jit(as_model_fn(DROPOUT), static_argnames="train")
  x, t = jr.normal(jr.key(1), (8, 2)), jnp.full((8,), 0.4)
  plain = model_fn(params, x, t, None)
  # No dropout without train=True, nor without a key (key=None means no dropout).
  np.testing.assert_array_equal(model_fn(params, x, t, None, key=jr.key(5), train=False), plain)
  np.testing.assert_array_equal(model_fn(params, x, t, None, train=True), plain)
  a = model_fn(params, x, t, None, key=jr.key(5), train=True)
  np.testing.assert_array_equal(model_fn(params, x, t, None, key=jr.key(5), train=True), a)
  b = model_fn(params, x, t, None, key=jr.key(6), train=True)
  # Rate 0.5 over 64 units: every row sees a different mask, so each row's output moves.
  assert np.all(np.max(np.abs(np.asarray(a - plain)), axis=1) > 1e-4)
  assert np.all(np.max(np.abs(np.asarray(a - b)), axis=1) > 1e-4)


def test_dropout_keeps_the_expected_activation():
  """Inverted dropout: each unit is zeroed with probability p and scaled by 1/(1-p), so a
  network whose last hidden layer feeds a linear read-out keeps its mean over masks."""
  # With a single hidden layer the output is linear in the mask: its mean over masks is the
  # deterministic output.
  single = ScoreMLP(hidden_sizes=(64,), embed_dim=8, dropout_rate=0.5)
  p1 = _init(single)
  fn1 = jax.jit(as_model_fn(single), static_argnames="train")
  x, t = jnp.ones((1, 2)), jnp.full((1,), 0.4)
  keys = jr.split(jr.key(9), 4000)
  outs = jax.vmap(lambda k: fn1(p1, x, t, None, key=k, train=True)[0])(keys)
  plain = fn1(p1, x, t, None)[0]
  # Monte-Carlo mean over 4000 masks: 5 standard errors of the per-output spread.
  se = np.asarray(jnp.std(outs, 0)) / np.sqrt(4000)
  assert np.all(np.abs(np.asarray(jnp.mean(outs, 0) - plain)) < 5 * se)
  assert np.all(se > 0)  # the masks did vary the output


def test_as_model_fn_adapters_of_equal_modules_are_equal():
  # Static structure of NetworkScore: equal adapters mean no recompilation for a rebuilt one.
  assert as_model_fn(ScoreMLP(hidden_sizes=(8,))) == as_model_fn(ScoreMLP(hidden_sizes=(8,)))
  assert hash(as_model_fn(ScoreMLP(hidden_sizes=(8,)))) == hash(as_model_fn(ScoreMLP(hidden_sizes=(8,))))
  with pytest.raises(TypeError, match="module must be a flax.linen Module"):
    as_model_fn(lambda params, x, t: x)


def test_output_depends_on_time():
  model = ScoreMLP(hidden_sizes=(16,), embed_dim=8)
  params = _init(model)
  x = jnp.ones((2, 2))
  apply = jax.jit(model.apply)
  a = apply(params, x, jnp.array([0.1, 0.1]))
  b = apply(params, x, jnp.array([0.1, 0.9]))
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.allclose(a[1], b[1])


def test_network_errors(conditional, embedded):
  model = ScoreMLP(hidden_sizes=(8,), embed_dim=8)
  params = _init(model)
  with pytest.raises(ValueError, match=r"x must have shape \(B, D\)"):
    model.apply(params, jnp.zeros((2,)), jnp.zeros((2,)))
  with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
    model.apply(params, jnp.zeros((3, 2)), jnp.zeros((2,)))
  with pytest.raises(ValueError, match="num_classes=None"):
    model.apply(params, jnp.zeros((2, 2)), jnp.zeros((2,)), jnp.zeros((2,), jnp.int32))
  cmodel, cparams = conditional
  with pytest.raises(ValueError, match=r"cond must be integer labels of shape \(2,\)"):
    cmodel.apply(cparams, jnp.zeros((2, 3)), jnp.zeros((2,)), jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="cond must be integer labels"):
    cmodel.apply(cparams, jnp.zeros((2, 3)), jnp.zeros((2,)), jnp.zeros((2,)))
  with pytest.raises(ValueError, match=r"cond labels must lie in 0..3"):
    cmodel.apply(cparams, jnp.zeros((2, 3)), jnp.zeros((2,)), jnp.array([0, 4]))
  emodel, eparams = embedded
  with pytest.raises(ValueError, match=r"cond must be a float array of shape \(2, 5\)"):
    emodel.apply(eparams, jnp.zeros((2, 3)), jnp.zeros((2,)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="got None"):
    emodel.apply(eparams, jnp.zeros((2, 3)), jnp.zeros((2,)))
  with pytest.raises(ValueError, match="hidden_sizes"):
    _init(ScoreMLP(hidden_sizes=()))
  with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
    _init(ScoreMLP(hidden_sizes=(8,), num_classes=0))
  with pytest.raises(ValueError, match="not both"):
    _init(ScoreMLP(hidden_sizes=(8,), num_classes=2, cond_dim=3))
  with pytest.raises(ValueError, match=r"dropout_rate must lie in \[0, 1\)"):
    _init(ScoreMLP(hidden_sizes=(8,), dropout_rate=1.0))
