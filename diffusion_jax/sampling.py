"""sample(...): the one entry point that runs any sampler over an explicit time grid.

Per example: a ``lax.scan`` over the grid ts = (T = t_0 > ... > t_N), the key of step i is
fold_in(key, i). ``sample_examples`` is the vmap over examples (example n uses keys[n], its own
condition cond[n] and, where ``sampler_axes`` says so, its own sampler leaves); ``sample_batch``
jits it with keys fold_in(key, offset + n), so example n is the same whatever the batch size or the
way a large draw is split into chunks. Everything concrete is checked before tracing; what only
exists under jit is reported in ``SampleOutput.success``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from diffusion_jax import _checks
from diffusion_jax.samplers.base import AbstractSampler
from diffusion_jax.sde import AbstractLinearSDE, ScoreFn


BATCH_AXIS = "batch"


class SampleOutput(flax.struct.PyTreeNode):
  """What ``sample`` returns for one example (leading batch axis under vmap)."""

  x: jax.Array  # the sample: after the final denoising step (``finalize``) when one was taken
  mean: jax.Array  # the last step without its fresh noise (score_sde's x_mean); x when denoised
  denoised: jax.Array  # E[x0 | x] at the last score evaluation
  nfe: jax.Array  # score evaluations actually spent (int32)
  # True when every step reported success (an adaptive solve did not run out of steps) and x,
  # mean and denoised are finite: the check that under jit replaces a Python error.
  success: jax.Array
  trajectory: jax.Array | None = None  # (N + 1, *x.shape): x_init, then x after each step


# --- checks at the boundary -----------------------------------------------------------------


def _check_objects(sde, sampler, denoise_final, save_trajectory) -> None:
  _checks.check_instance("sde", sde, AbstractLinearSDE, "sdes.VPSDE()")
  _checks.check_instance("sampler", sampler, AbstractSampler, "samplers.DDIM()")
  if denoise_final is not None:
    _checks.check_bool("denoise_final", denoise_final)
  _checks.check_bool("save_trajectory", save_trajectory)


def _float_dtype(ts):
  # Times and samples share the default float type (float64 under jax_enable_x64).
  return jnp.result_type(float)


def _example_struct(shape, dtype):
  return jax.ShapeDtypeStruct(tuple(shape), dtype), jax.ShapeDtypeStruct((), dtype)


def check_score_fn(score_fn: ScoreFn, shape: tuple[int, ...], dtype, cond: Any = None) -> None:
  """score_fn(x, t) on ONE example returns an array of x's shape and a real floating dtype.

  Checked with ``jax.eval_shape`` (no computation). With ``cond`` (one example's condition), the
  check binds it first: ``score_fn.replace(cond=cond)``. A check that passed is remembered by the
  score's structure and leaf shapes, so new parameters of the same network are not traced again.
  """
  if not callable(score_fn):
    raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}.")
  leaves, treedef = jax.tree.flatten(score_fn)
  try:
    # Arrays and Python numbers enter by shape and type, not value: a new guidance strength or
    # new parameters of the same network need no new check.
    signature = (treedef, tuple((jnp.shape(v), jnp.result_type(v)) if _is_array(v)
                                else type(v) if isinstance(v, (int, float, complex)) else v
                                for v in leaves), tuple(shape), np.dtype(dtype),
                 jax.tree.structure(cond), tuple(jax.tree.leaves(cond)))
    hash(signature)
  except TypeError:  # an unhashable static part: check every time
    signature = None
  if signature is not None and signature in _CHECKED:
    return
  _check_score_fn(score_fn, shape, dtype, cond)
  if signature is not None:
    if len(_CHECKED) > 256:  # a bound on memory, not a tuning knob
      _CHECKED.clear()
    _CHECKED.add(signature)


_CHECKED: set = set()


def _is_array(v) -> bool:
  return isinstance(v, (jax.Array, np.ndarray, np.generic))


def _check_score_fn(score_fn, shape, dtype, cond) -> None:
  x_struct, t_struct = _example_struct(shape, dtype)
  hint = ("score_fn takes ONE example x (shape {}) and a scalar t; for a batch, use "
          "sample_examples / sample_batch or jax.vmap(sample).").format(tuple(shape))
  try:
    if cond is None:
      out = jax.eval_shape(score_fn, x_struct, t_struct)
    else:
      out = jax.eval_shape(lambda fn, c, x, t: fn.replace(cond=c)(x, t), score_fn, cond, x_struct,
                           t_struct)
  except Exception as e:  # noqa: BLE001 -- re-raised with the argument named
    raise ValueError(f"score_fn(x, t) failed on an example of shape {tuple(shape)} ({np.dtype(dtype).name}): "
                     f"{type(e).__name__}: {e}. {hint}") from e
  if not isinstance(out, jax.ShapeDtypeStruct):
    raise ValueError(f"score_fn must return one array, got {jax.tree.structure(out)}.")
  if out.shape != tuple(shape):
    raise ValueError(f"score_fn must return an array of the example's shape {tuple(shape)}, got "
                     f"{out.shape}. {hint}")
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(f"score_fn must return a real floating array, got dtype {out.dtype}.")


def _check_cond(score_fn, cond, num: int) -> Any:
  """The first example's condition (for the score check); raises if cond cannot bind or batch."""
  if cond is None:
    return None
  if not (hasattr(score_fn, "replace") and hasattr(score_fn, "cond")):
    raise TypeError("score_fn must be a conditional score (a pytree with a field `cond`, bound by "
                    f"score_fn.replace(cond=...)) when cond is given; got {type(score_fn).__name__}.")
  leaves = jax.tree.leaves(cond)
  if not leaves:
    raise ValueError("cond must be a pytree of arrays with a leading axis of one entry per example, "
                     "got no arrays.")
  for leaf in leaves:
    if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != num:
      raise ValueError(f"cond must have a leading axis of {num} (one condition per example) on every "
                       f"leaf, got a leaf of shape {jnp.shape(leaf)}.")
  return jax.tree.map(lambda c: jax.ShapeDtypeStruct(jnp.shape(c)[1:], jnp.result_type(c)), cond)


def _check_sampler_axes(sampler, sampler_axes, num: int) -> None:
  if sampler_axes is None:
    return
  try:
    per_example = jax.tree.map(lambda axis, leaf: (axis, leaf), sampler_axes, sampler,
                               is_leaf=lambda v: v is None or isinstance(v, int))
  except ValueError as e:
    raise ValueError("sampler_axes must be 0, None, or a pytree prefix of the sampler with 0 or None "
                     f"at each part (as jax.vmap's in_axes): {e}") from e
  for axis, leaf in jax.tree.leaves(per_example, is_leaf=lambda v: isinstance(v, tuple)):
    if axis is None:
      continue
    if axis != 0:
      raise ValueError(f"sampler_axes entries must be 0 or None, got {axis!r}.")
    for array in jax.tree.leaves(leaf):
      if jnp.ndim(array) < 1 or jnp.shape(array)[0] != num:
        raise ValueError(f"sampler_axes marks a sampler leaf of shape {jnp.shape(array)} as per-example; "
                         f"it needs a leading axis of {num}.")


def _check_keys(keys) -> int:
  keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
  typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
  if (typed and keys.ndim != 1) or (not typed and (keys.ndim != 2 or keys.dtype != jnp.uint32)):
    raise ValueError("keys must hold one key per example: shape (num,) of jax.random.key keys "
                     f"(or (num, 2) uint32 raw keys), got shape {keys.shape} and dtype {keys.dtype}.")
  return keys.shape[0]


def _key_for(sampler, key):
  if key is None:
    if sampler.stochastic:
      raise ValueError(f"key is required: {type(sampler).__name__} is stochastic (it draws noise at "
                       "each step); pass key=jax.random.key(...).")
    return jr.key(0)  # never read: deterministic samplers ignore the key
  return key


def _check_shape(shape) -> tuple[int, ...]:
  if not isinstance(shape, (tuple, list)) or not all(_checks.is_int(n) and n >= 1 for n in shape):
    raise ValueError(f"shape must be a tuple of positive ints (one example's shape), got {shape!r}.")
  return tuple(int(n) for n in shape)


# --- the scan -------------------------------------------------------------------------------


def _run(sde, score_fn, sampler, ts, x_init, key, denoise_final, save_trajectory,
         progress_fn=None) -> SampleOutput:
  denoise_final = sampler.denoise_final_default if denoise_final is None else denoise_final

  def body(carry, i):
    x, state, _, _, nfe, ok = carry
    if progress_fn is not None:
      # i is not batched, so under vmap the host hears once per step (per device when sharded).
      jax.debug.callback(progress_fn, i)
    x, aux, state = sampler.step(sde, score_fn, ts[i], ts[i + 1], x, state, key=jr.fold_in(key, i))
    ok = jnp.logical_and(ok, aux.success)
    return (x, state, aux.mean, aux.denoised, nfe + aux.nfe, ok), (x if save_trajectory else None)

  state = sampler.init(sde, score_fn, ts, x_init)
  carry = (x_init, state, x_init, jnp.zeros_like(x_init), jnp.zeros((), jnp.int32),
           jnp.ones((), bool))
  (x, state, mean, denoised, nfe, ok), xs = jax.lax.scan(body, carry, jnp.arange(ts.shape[0] - 1))
  if denoise_final:
    x, aux = sampler.finalize(sde, score_fn, x, ts[-1], state)
    mean, denoised, nfe = aux.mean, aux.denoised, nfe + aux.nfe
    ok = jnp.logical_and(ok, aux.success)
  finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(mean)) & jnp.all(jnp.isfinite(denoised))
  trajectory = jnp.concatenate([x_init[None], xs]) if save_trajectory else None
  return SampleOutput(x=x, mean=mean, denoised=denoised, nfe=nfe, success=ok & finite,
                      trajectory=trajectory)


def sample(sde: AbstractLinearSDE, score_fn: ScoreFn, sampler: AbstractSampler, ts: jax.Array,
           x_init: jax.Array, *, key: jax.Array | None = None, denoise_final: bool | None = None,
           save_trajectory: bool = False, progress_fn=None) -> SampleOutput:
  """Run ``sampler`` on ONE example from x_init at ts[0] down the grid ts; optionally finalize.

  The final step (``sampler.finalize``; by default Tweedie's E[x0 | x_t] = (x_t + sigma^2 score)/alpha,
  Efron 2011) is taken when ``denoise_final`` is True, or when it is None and the sampler's paper
  takes it (``sampler.denoise_final_default``); it costs one evaluation. ``key`` may be None for a
  deterministic sampler. x_init is one example: a batch is detected when score_fn rejects its
  shape; pass batches to ``sample_examples`` or ``jax.vmap(sample)``. ``progress_fn(i)``, if given,
  is called on the host after step i starts (``jax.debug.callback``): for progress bars.
  """
  _check_objects(sde, sampler, denoise_final, save_trajectory)
  _checks.check_time_grid("ts", ts, sde.T)
  dtype = _float_dtype(ts)
  ts = jnp.asarray(ts, dtype)
  x_init = jnp.asarray(x_init, dtype)
  check_score_fn(score_fn, x_init.shape, dtype)
  return _run(sde, score_fn, sampler, ts, x_init, _key_for(sampler, key), denoise_final,
              save_trajectory, progress_fn)


def sample_from_prior(sde: AbstractLinearSDE, score_fn: ScoreFn, sampler: AbstractSampler,
                      ts: jax.Array, *, key: jax.Array, shape: tuple[int, ...],
                      denoise_final: bool | None = None,
                      save_trajectory: bool = False) -> SampleOutput:
  """One example from x_init ~ prior: the prior draw uses split(key)[0], the sampler split(key)[1]."""
  prior_key, sample_key = jr.split(key)
  x_init = sde.prior_sample(prior_key, shape)
  return sample(sde, score_fn, sampler, ts, x_init, key=sample_key, denoise_final=denoise_final,
                save_trajectory=save_trajectory)


def example_keys(key: jax.Array, num: int, offset: int | jax.Array = 0) -> jax.Array:
  """Keys fold_in(key, offset + n), n < num: example n's key whatever the batch it is drawn in."""
  return jax.vmap(lambda n: jr.fold_in(key, n))(offset + jnp.arange(num))


def _examples(sde, score_fn, sampler, ts, keys, cond, *, shape, sampler_axes, denoise_final,
              save_trajectory, progress_fn=None):
  """The unchecked vmapped core of ``sample_examples``."""
  dtype = ts.dtype

  def one(example_key, example_cond, example_sampler):
    fn = score_fn if cond is None else score_fn.replace(cond=example_cond)
    prior_key, sample_key = jr.split(example_key)
    x_init = sde.prior_sample(prior_key, shape).astype(dtype)
    return _run(sde, fn, example_sampler, ts, x_init, sample_key, denoise_final, save_trajectory,
                progress_fn)

  cond_axes = None if cond is None else 0
  # The axis is named so a sampler may opt into batch statistics (Langevin(axis_name="batch")).
  return jax.vmap(one, in_axes=(0, cond_axes, sampler_axes), axis_name=BATCH_AXIS)(keys, cond, sampler)


def sample_examples(sde: AbstractLinearSDE, score_fn: ScoreFn, sampler: AbstractSampler,
                    ts: jax.Array, keys: jax.Array, *, shape: tuple[int, ...], cond: Any = None,
                    sampler_axes: Any = None, denoise_final: bool | None = None,
                    save_trajectory: bool = False, progress_fn=None) -> SampleOutput:
  """Examples n < len(keys), unjitted: x_init ~ prior from split(keys[n])[0], then ``sample`` with split(keys[n])[1].

  Example n samples with ``score_fn.replace(cond=cond_n)`` when ``cond`` (a pytree whose leaves
  have a leading axis of len(keys)) is given, and with the sampler whose leaves marked by
  ``sampler_axes`` are sliced at n: ``sampler_axes`` is None (one sampler for all), 0 (every array
  leaf of the sampler has a leading example axis: e.g. ``Inpaint(inner, masks, values)`` with one
  mask per example), or a pytree prefix of the sampler with 0/None per part, as jax.vmap's in_axes.
  The caller jits it (``sample_batch`` does; the runner adds shardings), with ``shape``,
  ``sampler_axes``, ``denoise_final`` and ``save_trajectory`` static (they shape the program).
  ``progress_fn(i)`` is called on the host at step i (see ``sample``); pass a function that stays
  the same object across calls, or every call compiles anew.
  """
  _check_objects(sde, sampler, denoise_final, save_trajectory)
  _checks.check_time_grid("ts", ts, sde.T)
  shape = _check_shape(shape)
  num = _check_keys(keys)
  cond_struct = _check_cond(score_fn, cond, num)
  _check_sampler_axes(sampler, sampler_axes, num)
  dtype = _float_dtype(ts)
  check_score_fn(score_fn, shape, dtype, cond_struct)
  return _examples(sde, score_fn, sampler, jnp.asarray(ts, dtype), keys, cond, shape=shape,
                   sampler_axes=sampler_axes, denoise_final=denoise_final,
                   save_trajectory=save_trajectory, progress_fn=progress_fn)


def _as_pytree(score_fn):
  # Pytrees whose leaves are all arrays (NetworkScore, DiffusedMixture, Partial of arrays) pass as
  # they are, so new parameters reuse the compiled code. Anything else callable (a function, a
  # functools.partial, an object jit cannot see into) is wrapped so it crosses ``jit`` as static
  # structure: a new such object compiles anew.
  if all(isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, complex, bool))
         for leaf in jax.tree.leaves(score_fn)):
    return score_fn
  return jax.tree_util.Partial(score_fn)


@functools.partial(jax.jit, static_argnames=("num", "shape", "sampler_axes", "denoise_final",
                                             "save_trajectory"))
def _sample_batch(sde, score_fn, sampler, ts, key, offset, cond, *, num, shape, sampler_axes,
                  denoise_final, save_trajectory):
  # The sampler is a traced argument: its array leaves (a mask, a measurement) are inputs of the
  # compiled program, its static fields part of the cache key.
  return _examples(sde, score_fn, sampler, ts, example_keys(key, num, offset), cond, shape=shape,
                   sampler_axes=sampler_axes, denoise_final=denoise_final,
                   save_trajectory=save_trajectory)


def sample_batch(sde: AbstractLinearSDE, score_fn: ScoreFn, sampler: AbstractSampler, ts: jax.Array,
                 *, key: jax.Array, num: int, shape: tuple[int, ...], cond: Any = None,
                 sampler_axes: Any = None, offset: int = 0, denoise_final: bool | None = None,
                 save_trajectory: bool = False) -> SampleOutput:
  """``num`` examples under jit: ``sample_examples`` with keys fold_in(key, offset + n).

  Splitting one draw into chunks (offset = 0, c, 2c, ...) gives the same examples as one call;
  ``cond`` and per-example sampler leaves (``sampler_axes``) are sliced per example.
  """
  _check_objects(sde, sampler, denoise_final, save_trajectory)
  _checks.check_count("num", num)
  _checks.check_time_grid("ts", ts, sde.T)
  shape = _check_shape(shape)
  if key is None:
    raise ValueError("key is required: sample_batch draws each example's x_init from the prior.")
  if _checks.is_concrete(offset):
    _checks.check_count("offset", offset, minimum=0)
  cond_struct = _check_cond(score_fn, cond, int(num))
  _check_sampler_axes(sampler, sampler_axes, int(num))
  dtype = _float_dtype(ts)
  check_score_fn(score_fn, shape, dtype, cond_struct)
  score_fn = score_fn if cond is not None else _as_pytree(score_fn)
  return _sample_batch(sde, score_fn, sampler, jnp.asarray(ts, dtype), key,
                       jnp.asarray(offset, jnp.int32), cond, num=int(num), shape=shape,
                       sampler_axes=sampler_axes, denoise_final=denoise_final,
                       save_trajectory=save_trajectory)
