"""What a method does, as a record of pure functions: the runner knows this record, never the method.

A diffusion model, a VAE or a GAN is one more ``Method`` built by ``experiments/build.py``, not a
fork of the training loop.
"""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Method:
  """The functions the runner calls.

  init(key) -> TrainState: the step-0 state (trainable params, frozen tree, optimiser state).
  train_step(state, batch, key) -> (state, metrics): pure (``diffusion_jax.train``); for a
    single-player method ``make_train_step(loss_fn, ...)``, for a game ``make_multi_train_step``.
  sample(params, keys, cond) -> {"x": (N, *shape), ...}: unjitted, vmapped over the N example keys
    (and condition rows, or cond None); the runner jits it with shardings.
  evaluate(draw, key, params=None) -> (summary, plot data): ``draw(num, cond)`` is the runner's
    sharded sampler over the EMA parameters ``params``; with ``params`` the evaluation may also
    score the model itself (images: test bits/dim), without it only its samples (--mode=sample).
    One evaluation module per kind of data (``experiments/evaluate``).
  example_shape: the shape of one example's "x0".
  loss_fn: the per-example loss ``train_step`` was built from (None for games).
  cond_key: the batch entry that conditions the model (None: unconditional).
  null_cond: the condition meaning "unconditional" (classifier-free guidance, evaluation).
  score_fn(params, cond=None) -> per-example score function (score-based methods; else None).
  log_likelihood(params, x, key) -> {name: (N,) bits/dim}: a baseline's exact value or bounds on
    images x in the shared convention (build_baselines.py); None: none, or (diffusion) the
    probability-flow ODE's of ``likelihood_eval``.
  write_figure(path, plot_data, title): the PNG of ``evaluate``'s plot data (samples.png).
  write_grid(path, x, title): a PNG grid of model samples ``x`` (N, *shape): the sample grids
    written during training (config.training.sample_every); None: the method has none.
  to_data_range(x) -> array: model samples in the data's own range and type (images: integer
    levels), saved next to them; None: the model's range is the data's.
  headline(summary) -> str: the evaluation's numbers in one line (None: the toy two-sample line).
  frozen() -> tree: the frozen tree of a method that tunes a trained model (its base network),
    read from where it lives at every start and never written into the run's checkpoints, which
    then hold the small trainable part alone; None: the state is checkpointed whole.
  combine(params, frozen) -> the model's parameters, what ``sample``, ``score_fn`` and
    ``evaluate`` take (a tuned model: ``tuning.combine``); None: the (EMA) trainable tree itself.
  sampler_info: {"name", "repr", "num_steps"} of a method with its own sampler (the baselines:
    a decoder, a generator, a pixel-by-pixel loop), for summaries, file names and the progress
    bar; None: the config's diffusion sampler (config.sampling).
  """

  init: Callable
  train_step: Callable
  sample: Callable
  evaluate: Callable
  example_shape: tuple[int, ...]
  loss_fn: Callable | None = None
  cond_key: str | None = None
  null_cond: object = None
  score_fn: Callable | None = None
  log_likelihood: Callable | None = None
  write_figure: Callable | None = None
  write_grid: Callable | None = None
  to_data_range: Callable | None = None
  headline: Callable | None = None
  frozen: Callable | None = None
  combine: Callable | None = None
  sampler_info: dict | None = None
