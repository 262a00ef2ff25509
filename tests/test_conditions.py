"""Conditions: the null label, condition dropout's key discipline and its drop rate."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import stats

from diffusion_jax import conditions


def recording_loss(params, frozen, example, key):
  """A loss that reports the condition it saw and a number drawn from its key."""
  del params, frozen
  return {"loss": jr.uniform(key, ()), "label": example["label"],
          "mask_sum": jnp.sum(example["text"]["mask"]), "x0": example["x0"]}


NULL = {"label": conditions.null_label(3)}


def _examples(num):
  return {"x0": jr.normal(jr.key(0), (num, 2)),
          "label": jr.randint(jr.key(1), (num,), 0, 3).astype(jnp.int32),
          "text": {"tokens": jnp.ones((num, 4), jnp.int32), "mask": jnp.ones((num, 4), bool)}}


def _run(p, cond_key, null_cond, num, key=jr.key(2)):
  wrapped = conditions.with_condition_dropout(recording_loss, p, null_cond, cond_key)
  return jax.jit(jax.vmap(wrapped, (None, None, 0, 0)))(None, None, _examples(num),
                                                        jr.split(key, num))


def test_null_label():
  null = conditions.null_label(5)
  assert null.dtype == jnp.int32 and null.shape == () and int(null) == 5
  assert int(conditions.null_label(np.int64(2))) == 2
  for bad in (0, 2.0, True, -1):
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
      conditions.null_label(bad)


def test_p_zero_is_the_wrapped_loss_on_the_first_half_of_the_split_key():
  num = 16
  keys = jr.split(jr.key(2), num)
  out = _run(0.0, "label", NULL["label"], num)
  direct = jax.vmap(recording_loss, (None, None, 0, 0))(None, None, _examples(num),
                                                        jax.vmap(lambda k: jr.split(k)[0])(keys))
  jax.tree.map(np.testing.assert_array_equal, out, direct)  # bitwise: same keys, same ops
  # ... and not on the key itself, nor on the second half (the drop decision's).
  undivided = jax.vmap(recording_loss, (None, None, 0, 0))(None, None, _examples(num), keys)
  assert not np.any(np.asarray(out["loss"]) == np.asarray(undivided["loss"]))


def test_p_one_drops_every_condition_and_nothing_else():
  out = _run(1.0, "label", NULL["label"], 64)
  np.testing.assert_array_equal(out["label"], 3)
  np.testing.assert_array_equal(out["x0"], _examples(64)["x0"])  # other entries untouched
  np.testing.assert_array_equal(out["mask_sum"], 4)


def test_a_pytree_condition_is_dropped_as_a_whole():
  null_text = {"tokens": jnp.zeros(4, jnp.int32), "mask": jnp.zeros(4, bool)}
  out = _run(0.5, "text", null_text, 400)
  # Every example keeps its whole condition (mask sum 4) or gets the whole null one (0): the
  # tokens and the mask share one decision.
  assert set(np.unique(np.asarray(out["mask_sum"]))) == {0, 4}
  np.testing.assert_array_equal(out["label"], _examples(400)["label"])


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rate_matches_p(p):
  num = 20_000
  dropped = int(jnp.sum(_run(p, "label", NULL["label"], num)["label"] == 3))
  # The labels 0..2 are never the null label, so the count of nulls is Binomial(num, p); a
  # two-sided binomial test at level 1e-4 cannot reject it.
  assert stats.binomtest(dropped, num, p).pvalue > 1e-4, dropped
  # and the test has power: a rate off by 0.03 (8.5 standard errors at p = 0.5) is rejected.
  assert stats.binomtest(dropped, num, p + 0.03).pvalue < 1e-4


def test_drop_decisions_are_independent_of_the_loss_key():
  """The drop uses split(key)[1]: the decision equals bernoulli(split(key)[1], p) example by example."""
  num, p = 256, 0.3
  keys = jr.split(jr.key(2), num)
  out = _run(p, "label", NULL["label"], num)
  want = jax.vmap(lambda k: jr.bernoulli(jr.split(k)[1], p))(keys)
  np.testing.assert_array_equal(np.asarray(out["label"]) == 3, np.asarray(want))


def test_errors():
  with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\]"):
    conditions.with_condition_dropout(recording_loss, 1.5, NULL["label"], "label")
  with pytest.raises(ValueError, match="p must be a probability"):
    conditions.drop_condition(jr.key(0), jnp.int32(1), jnp.int32(3), True)
  with pytest.raises(TypeError, match="cond_key must be the name"):
    conditions.with_condition_dropout(recording_loss, 0.1, NULL["label"], 0)
  with pytest.raises(TypeError, match="loss_fn must be callable"):
    conditions.with_condition_dropout("dsm", 0.1, NULL["label"], "label")
  with pytest.raises(ValueError, match="null_cond must have the pytree structure of cond"):
    conditions.drop_condition(jr.key(0), {"a": jnp.ones(2)}, jnp.ones(2), 0.1)
  with pytest.raises(ValueError, match="null_cond leaves must have the shapes"):
    conditions.drop_condition(jr.key(0), jnp.ones(2), jnp.ones(3), 0.1)
  wrapped = conditions.with_condition_dropout(recording_loss, 0.1, NULL["label"], "label")
  with pytest.raises(ValueError, match="cond_key='label' is not an entry"):
    wrapped(None, None, {"x0": jnp.ones(2)}, jr.key(0))


def test_around_the_dsm_loss_of_a_class_conditional_network():
  """End to end: with p = 1 the wrapped DSM loss is the DSM loss of the null-labelled example on
  the first half of the key; with p = 0, of the labelled one."""
  from diffusion_jax import losses, sdes
  from diffusion_jax.nets import ScoreMLP, as_model_fn
  net = ScoreMLP(hidden_sizes=(16,), embed_dim=8, num_classes=3)
  params = jax.jit(net.init)(jr.key(0), jnp.zeros((1, 2)), jnp.ones((1,)), jnp.zeros((1,), jnp.int32))
  dsm = losses.make_dsm_loss_fn(as_model_fn(net), sdes.VPSDE(), cond_key="label")
  example, key = {"x0": jnp.array([0.3, -0.4]), "label": jnp.int32(1)}, jr.key(4)
  loss_key = jr.split(key)[0]
  for p, label in ((1.0, 3), (0.0, 1)):
    wrapped = conditions.with_condition_dropout(dsm, p, conditions.null_label(3), "label")
    got = jax.jit(wrapped)(params, None, example, key)
    want = jax.jit(dsm)(params, None, {**example, "label": jnp.int32(label)}, loss_key)
    np.testing.assert_array_equal(got.loss, want.loss)  # bitwise: same program up to the where
  # The label matters, so the comparison above can fail.
  other = jax.jit(dsm)(params, None, {**example, "label": jnp.int32(0)}, loss_key)
  assert float(other.loss) != float(got.loss)
