"""Training as pure functions: ``TrainState`` (trainable / frozen), optimiser, EMA, train steps.

Nothing here knows about devices: data parallelism is applied from outside by ``jax.jit`` with
``jax.sharding`` shardings (experiments/train.py). Randomness is a value: the step key is
``fold_in(key, state.step)`` and each example gets its own key split from it, so a step depends
only on (state, global batch, key), never on how the batch is split across devices or processes.

A loss is per example, ``loss_fn(params, frozen, example, key) -> record``: ``record`` is a flax
struct or dict of scalars with a field ``loss`` (minimised); every other field is a diagnostic and
is logged as its batch mean. Only ``params`` (the trainable tree) is differentiated; ``frozen``
(a pretrained network, an encoder, fixed buffers) is read and passed through untouched.

Several players (a GAN's generator and discriminator) share the machinery: ``params`` is then a
dict {player: tree}, each player has its own loss and optimiser, and ``make_multi_train_step``
updates them simultaneously or in turn (see its docstring).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence, Union

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

# loss_fn(params, frozen, example, key) -> record, on ONE example (a pytree without the batch axis).
LossFn = Callable[[object, object, object, jax.Array], object]
TrainStepFn = Callable[["TrainState", object, jax.Array], tuple["TrainState", dict]]


class TrainState(flax.struct.PyTreeNode):
  """Everything a run carries, as a plain pytree of arrays (checkpointable as is).

  ``opt_state`` and ``ema_params`` cover ``params`` (the trainable tree) only; ``frozen`` is never
  updated. The loss and the optimiser are static and live outside, in ``make_train_step``.
  """

  step: jax.Array  # int32 scalar: the number of updates applied so far
  params: object
  ema_params: object
  opt_state: optax.OptState
  frozen: object = None

  @classmethod
  def create(cls, params, optimizer, *, frozen=None) -> "TrainState":
    """Step 0: the EMA starts at the initial parameters.

    ``optimizer`` is one ``optax.GradientTransformation``, or for several players a dict
    {player: transformation} with the keys of ``params`` (each player's state covers its tree).
    """
    if isinstance(optimizer, Mapping):
      _check_players("optimizer", optimizer, params)
      opt_state = {name: opt.init(params[name]) for name, opt in optimizer.items()}
    elif isinstance(optimizer, optax.GradientTransformation):
      opt_state = optimizer.init(params)
    else:
      raise TypeError("optimizer must be an optax.GradientTransformation or a dict of them, got "
                      f"{type(optimizer).__name__}.")
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               ema_params=jax.tree.map(jnp.array, params), opt_state=opt_state, frozen=frozen)


def _check_players(name: str, players: Mapping, params) -> None:
  if not isinstance(params, Mapping) or set(players) != set(params):
    keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
    raise ValueError(f"{name} must have one entry per player, the keys of params {keys}; got "
                     f"{sorted(players)}.")


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
                   b2: float = 0.999, adam_eps: float = 1e-8) -> optax.GradientTransformation:
  """chain(clip_by_global_norm, adamw) with the schedule of ``make_lr_schedule``.

  Adam (Kingma & Ba 2015); with ``weight_decay > 0`` the decoupled decay of AdamW (Loshchilov &
  Hutter 2019). Clipping bounds the update when a batch draws many t near t_min, where the
  noise target of the likelihood weighting is largest. ``adam_eps`` is Adam's denominator offset.
  """
  schedule = make_lr_schedule(learning_rate, warmup_steps=warmup_steps, decay_steps=decay_steps)
  transforms = []
  if grad_clip_norm is not None:
    if not grad_clip_norm > 0:
      raise ValueError(f"grad_clip_norm must be > 0 or None, got {grad_clip_norm!r}.")
    transforms.append(optax.clip_by_global_norm(grad_clip_norm))
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
  transforms.append(optax.adamw(schedule, b1=b1, b2=b2, eps=adam_eps, weight_decay=weight_decay))
  # On one flat vector: the same elementwise update, but one fused op instead of one per leaf
  # of a U-Net's hundreds (its train step compiled in 37 s instead of 65 s on XLA:CPU).
  return optax.flatten(optax.chain(*transforms))


def ema_update(ema_params, params, decay):
  """ema <- decay * ema + (1 - decay) * params (Polyak averaging; Song & Ermon 2020, Sec. 3.4)."""
  return optax.incremental_update(params, ema_params, step_size=1.0 - decay)


EmaDecay = Union[float, Callable[[jax.Array], jax.Array]]


def power_ema_decay(gamma: float, max_decay: float = 1.0) -> Callable[[jax.Array], jax.Array]:
  """The power-function EMA of Karras et al. 2024 (EDM2, Sec. 3.1) as a decay schedule of the
  update count t = 1, 2, ...: beta(t) = min(max_decay, (1 - 1/t)^(gamma + 1)).

  Uncapped, the average after T updates weighs update s by (1 - beta(s)) (s / T)^(gamma + 1),
  about (gamma + 1) s^gamma / T^(gamma + 1): a profile that scales with the run, so no weight is
  left on the initialisation (a constant decay d leaves d^T on it: 30% after 600 steps at
  d = 0.998). gamma = 6.94 is EDM2's relative width sigma_rel = 0.10.
  """
  if not gamma > 0:
    raise ValueError(f"gamma must be > 0, got {gamma!r}.")
  _check_ema_decay(max_decay)

  def decay(t):
    t = jnp.maximum(jnp.asarray(t, jnp.float32), 1.0)
    return jnp.minimum(max_decay, (1.0 - 1.0 / t) ** (gamma + 1.0))

  return decay


def _ema_decay_at(ema_decay: EmaDecay, step: jax.Array):
  """The decay of the update that makes ``step + 1`` updates (a schedule sees the count)."""
  return ema_decay(step + 1) if callable(ema_decay) else ema_decay


def record_fields(record) -> dict:
  """A loss record (flax struct / dataclass or dict) as {field: value}; it must have ``loss``."""
  if isinstance(record, Mapping):
    fields = dict(record)
  elif dataclasses.is_dataclass(record):
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
  else:
    raise TypeError("loss_fn must return a dict or a flax struct of per-example scalars, got "
                    f"{type(record).__name__}.")
  if "loss" not in fields:
    raise ValueError(f"the loss record must have a field 'loss' (minimised); got {sorted(fields)}.")
  return {k: v for k, v in fields.items() if v is not None}


def _batch_size(batch) -> int:
  sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(batch)}
  if not sizes or None in sizes or len(sizes) != 1:
    shapes = jax.tree.map(jnp.shape, batch)
    raise ValueError(f"batch must be a pytree of arrays sharing one leading batch axis, got {shapes}.")
  return sizes.pop()


def _check_ema_decay(ema_decay: EmaDecay) -> None:
  if callable(ema_decay):
    return
  if not 0.0 <= ema_decay <= 1.0:
    raise ValueError(f"ema_decay must lie in [0, 1], got {ema_decay!r}.")


def _batch_records(loss_fn: LossFn, params, frozen, batch, example_keys) -> dict:
  """vmap of the per-example loss: {field: (B,)}; each field must be a scalar per example."""
  records = record_fields(jax.vmap(loss_fn, in_axes=(None, None, 0, 0))(params, frozen, batch,
                                                                        example_keys))
  bad = {k: v.shape[1:] for k, v in records.items() if jnp.shape(v)[1:] != ()}
  if bad:
    raise ValueError(f"every field of the loss record must be a scalar per example; got shapes {bad}.")
  return records


def _means(records: dict) -> dict:
  return {k: jnp.mean(v) for k, v in records.items()}


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    ema_decay: EmaDecay) -> TrainStepFn:
  """``train_step(state, batch, key) -> (state, metrics)``, pure.

  theta <- theta + optimizer(grad_theta (1/B) sum_i loss_fn(theta, frozen, example_i, key_i)),
  with key_i = split(fold_in(key, step), B)[i] (VDM's per-step keys), so resuming at step s
  replays exactly. ``metrics`` holds the batch mean of every field of the record and
  ``grad_norm`` (the global norm of the mean gradient, before clipping).
  """
  _check_ema_decay(ema_decay)
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(f"optimizer must be an optax.GradientTransformation, got "
                    f"{type(optimizer).__name__}; several players: make_multi_train_step.")

  def train_step(state: TrainState, batch, key: jax.Array):
    example_keys = jr.split(jr.fold_in(key, state.step), _batch_size(batch))

    def objective(params):
      records = _batch_records(loss_fn, params, state.frozen, batch, example_keys)
      return jnp.mean(records["loss"]), records

    grads, records = jax.grad(objective, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema_update(state.ema_params, params,
                                                     _ema_decay_at(ema_decay, state.step)))
    return new_state, {**_means(records), "grad_norm": optax.tree.norm(grads)}

  return train_step


def make_multi_train_step(players: Mapping[str, tuple[LossFn, optax.GradientTransformation]],
                          ema_decay: EmaDecay, *, order: Sequence[str] | None = None) -> TrainStepFn:
  """One train step of a game between players, e.g. a GAN's generator and discriminator.

  ``state.params`` is a dict {player: tree}; ``players[p] = (loss_fn_p, optimizer_p)`` where
  ``loss_fn_p(params, frozen, example, key)`` sees every player's parameters and is minimised
  with respect to ``params[p]`` only (the others are held fixed). ``order=None``: simultaneous
  updates, every gradient at the current parameters (theta_p <- theta_p - lr grad_p L_p(theta)).
  ``order=("discriminator", "generator")``: in turn (Gauss-Seidel), each player seeing the already
  updated parameters of the players before it (Goodfellow et al. 2014, Alg. 1 with k = 1).
  Player p's example keys are split from fold_in(fold_in(key, step), index of p in sorted names).
  Metrics are "<player>/<field>" batch means and "<player>/grad_norm".
  """
  _check_ema_decay(ema_decay)
  if not players:
    raise ValueError("players must name at least one (loss_fn, optimizer) pair.")
  names = sorted(players)
  if order is not None:
    order = tuple(order)
    if sorted(order) != names:
      raise ValueError(f"order must list each player once, {names}; got {list(order)}.")

  def player_grads(name, params, frozen, batch, step_key):
    loss_fn = players[name][0]
    keys = jr.split(jr.fold_in(step_key, names.index(name)), _batch_size(batch))

    def objective(own):
      records = _batch_records(loss_fn, {**params, name: own}, frozen, batch, keys)
      return jnp.mean(records["loss"]), records

    return jax.grad(objective, has_aux=True)(params[name])

  def train_step(state: TrainState, batch, key: jax.Array):
    _check_players("players", players, state.params)
    step_key = jr.fold_in(key, state.step)
    params, opt_state, metrics = dict(state.params), dict(state.opt_state), {}

    def update(name, grads):
      updates, opt_state[name] = players[name][1].update(grads, opt_state[name], params[name])
      return optax.apply_updates(params[name], updates)

    if order is None:  # every gradient at the current parameters, then all updates
      grads = {n: player_grads(n, params, state.frozen, batch, step_key) for n in names}
      new = {n: update(n, grads[n][0]) for n in names}
      params.update(new)
    else:
      grads = {}
      for n in order:
        grads[n] = player_grads(n, params, state.frozen, batch, step_key)
        params[n] = update(n, grads[n][0])
    for n in names:
      metrics.update({f"{n}/{k}": v for k, v in _means(grads[n][1]).items()})
      metrics[f"{n}/grad_norm"] = optax.tree.norm(grads[n][0])
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema_update(state.ema_params, params,
                                                     _ema_decay_at(ema_decay, state.step)))
    return new_state, metrics

  return train_step
