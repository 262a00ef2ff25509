"""sample(...): the one entry point that runs any sampler over an explicit time grid.

Per example: a ``lax.scan`` over the grid ts = (T = t_0 > ... > t_N), the key of step i is
fold_in(key, i), and callers ``vmap`` over examples. ``sample_batch`` does that vmap under ``jit``
with per-example keys fold_in(key, offset + n), so example n is the same whatever the batch size or
the way a large draw is split into chunks.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from diffusion_jax import _checks, schedules
from diffusion_jax.samplers.base import AbstractSampler, evaluate
from diffusion_jax.sde import AbstractLinearSDE, ScoreFn


BATCH_AXIS = "batch"


class SampleOutput(flax.struct.PyTreeNode):
  """What ``sample`` returns for one example (leading batch axis under vmap)."""

  x: jax.Array  # the sample: after the Tweedie step when one was taken
  mean: jax.Array  # the last step without its fresh noise (score_sde's x_mean); x when denoised
  denoised: jax.Array  # E[x0 | x] at the last score evaluation
  nfe: jax.Array  # score evaluations actually spent (int32)
  trajectory: jax.Array | None = None  # (N + 1, *x.shape): x_init, then x after each step


def sample(sde: AbstractLinearSDE, score_fn: ScoreFn, sampler: AbstractSampler, ts: jax.Array,
           x_init: jax.Array, *, key: jax.Array, denoise_final: bool | None = None,
           save_trajectory: bool = False) -> SampleOutput:
  """Run ``sampler`` from x_init at ts[0] down the grid ts; optionally x <- E[x0 | x_N] at the end.

  The final step is Tweedie's formula E[x0 | x_t] = (x_t + sigma^2 score)/alpha (Efron 2011), taken
  when ``denoise_final`` is True, or when it is None and the sampler's paper takes it
  (``sampler.denoise_final_default``); it costs one evaluation.
  """
  if not isinstance(sampler, AbstractSampler):
    raise ValueError(f"sampler must be an AbstractSampler, got {type(sampler).__name__}.")
  schedules.check_grid(ts)
  ts = jnp.asarray(ts, jnp.result_type(float))
  x_init = jnp.asarray(x_init, ts.dtype)
  denoise_final = sampler.denoise_final_default if denoise_final is None else denoise_final

  def body(carry, i):
    x, state, _, _, nfe = carry
    x, aux, state = sampler.step(sde, score_fn, ts[i], ts[i + 1], x, state, key=jr.fold_in(key, i))
    return (x, state, aux.mean, aux.denoised, nfe + aux.nfe), (x if save_trajectory else None)

  state = sampler.init(sde, score_fn, ts, x_init)
  zeros = jnp.zeros_like(x_init)
  carry = (x_init, state, x_init, zeros, jnp.zeros((), jnp.int32))
  (x, _, mean, denoised, nfe), xs = jax.lax.scan(body, carry, jnp.arange(ts.shape[0] - 1))
  if denoise_final:
    denoised = evaluate(sde, score_fn, x, ts[-1]).denoised
    x = mean = denoised
    nfe = nfe + 1
  trajectory = jnp.concatenate([x_init[None], xs]) if save_trajectory else None
  return SampleOutput(x=x, mean=mean, denoised=denoised, nfe=nfe, trajectory=trajectory)


def example_keys(key: jax.Array, num: int, offset: int | jax.Array = 0) -> jax.Array:
  """Keys fold_in(key, offset + n), n < num: example n's key whatever the batch it is drawn in."""
  return jax.vmap(lambda n: jr.fold_in(key, n))(offset + jnp.arange(num))


def _as_pytree(score_fn):
  # Pytrees whose leaves are all arrays (NetworkScore, DiffusedMixture, Partial of arrays) pass as
  # they are, so new parameters reuse the compiled code. Anything else callable (a function, a
  # functools.partial, an object jit cannot see into) is wrapped so it crosses ``jit`` as static
  # structure: a new such object compiles anew.
  if not callable(score_fn):
    raise ValueError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}.")
  if all(isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, complex, bool))
         for leaf in jax.tree.leaves(score_fn)):
    return score_fn
  return jax.tree_util.Partial(score_fn)


def sample_from_prior(sde: AbstractLinearSDE, score_fn: ScoreFn, sampler: AbstractSampler,
                      ts: jax.Array, *, key: jax.Array, shape: tuple[int, ...],
                      denoise_final: bool | None = None,
                      save_trajectory: bool = False) -> SampleOutput:
  """One example from x_init ~ prior: the prior draw uses split(key)[0], the sampler split(key)[1]."""
  prior_key, sample_key = jr.split(key)
  x_init = sde.prior_sample(prior_key, shape)
  return sample(sde, score_fn, sampler, ts, x_init, key=sample_key, denoise_final=denoise_final,
                save_trajectory=save_trajectory)


@functools.partial(jax.jit, static_argnames=("num", "shape", "denoise_final", "save_trajectory"))
def _sample_batch(sde, score_fn, sampler, ts, key, offset, *, num, shape, denoise_final,
                  save_trajectory):
  def one(example_key):
    return sample_from_prior(sde, score_fn, sampler, ts, key=example_key, shape=shape,
                             denoise_final=denoise_final, save_trajectory=save_trajectory)

  # The axis is named so a sampler may opt into batch statistics (Langevin(axis_name="batch")).
  return jax.vmap(one, axis_name=BATCH_AXIS)(example_keys(key, num, offset))


def sample_batch(sde: AbstractLinearSDE, score_fn: ScoreFn, sampler: AbstractSampler, ts: jax.Array,
                 *, key: jax.Array, num: int, shape: tuple[int, ...], offset: int = 0,
                 denoise_final: bool | None = None, save_trajectory: bool = False) -> SampleOutput:
  """``num`` examples, x_init ~ prior, under jit: example n uses fold_in(key, offset + n) for everything.

  Splitting one draw into chunks (offset = 0, c, 2c, ...) gives the same examples as one call.
  """
  _checks.check_count("num", num)
  schedules.check_grid(ts)
  return _sample_batch(sde, _as_pytree(score_fn), sampler, jnp.asarray(ts, jnp.result_type(float)),
                       key, jnp.asarray(offset, jnp.int32), num=num, shape=tuple(shape),
                       denoise_final=denoise_final, save_trajectory=save_trajectory)
