"""Training as pure functions: ``TrainState``, the optax optimiser, EMA, and ``train_step``.

Nothing here knows about devices: data parallelism is applied from outside by ``jax.jit`` with
``jax.sharding`` shardings (see experiments/run.py). Randomness is a value: the step key is
``fold_in(key, state.step)`` and each example gets its own key split from it, so a step depends
only on (state, global batch, key), never on how the batch is split across devices or processes.
"""

from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

from diffusion_jax.losses import LossOutput, Weighting, dsm_loss
from diffusion_jax.parameterization import NetworkScore, Prediction
from diffusion_jax.sde import AbstractLinearSDE

# loss_fn(params, example, key) -> LossOutput, on ONE example (a pytree without the batch axis).
LossFn = Callable[[object, object, jax.Array], LossOutput]
TrainStepFn = Callable[["TrainState", object, jax.Array], tuple["TrainState", dict]]


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, as a plain pytree of arrays (checkpointable as is).

  The apply function and the optimiser are static and live outside, in ``make_train_step``.
  """

  step: jax.Array  # int32 scalar: the number of updates applied so far
  params: object
  ema_params: object
  opt_state: optax.OptState

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation) -> "TrainState":
    """Step 0: the EMA starts at the initial parameters."""
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               ema_params=jax.tree.map(jnp.array, params), opt_state=optimizer.init(params))


def make_lr_schedule(learning_rate: float, *, warmup_steps: int = 0,
                     decay_steps: int | None = None, end_value: float = 0.0) -> optax.Schedule:
  """Linear warm-up from 0 to ``learning_rate`` over ``warmup_steps``, then constant, or cosine
  decay to ``end_value`` at step ``decay_steps`` when given (Goyal et al. 2017; Loshchilov & Hutter 2017).
  """
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}.")
  if decay_steps is not None:
    if decay_steps <= warmup_steps:
      raise ValueError(f"decay_steps must be > warmup_steps={warmup_steps}, got {decay_steps!r}.")
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, decay_steps,
                                              end_value)
  if warmup_steps == 0:
    return optax.constant_schedule(learning_rate)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, warmup_steps),
       optax.constant_schedule(learning_rate)], [warmup_steps])


def make_optimizer(learning_rate: float, *, warmup_steps: int = 0, decay_steps: int | None = None,
                   grad_clip_norm: float | None = 1.0, weight_decay: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """chain(clip_by_global_norm, adamw) with the schedule of ``make_lr_schedule``.

  Adam (Kingma & Ba 2015); with ``weight_decay > 0`` the decoupled decay of AdamW (Loshchilov &
  Hutter 2019). Clipping bounds the update when a batch draws many t near t_min, where the
  eps-target of the likelihood weighting is largest.
  """
  schedule = make_lr_schedule(learning_rate, warmup_steps=warmup_steps, decay_steps=decay_steps)
  transforms = []
  if grad_clip_norm is not None:
    if not grad_clip_norm > 0:
      raise ValueError(f"grad_clip_norm must be > 0 or None, got {grad_clip_norm!r}.")
    transforms.append(optax.clip_by_global_norm(grad_clip_norm))
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
  transforms.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return optax.chain(*transforms)


def ema_update(ema_params, params, decay: float):
  """ema <- decay * ema + (1 - decay) * params (Polyak averaging; Song & Ermon 2020, Sec. 3.4)."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def as_model_fn(apply_fn: Callable, sde: AbstractLinearSDE, *,
                prediction: Prediction = Prediction.EPS, label: jax.Array | None = None):
  """A per-example ``model_fn(params, x, t)`` for the losses, over a batched ``apply_fn``.

  It reuses ``NetworkScore.raw`` so training and sampling cross the batch boundary the same way.
  """

  def model_fn(params, x, t):
    return NetworkScore(apply_fn, params, sde, prediction, label).raw(x, t)

  return model_fn


def make_dsm_loss_fn(apply_fn: Callable, sde: AbstractLinearSDE, *,
                     prediction: Prediction = Prediction.EPS,
                     weighting: Weighting = Weighting.SIMPLE, t_min: float = 1e-5) -> LossFn:
  """``loss_fn(params, example, key)``: ``dsm_loss`` on one example {"x0": (D...), ["label": ()]}."""

  def loss_fn(params, example, key):
    model_fn = as_model_fn(apply_fn, sde, prediction=prediction, label=example.get("label"))
    return dsm_loss(model_fn, params, example["x0"], key, sde=sde, prediction=prediction,
                    weighting=weighting, t_min=t_min)

  return loss_fn


def _batch_size(batch) -> int:
  sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(batch)}
  if not sizes or None in sizes or len(sizes) != 1:
    shapes = jax.tree.map(jnp.shape, batch)
    raise ValueError(f"batch must be a pytree of arrays sharing one leading batch axis, got {shapes}.")
  return sizes.pop()


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    ema_decay: float) -> TrainStepFn:
  """``train_step(state, batch, key) -> (state, metrics)``, pure.

  Minimises the batch mean of the per-example ``loss_fn``; example i of step s uses key
  ``split(fold_in(key, s), B)[i]`` (VDM's per-step keys), so resuming at step s replays exactly.
  """
  if not 0.0 <= ema_decay <= 1.0:
    raise ValueError(f"ema_decay must lie in [0, 1], got {ema_decay!r}.")

  def train_step(state: TrainState, batch, key: jax.Array):
    num = _batch_size(batch)
    example_keys = jr.split(jr.fold_in(key, state.step), num)

    def objective(params):
      out = jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, batch, example_keys)
      return jnp.mean(out.loss), out

    (loss, out), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema_update(state.ema_params, params, ema_decay))
    metrics = {"loss": loss, "eps_mse": jnp.mean(out.eps_mse), "grad_norm": optax.tree.norm(grads)}
    return new_state, metrics

  return train_step
