"""THROWAWAY stand-ins for what other streams build (CONTRACTS.md), so the runner runs before merge.

Each name is installed only if the library lacks it; delete this file (and its import in
experiments/build.py) at merge.
"""

import sys
import types

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr

import diffusion_jax
from diffusion_jax import data, losses, nets, parameterization, sampling
from diffusion_jax.data import toy2d


def _unit(tree):
  return None if tree is None else jax.tree.map(lambda c: jnp.asarray(c)[None], tree)


if not hasattr(nets, "as_model_fn"):
  def as_model_fn(module):
    def model_fn(params, x, t, cond=None, *, key=None, train=False):
      return module.apply(params, x, t, cond)
    return model_fn
  nets.as_model_fn = as_model_fn


if not hasattr(losses, "make_dsm_loss_fn"):
  def make_dsm_loss_fn(model_fn, sde, *, prediction, weighting, t_min, cond_key=None):
    def loss_fn(params, frozen, example, key):
      cond = None if cond_key is None else example[cond_key]
      dropout_key, key = jr.split(key)
      one = lambda p, x, t: model_fn(p, x[None], t[None], _unit(cond), key=dropout_key,
                                     train=True)[0]
      return losses.dsm_loss(one, params, example["x0"], key, sde=sde, prediction=prediction,
                             weighting=weighting, t_min=t_min)
    return loss_fn
  losses.make_dsm_loss_fn = make_dsm_loss_fn


if "diffusion_jax.conditions" not in sys.modules:
  conditions = types.ModuleType("diffusion_jax.conditions")

  def null_label(num_classes):
    return jnp.asarray(num_classes, jnp.int32)

  def drop_condition(key, cond, null_cond, p):
    drop = jr.bernoulli(key, p)
    return jax.tree.map(lambda c, n: jnp.where(drop, n, c), cond, null_cond)

  def with_condition_dropout(loss_fn, p, null_cond, cond_key):
    def wrapped(params, frozen, example, key):
      drop_key, key = jr.split(key)
      example = {**example, cond_key: drop_condition(drop_key, example[cond_key], null_cond, p)}
      return loss_fn(params, frozen, example, key)
    return wrapped

  conditions.null_label, conditions.drop_condition = null_label, drop_condition
  conditions.with_condition_dropout = with_condition_dropout
  sys.modules["diffusion_jax.conditions"] = conditions
  diffusion_jax.conditions = conditions


if not hasattr(toy2d.ToyDataset, "shape"):
  toy2d.ToyDataset.shape = property(lambda self: (self.dim,))


if not hasattr(data, "labelled_mixture"):
  class LabelledMixture(flax.struct.PyTreeNode):
    mixture: object

    @property
    def shape(self):
      return (self.mixture.dim,)

    def sample(self, key, num):
      return self.mixture.sample(key, num)

    def batch(self, key, step, batch_size, *, start=0, stop=None):
      stop = batch_size if stop is None else stop
      step_key = jr.fold_in(key, step)
      keys = jax.vmap(lambda i: jr.fold_in(step_key, i))(jnp.arange(start, stop))
      x, k = jax.vmap(lambda kk: self.mixture.sample_with_components(kk, 1))(keys)
      return {"x0": x[:, 0], "label": k[:, 0].astype(jnp.int32)}

  data.labelled_mixture = LabelledMixture


if "cond" not in {f for f in getattr(parameterization.NetworkScore, "__dataclass_fields__", {})}:
  class NetworkScore(flax.struct.PyTreeNode):
    model_fn: object = flax.struct.field(pytree_node=False)
    params: object
    sde: object = flax.struct.field(pytree_node=False)
    prediction: object = flax.struct.field(pytree_node=False,
                                           default=parameterization.Prediction.EPS)
    cond: object = None

    def raw(self, x, t):
      t = jnp.asarray(t, jnp.result_type(float))
      return self.model_fn(self.params, x[None], t[None], _unit(self.cond), key=None,
                           train=False)[0]

    def __call__(self, x, t):
      alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
      return parameterization.convert(self.raw(x, t), x, alpha, sigma, source=self.prediction,
                                      target=parameterization.Prediction.SCORE)

  parameterization.NetworkScore = NetworkScore


if not hasattr(sampling, "sample_examples"):
  def sample_examples(sde, score_fn, sampler, ts, keys, *, shape, cond=None, denoise_final=None):
    def one(key, c):
      fn = score_fn if c is None else score_fn.replace(cond=c)
      return sampling.sample_from_prior(sde, fn, sampler, ts, key=key, shape=shape,
                                        denoise_final=denoise_final)
    return jax.vmap(one, axis_name=sampling.BATCH_AXIS)(keys, cond)
  sampling.sample_examples = sample_examples
