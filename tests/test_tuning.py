"""Tuning a frozen network (diffusion_jax.tuning, nets.ControlNet): each tuner against what it
claims, computed another way. Prompt tuning and FiLM leave every other label's prediction bit for
bit the frozen one's; LoRA's separate low-rank path equals its merged kernels, and those equal
W + (alpha / r) A B written out; FiLM's modulation equals the frozen network's last block output,
modulated by hand and passed through its output head; a ControlNet starts bit for bit at the
frozen network and its copy at the frozen weights; a train step moves the trainable tree only.

One tiny two-level U-Net (8x8x1, width 8, labels 0-2 and the null label 3) serves every test.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

from diffusion_jax import losses, nets, sdes, train, tuning
from diffusion_jax.nets import unet as unet_lib
from diffusion_jax.nets.conv import Conv2D
from diffusion_jax.parameterization import Prediction

K = 3  # labels 0..2; 3 is the null label
HELD = 2  # the label the tuners adapt
B = 4


def _perturbed(tree, seed, scale=0.05):
  """tree + N(0, scale^2) noise, so that zero-initialised layers do not make comparisons vacuous."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: np.asarray(p) + scale * rng.standard_normal(np.shape(p)).astype(
      np.float32), tree)


@pytest.fixture(scope="module")
def net():
  module = nets.UNet(model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attn_resolutions=(4,), dropout=0.0, num_classes=K, noise_scale=10.0)
  x = jr.normal(jr.key(1), (B, 8, 8, 1))
  t = jnp.array([0.1, 0.4, 0.7, 1.0])
  params = _perturbed(nets.init_params(module, jr.key(0), x, t, jnp.zeros((B,), jnp.int32)), 0)
  base_fn = nets.as_model_fn(module)
  return module, base_fn, params, x, t


def _tuned(base_fn, tuner):
  fn = tuning.TunedModelFn(base_fn, tuner)
  return jax.jit(lambda tuned, base, x, t, c: fn(tuning.combine(tuned, base), x, t, c))


def _frozen(base_fn):
  return jax.jit(lambda p, x, t, c: base_fn(p, x, t, c))


LABELS = jnp.array([0, HELD, K, 1])  # two other labels, the tuned one, the null label


@pytest.mark.parametrize("tuner", [tuning.PromptTuning(HELD, init_labels=(0, 1)),
                                   tuning.PromptTuning(HELD, init_labels=(0, 1), per_block=True),
                                   tuning.FiLM((HELD,))],
                         ids=["prompt", "prompt-per-block", "film"])
def test_other_labels_get_the_frozen_prediction(net, tuner):
  """The forgetting-is-zero claim: with a trained (here random) tuned tree, every example whose
  label is not the tuned one gets the frozen prediction, and the tuned one does not. Prompt
  tuning changes one row of the table, read by nobody else: bit for bit. FiLM selects the frozen
  block outputs for them, but its program (the select and the modulation in the graph, whatever
  the batch's labels) is fused differently by XLA:CPU, whose float sums then run in another order
  (measured: 3e-7 on outputs of ~0.3)."""
  _, base_fn, params, x, t = net
  tuned = _perturbed(tuner.init(jr.key(2), params), 1, scale=0.5)
  out = np.asarray(_tuned(base_fn, tuner)(tuned, params, x, t, LABELS))
  ref = np.asarray(_frozen(base_fn)(params, x, t, LABELS))
  other = np.asarray(LABELS) != HELD
  if isinstance(tuner, tuning.PromptTuning):
    np.testing.assert_array_equal(out[other], ref[other])
  else:
    np.testing.assert_allclose(out[other], ref[other], atol=1e-6, rtol=1e-5)
  assert np.abs(out[~other] - ref[~other]).max() > 1e-3


def test_prompt_tuning_is_the_frozen_network_with_the_row_replaced(net):
  _, base_fn, params, x, t = net
  tuner = tuning.PromptTuning(HELD, init_labels=(0, 1))
  tuned = tuner.init(jr.key(2), params)
  table = params["params"]["label_embedding"]["embedding"]
  np.testing.assert_allclose(tuned["embedding"], (table[0] + table[1]) / 2, rtol=1e-6)
  v = np.random.default_rng(3).standard_normal(table.shape[1]).astype(np.float32)
  by_hand = jax.tree.map(np.array, params)
  by_hand["params"]["label_embedding"]["embedding"][HELD] = v
  labels = jnp.full((B,), HELD)
  np.testing.assert_array_equal(
      np.asarray(_tuned(base_fn, tuner)({"embedding": jnp.asarray(v)}, params, x, t, labels)),
      np.asarray(_frozen(base_fn)(by_hand, x, t, labels)))
  with pytest.raises(ValueError, match="label must index"):
    tuning.PromptTuning(K + 1).init(jr.key(0), params)


def test_per_block_prompts_with_one_vector_everywhere_are_the_single_prompt(net):
  """P+ with the same vector in every block is textual inversion with that vector: the per-block
  embedding MLPs then compute what the network's one embedding computes."""
  _, base_fn, params, x, t = net
  tuner = tuning.PromptTuning(HELD, per_block=True)
  blocks = tuner.init(jr.key(0), params)["blocks"]
  assert set(blocks) == {"enc8_block0", "enc4_down", "enc4_block0", "mid0", "mid1", "dec4_block0",
                         "dec4_block1", "dec8_up", "dec8_block0", "dec8_block1"}
  v = jnp.asarray(np.random.default_rng(4).standard_normal(blocks["mid0"].shape), jnp.float32)
  labels = jnp.full((B,), HELD)
  per_block = _tuned(base_fn, tuner)({"blocks": {k: v for k in blocks}}, params, x, t, labels)
  single = _tuned(base_fn, tuning.PromptTuning(HELD))({"embedding": v}, params, x, t, labels)
  # float32: the same MLP on the same inputs, once per block instead of once
  np.testing.assert_allclose(per_block, single, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("tuner", [tuning.FineTune(), tuning.LoRA(2), tuning.FiLM((HELD,)),
                                   tuning.LoRA(2, targets=r"conv\d/kernel$", merged=True)],
                         ids=["finetune", "lora", "film", "lora-conv-merged"])
def test_the_initial_tuned_network_is_the_frozen_one(net, tuner):
  """Fine-tuning starts from the frozen weights themselves: bit for bit. LoRA (B = 0) and FiLM
  (gamma = beta = 0) add exact zeros, but their programs are fused differently by XLA:CPU (see
  above; on the digits U-Net LoRA's differed at 1e-7), so they are equal to float32 rounding."""
  _, base_fn, params, x, t = net
  out = np.asarray(_tuned(base_fn, tuner)(tuner.init(jr.key(2), params), params, x, t, LABELS))
  ref = np.asarray(_frozen(base_fn)(params, x, t, LABELS))
  if isinstance(tuner, tuning.FineTune):
    np.testing.assert_array_equal(out, ref)
  else:
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("targets", [tuning.LORA_DEFAULT_TARGETS, r"conv\d/kernel$"],
                         ids=["attention-embedding", "3x3-convs"])
def test_lora_unmerged_path_equals_merged_kernels_equal_w_plus_scaled_ab(net, targets):
  """Two computations of LoRA: y = W x + s B (A x) inside the network (unmerged) and the frozen
  network on the kernels W + s A B (merged); and the merged kernel against float64 NumPy."""
  _, base_fn, params, x, t = net
  lora = tuning.LoRA(2, alpha=4.0, targets=targets)
  tuned = _perturbed(lora.init(jr.key(2), params), 1, scale=0.3)
  unmerged = _tuned(base_fn, lora)(tuned, params, x, t, LABELS)
  merged = _tuned(base_fn, tuning.LoRA(2, alpha=4.0, targets=targets, merged=True))(
      tuned, params, x, t, LABELS)
  frozen = _frozen(base_fn)(params, x, t, LABELS)
  assert np.abs(np.asarray(merged) - np.asarray(frozen)).max() > 1e-2  # the update matters
  # float32 sums in two orders (x (A B) vs (x A) B) through ~20 layers of outputs of size ~1.
  np.testing.assert_allclose(unmerged, merged, atol=2e-5, rtol=1e-4)
  merged_params = lora.merge(params, tuned)
  count = 0

  def check(tree, frozen, merged):  # the tuned tree mirrors the modules: {"a", "b"} per kernel
    nonlocal count
    if set(tree) == {"a", "b"}:
      a, b = np.asarray(tree["a"], np.float64), np.asarray(tree["b"], np.float64)
      expected = np.asarray(frozen["kernel"], np.float64) + (4.0 / 2) * np.einsum(
          "...r,ro->...o", a, b)
      # float32 storage of a float64 sum
      np.testing.assert_allclose(merged["kernel"], expected, rtol=1e-5, atol=1e-6)
      count += a.size + b.size
      return
    for name, sub in tree.items():
      check(sub, frozen[name], merged[name])

  check(tuned, params, merged_params)
  assert count == tuning.num_params(tuned) > 0


def test_lora_counts_rank_times_fan_in_plus_fan_out_and_names_a_bad_target(net):
  _, _, params, _, _ = net
  tuned = tuning.LoRA(3, targets=r"emb_dense0/kernel$").init(jr.key(0), params)
  fan_in, fan_out = params["params"]["emb_dense0"]["kernel"].shape
  assert tuning.num_params(tuned) == 3 * (fan_in + fan_out)
  with pytest.raises(ValueError, match="matches no kernel"):
    tuning.LoRA(2, targets="nothing_like_this").init(jr.key(0), params)


def test_film_modulates_the_last_block_as_written_out(net):
  """FiLM on the last decoder block only: the output equals the frozen network's last block
  output h (captured), modulated by hand, h (1 + gamma) + beta, through the output head (its
  GroupNorm, SiLU and convolution applied here with the frozen head's weights)."""
  module, base_fn, params, x, t = net
  film = tuning.FiLM((HELD,))
  tuned = film.init(jr.key(0), params)
  last = "dec8_block1"
  rng = np.random.default_rng(5)
  c = tuned[last]["scale"].shape[1]
  gamma, beta = rng.standard_normal((1, c)).astype(np.float32), rng.standard_normal((1, c)).astype(
      np.float32)
  tuned = jax.tree.map(np.zeros_like, tuned)
  tuned[last] = {"scale": gamma, "shift": beta}
  labels = jnp.full((B,), HELD)
  out = _tuned(base_fn, film)(tuned, params, x, t, labels)
  _, state = module.apply(params, x, t, labels, capture_intermediates=True)
  h = state["intermediates"][last]["__call__"][0]
  y = h * (1 + gamma) + beta
  head = params["params"]
  norm = nn.GroupNorm(num_groups=unet_lib.num_groups(c), epsilon=1e-6)
  y = nn.silu(norm.apply({"params": head["dec8_out_norm"]}, y))
  y = Conv2D(1, 3).apply({"params": head["dec8_out"]}, y)
  np.testing.assert_allclose(out, y, atol=1e-5, rtol=1e-5)  # float32, one program vs layer by layer


def test_controlnet_starts_at_the_frozen_network_and_its_copy_at_the_frozen_weights(net):
  module, base_fn, params, x, t = net
  cn = tuning.ControlNet(module, (8, 8, 1), (4, 4, 1), hint_channels=4)
  tuned = cn.init(jr.key(3), params)
  for layer in ("stem", "enc8_block0", "enc4_down", "mid0", "mid1", "emb_dense0",
                "label_embedding"):
    jax.tree.map(np.testing.assert_array_equal, tuned["params"][layer], params["params"][layer])
  cond = {"label": LABELS, "control": tuning.average_pool(x, 4)}
  run = _tuned(base_fn, cn)
  frozen = _frozen(base_fn)(params, x, t, LABELS)
  np.testing.assert_array_equal(np.asarray(run(tuned, params, x, t, cond)), np.asarray(frozen))
  # Trained (random) zero convolutions and hint: the control now moves the output, and a
  # different control moves it differently.
  trained = _perturbed(tuned, 4, scale=0.2)
  a = run(trained, params, x, t, cond)
  b = run(trained, params, x, t, {**cond, "control": -cond["control"]})
  assert np.abs(np.asarray(a) - np.asarray(frozen)).max() > 1e-2
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
  with pytest.raises(ValueError, match="'control' entry"):
    run(tuned, params, x, t, LABELS)


def test_average_pool_is_the_block_mean():
  x = np.arange(2 * 8 * 8 * 1, dtype=np.float32).reshape(2, 8, 8, 1)
  pooled = np.asarray(tuning.average_pool(jnp.asarray(x), 4))
  assert pooled.shape == (2, 4, 4, 1)
  np.testing.assert_allclose(pooled[1, 2, 3, 0], x[1, 4:6, 6:8, 0].mean())
  with pytest.raises(ValueError, match="size must divide"):
    tuning.average_pool(jnp.asarray(x), 3)


def test_tuned_params_must_be_base_and_tuned(net):
  _, base_fn, params, x, t = net
  with pytest.raises(ValueError, match="'base'"):
    tuning.TunedModelFn(base_fn, tuning.FineTune())(params, x, t, LABELS)


def test_a_train_step_moves_the_trainable_tree_and_leaves_the_frozen_one(net):
  """The DSM loss over the tuned model with combine_fn: after steps of Adam, the frozen tree is
  bitwise what it was, the prompt vector moved, and the loss on the tuned label went down."""
  _, base_fn, params, x, t = net
  tuner = tuning.PromptTuning(HELD, init_labels=(0, 1))
  model_fn = tuning.TunedModelFn(base_fn, tuner)
  loss_fn = losses.make_dsm_loss_fn(model_fn, sdes.VPSDE(), prediction=Prediction.EPS,
                                    cond_key="label", combine_fn=tuning.combine)
  state = train.TrainState.create(tuner.init(jr.key(0), params), optax.adam(3e-2),
                                  frozen=jax.tree.map(jnp.asarray, params))
  step = jax.jit(train.make_train_step(loss_fn, optax.adam(3e-2), 0.0))
  batch = {"x0": jnp.tile(x[:1], (16, 1, 1, 1)), "label": jnp.full((16,), HELD)}
  before = jax.tree.map(np.asarray, state.frozen)
  start = state.params

  def fixed_noise_loss(tuned):  # one fixed set of (t, noise) draws, so the two values compare
    keys = jr.split(jr.key(11), 64)
    ex = {"x0": jnp.tile(x[:1], (64, 1, 1, 1)), "label": jnp.full((64,), HELD)}
    records = jax.vmap(loss_fn, in_axes=(None, None, 0, 0))(tuned, state.frozen, ex, keys)
    return float(jnp.mean(records.loss))

  for _ in range(30):
    state, _ = step(state, batch, jr.key(7))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.frozen), before)
  assert np.abs(np.asarray(state.params["embedding"]) - np.asarray(start["embedding"])).max() > 1e-2
  assert fixed_noise_loss(state.params) < fixed_noise_loss(start)
