"""The training loop and the end-of-training evaluation, for any ``Method`` and any batch source.

Workdir layout:
  checkpoints/<step>/    orbax checkpoints: the state, plus the data iterator (experiments/checkpoints.py)
  checkpoints_corrupted/ checkpoints that failed to restore, set aside (never deleted)
  metrics.jsonl          one JSON record per logged step
  train_time.json        training seconds up to each checkpointed step (TrainClock)
  tensorboard/           TensorBoard event files
  config.json            the config of the latest run
  samples.png            EMA-model samples over data samples
  eval/summary.json      two-sample distances of the model next to the exact-vs-exact floor band

Failures are loud: a step whose metrics or parameters are non-finite stops the run with a message
naming the step and the last good checkpoint, which is never overwritten (a non-finite state is
never saved). Files are written by process 0 only.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

import jax
import jax.random as jr
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from diffusion_jax import train as train_lib
from experiments import workdir as workdir_lib
from experiments import build, keys, sharding
from experiments import progress as progress_lib
from experiments.checkpoints import Checkpoints


class TrainingDiverged(RuntimeError):
  """The loss or the parameters became non-finite."""


def write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  if jax.process_index() == 0:
    workdir_lib.save_config(workdir, config)


def create_state(method, config, mesh) -> train_lib.TrainState:
  """The step-0 state, replicated on the mesh (every leaf a global array).

  The init runs eagerly, op by op, and only its result crosses a (trivial) jit to be placed: a
  conv U-Net's init compiled under jit took 33 s on XLA:CPU against 2 s eagerly
  (../shared/ENVIRONMENT.md). Every process computes the same state from the same key, which is
  what a replicated input of a multi-process jit requires.
  """
  state = jax.device_get(method.init(keys.key(config, keys.INIT)))
  return jax.jit(lambda s: s, out_shardings=sharding.replicated(mesh))(state)


def abstract_state(method, config, state_sharding) -> train_lib.TrainState:
  """The shapes of what a checkpoint holds: the train state, less a tuned method's frozen tree."""
  shapes = jax.eval_shape(lambda bits: method.init(jr.wrap_key_data(bits)),
                          sharding.key_data(keys.key(config, keys.INIT)))
  if method.frozen is not None:
    shapes = shapes.replace(frozen=None)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=state_sharding),
                      shapes)


def with_frozen(method, state: train_lib.TrainState, state_sharding) -> train_lib.TrainState:
  """A restored state with the method's frozen tree put back (``Method.frozen``)."""
  if method.frozen is None or state is None:
    return state
  return state.replace(frozen=jax.device_put(method.frozen(), state_sharding))


def checkpointed(method, state: train_lib.TrainState) -> train_lib.TrainState:
  """What a checkpoint stores of ``state``: all of it, or a tuned method's trainable part."""
  return state if method.frozen is None else state.replace(frozen=None)


def model_params(method, state: train_lib.TrainState, params=None):
  """The parameters ``method.sample`` / ``score_fn`` take from ``state``'s EMA tree (or
  ``params``): the tree itself, or a tuned model's {"base": frozen, "tuned": EMA tree}."""
  params = state.ema_params if params is None else params
  return params if method.combine is None else method.combine(params, state.frozen)


class MetricWriter:
  """metrics.jsonl + TensorBoard on process 0; on resume, records past the restored step are dropped.

  clu's metric writers were considered: ``clu.metric_writers`` imports TensorFlow at import time
  (its summary writer), which this project does not install, so tensorboardX writes the events.
  """

  def __init__(self, workdir: pathlib.Path, start_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    import tensorboardX  # lazily: only process 0 writes

    self.path = workdir / "metrics.jsonl"
    if self.path.exists():  # drop what an interrupted run logged after its last checkpoint
      kept = [ln for ln in self.path.read_text().splitlines()
              if ln.strip() and json.loads(ln)["step"] <= start_step]
      self.path.write_text("".join(ln + "\n" for ln in kept))
    self.tb = tensorboardX.SummaryWriter(str(workdir / "tensorboard"),
                                         purge_step=start_step if start_step else None)

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    for name, value in scalars.items():
      self.tb.add_scalar(f"train/{name}", float(value), step)

  def image(self, tag: str, png_path: pathlib.Path, step: int) -> None:
    """A PNG written to disk, also shown in TensorBoard's image tab."""
    if not self.enabled:
      return
    import matplotlib.image

    self.tb.add_image(tag, matplotlib.image.imread(png_path)[..., :3], step, dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self.tb.close()


def _check_finite(pending: list, first_step: int, checkpoints: Checkpoints) -> None:
  """Raise TrainingDiverged at the first step of ``pending`` whose metrics or params are non-finite."""
  flags = [bool(sharding.to_host(finite)) for _, finite in pending]
  if all(flags):
    return
  bad = flags.index(False)
  step = first_step + bad + 1  # the step whose update produced the non-finite values
  metrics = {k: float(v) for k, v in sharding.to_host(pending[bad][0]).items()}
  checkpoints.manager.wait_until_finished()
  good = checkpoints.steps()
  where = (f"the last good checkpoint is step {good[-1]} in {checkpoints.path(good[-1])}, left "
           "untouched" if good else "no checkpoint had been written yet")
  raise TrainingDiverged(
      f"Training diverged at step {step}: the loss or the parameters became non-finite "
      f"(metrics {metrics}). Stopped without saving; {where}. Lower "
      "config.training.learning_rate or set config.training.grad_clip_norm, then rerun to resume.")


def train(config: ml_collections.ConfigDict, workdir, *, stop_at_step: int | None = None,
          mesh=None, method=None, source=None) -> train_lib.TrainState:
  """Train to ``config.training.num_steps``, resuming from the newest intact checkpoint in ``workdir``.

  ``stop_at_step`` ends the loop early without a final checkpoint, as a preemption would (tests).
  ``source``: the batch source (default: the config's, ``build.build_batch_source``).
  Returns the replicated final state.
  """
  workdir = pathlib.Path(workdir)
  mesh = sharding.make_mesh() if mesh is None else mesh
  method = build.build_method(config) if method is None else method
  tc = config.training
  _, lr_schedule = build.build_optimizer(config)
  if source is None:
    source = build.build_batch_source(config, mesh, keys.key(config, keys.DATA))
  write_config(config, workdir)

  checkpoints = Checkpoints(workdir, keep=tc.keep_checkpoints)
  state, start_step = checkpoints.restore(abstract_state(method, config, sharding.replicated(mesh)),
                                          source.checkpoint_item)
  state = with_frozen(method, state, sharding.replicated(mesh))
  if state is None:
    state, start_step = create_state(method, config, mesh), 0
  else:
    logging.info("Resumed from the checkpoint at step %d in %s.", start_step, workdir)
  source.resume(start_step)
  clock = TrainClock(workdir, start_step, tc.get("time_budget_s", 0.0))
  if clock.exhausted():
    logging.warning("The checkpoint at step %d used the training budget (%.0f of %.0f s, "
                    "config.training.time_budget_s): not training further.", start_step,
                    clock.spent, clock.budget)

  step_fn = sharding.make_sharded_train_step(method.train_step, mesh)
  train_key = sharding.key_data(keys.key(config, keys.TRAIN))
  writer = MetricWriter(workdir, start_step)
  grid_every = tc.get("sample_every", 0) if method.write_grid is not None else 0
  end_step = tc.num_steps if stop_at_step is None else min(stop_at_step, tc.num_steps)
  if clock.exhausted():
    end_step = start_step
  try:
    progress = tqdm(total=tc.num_steps, initial=start_step, disable=jax.process_index() != 0,
                    desc="train", dynamic_ncols=True)
    pending, checked, logged, tic = [], start_step, [], time.perf_counter()
    for step in range(start_step, end_step):
      state, step_metrics, finite = step_fn(state, source.batch(step), train_key)
      pending.append((step_metrics, finite))
      done = step + 1
      progress.update(1)
      # One process reads the budget after every step (the host's clock, a few dispatched steps
      # ahead of the device); a multi-process job at log and checkpoint steps only, where process
      # 0's reading is sent to all (they must stop at the same step).
      over = clock.single_process and clock.over_budget()
      log = done % tc.log_every == 0 or done == tc.num_steps or over
      save = done % tc.checkpoint_every == 0 or done == tc.num_steps or over
      if log or save:  # one host sync per log/checkpoint, not per step
        _check_finite(pending, checked, checkpoints)
        logged.extend(m for m, _ in pending)
        pending, checked = [], done
        if not clock.single_process:
          over = clock.over_budget()
          save = save or over
      if log:
        means = _mean_metrics(logged)
        toc = time.perf_counter()
        means["learning_rate"] = float(lr_schedule(step))
        means["steps_per_sec"] = len(logged) / (toc - tic)
        writer.write(done, means)
        postfix = {"loss": f"{means['loss']:.4f}"} if "loss" in means else {}
        if clock.budget:
          postfix["budget"] = f"{clock.total():.0f}/{clock.budget:.0f}s"
        progress.set_postfix(postfix)
        logged, tic = [], toc
      if save:
        checkpoints.save(done, checkpointed(method, state), source.checkpoint_item)
        clock.record(done)
      if grid_every and (done % grid_every == 0 or done == tc.num_steps or over):
        write_training_grid(method, state, config, mesh, workdir, done, writer)
      if over:
        logging.warning("Stopped at step %d of %d: the training budget config.training."
                        "time_budget_s=%g s is used (%.0f s).", done, tc.num_steps,
                        clock.budget, clock.total())
        break
    progress.close()
  finally:
    checkpoints.close()
    writer.close()
  return state


class TrainClock:
  """The run's training wall time, summed over its resumptions, and its budget.

  workdir/train_time.json maps each checkpointed step to the seconds of training that led to it
  (written atomically by process 0 after each checkpoint), so a resumed run continues the sum
  from the step it restored, and a run that used its budget (config.training.time_budget_s > 0)
  is not trained further when started again: it is loaded and evaluated. The time counts from
  the loop's start (its first step's compilation included); the run stops at the first step
  that ends past the budget (the first log or checkpoint step in a multi-process job).
  """

  def __init__(self, workdir: pathlib.Path, start_step: int, budget: float):
    self.path, self.budget = workdir / "train_time.json", float(budget)
    self.steps = read_train_time(workdir)
    self.steps = {k: v for k, v in self.steps.items() if k <= start_step}
    self.spent = self.steps.get(start_step, 0.0)
    if start_step and start_step not in self.steps:
      logging.warning("%s has no time for the restored step %d: counting from 0 s.", self.path,
                      start_step)
    self.single_process = jax.process_count() == 1
    self.tic = time.perf_counter()

  def total(self) -> float:
    return self.spent + time.perf_counter() - self.tic

  def exhausted(self) -> bool:
    return self.budget > 0 and self.spent >= self.budget

  def over_budget(self) -> bool:
    if self.budget <= 0:
      return False
    over = self.total() >= self.budget
    if not self.single_process:  # process 0's clock decides for every process
      from jax.experimental import multihost_utils

      over = bool(multihost_utils.broadcast_one_to_all(np.asarray(over)))
    return over

  def record(self, step: int) -> None:
    self.steps[int(step)] = self.total()
    if jax.process_index() == 0:
      workdir_lib.write_json_atomically(self.path, {str(k): v for k, v in sorted(self.steps.items())})


def read_train_time(workdir) -> dict[int, float]:
  """workdir/train_time.json as {step: training seconds up to it} (empty when absent)."""
  path = pathlib.Path(workdir) / "train_time.json"
  if not path.exists():
    return {}
  return {int(k): float(v) for k, v in json.loads(path.read_text()).items()}


def write_training_grid(method, state, config, mesh, workdir: pathlib.Path, step: int,
                        writer: "MetricWriter") -> None:
  """EMA samples at ``step`` as workdir/samples/train_<step>.png (and in TensorBoard), drawn from
  the same keys every time so the grids show one set of noises improving."""
  num = config.training.sample_grid_size
  drawn = make_draw(method, model_params(method, state), config, mesh)(num)
  if jax.process_index() != 0:
    return
  path = workdir / "samples" / f"train_{step:07d}.png"
  path.parent.mkdir(parents=True, exist_ok=True)
  method.write_grid(path, drawn["x"], f"EMA samples at step {step}")
  writer.image("samples", path, step)


def _mean_metrics(pending: list[dict]) -> dict:
  host = [sharding.to_host(m) for m in pending]
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


@functools.lru_cache(maxsize=8)
def _sampler_program(sample_fn, mesh):
  # One compiled sampler per (method, mesh): the grids drawn during training and the final
  # evaluation reuse it (the parameters are an argument, not a constant).
  return sharding.make_sharded_sampler(sample_fn, mesh)


def make_draw(method, params, config, mesh, *, progress: bool = False):
  """``draw(num, cond) -> host dict``: the method's sharded sampler over ``params``, examples in
  chunks of config.sampling.batch_size, example n with key fold_in(sampling_key, n)."""
  program = _sampler_program(method.sample, mesh)
  if method.sampler_info is not None:
    num_steps = method.sampler_info["num_steps"]
  else:
    num_steps = len(build.build_time_grid(config, build.build_sde(config))) - 1

  def draw(num, cond=None):
    with progress_lib.StepBar(num=num, batch_size=config.sampling.batch_size,
                              num_steps=num_steps, enabled=progress) as bar:
      return sharding.draw(program, params, keys.sampling_key(config), num=num, mesh=mesh,
                           cond=cond, batch_size=config.sampling.batch_size, progress=bar)

  return draw


def sampler_summary(config, method=None) -> dict:
  """The configured sampler and grid, for summaries (a method's own sampler: its description)."""
  if method is not None and method.sampler_info is not None:
    return dict(method.sampler_info)
  sc = config.sampling
  sampler = build.build_sampler(config)
  ts = np.asarray(build.build_time_grid(config, build.build_sde(config)))
  summary = {"name": sc.sampler, "repr": repr(sampler), "grid": sc.grid, "num_steps": len(ts) - 1,
             "t_min": float(ts[-1])}
  g = build.guidance_config(config)
  if g.kind != "none":
    summary["guidance"] = g.to_dict()
  return summary


def evaluate(config: ml_collections.ConfigDict, workdir, state: train_lib.TrainState, *,
             mesh=None, method=None) -> dict:
  """Sample the EMA model, write samples.png and eval/summary.json; returns the summary."""
  workdir = pathlib.Path(workdir)
  mesh = sharding.make_mesh() if mesh is None else mesh
  method = build.build_method(config) if method is None else method
  params = model_params(method, state)
  draws, draw = recording_draw(make_draw(method, params, config, mesh))
  tic = time.perf_counter()
  summary, plot = method.evaluate(draw, keys.eval_key(config), params=params)
  seconds = time.perf_counter() - tic
  if jax.process_index() != 0:
    return {}
  step = int(sharding.to_host(state.step))
  summary = {"step": step, **summary,
             "sampler": {**sampler_summary(config, method), "nfe_mean": summary["nfe_mean"],
                         "seconds": seconds}}
  (workdir / "eval").mkdir(parents=True, exist_ok=True)
  (workdir / "eval" / "summary.json").write_text(json.dumps(summary, indent=2))
  if method.to_data_range is not None:  # images: the samples themselves, in the data's levels
    from experiments import sampling as sampling_lib

    save_draws(workdir / "samples" / f"{sampling_lib.output_stem(config, step)}.npz", draws, method,
               time_grid(config, method))
  method.write_figure(workdir / "samples.png", plot, f"model (EMA) at step {step}")
  return summary


def recording_draw(draw):
  """(draws, draw'): draw' is ``draw`` that also keeps what it drew (the last call) in ``draws``."""
  draws = {}

  def wrapped(num, cond=None):
    out = draw(num, cond)
    draws.clear()
    if isinstance(cond, dict):  # a structured condition: one entry per field
      draws.update(out, **{f"cond_{k}": np.asarray(v) for k, v in cond.items()})
    else:
      draws.update(out, **({} if cond is None else {"labels": np.asarray(cond)}))
    return out

  return draws, wrapped


def time_grid(config, method) -> np.ndarray | None:
  """The diffusion sampler's time grid (None for a method with its own sampler)."""
  if method.sampler_info is not None:
    return None
  return np.asarray(build.build_time_grid(config, build.build_sde(config)))


def save_draws(path: pathlib.Path, draws: dict, method, ts) -> None:
  """The drawn samples as .npz: x (model space), denoised, nfe, ts (a diffusion sampler's grid),
  labels, and the samples in the data's range (``method.to_data_range``) when the method has one."""
  path.parent.mkdir(parents=True, exist_ok=True)
  extra = {} if method.to_data_range is None else {"data": method.to_data_range(draws["x"])}
  if ts is not None:
    extra["ts"] = np.asarray(ts)
  np.savez(path, **draws, **extra)


def headline(summary: dict, method=None) -> str:
  """One line of the evaluation's numbers (the method's own line where it has one)."""
  if method is not None and method.headline is not None:
    return method.headline(summary)
  def line(part):
    model = part["model_vs_data"]
    if model is None:
      return f"{part['num_nonfinite_samples']} non-finite samples, not scored"
    return ", ".join(f"{k} {model[k]:.3g} (band <= {part['floor_band_hi'][k]:.3g})" for k in model)

  if "classes" in summary:
    parts = [f"class {k}: {line(v)}" for k, v in summary["classes"].items()]
    parts.append(f"null label: {line(summary['unconditional'])}")
    return "; ".join(parts)
  return line(summary)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Train (resuming if a checkpoint exists), then sample and evaluate the EMA model."""
  mesh = sharding.make_mesh()
  method = build.build_method(config)
  state = train(config, workdir, mesh=mesh, method=method)
  summary = evaluate(config, workdir, state, mesh=mesh, method=method)
  if summary:
    what = ("model vs held-out data" if method.headline is not None else
            "model vs exact data (floor band: mean + 3 std of exact vs exact)")
    print(f"Step {summary['step']}: {what} {headline(summary, method)}. Wrote "
          f"{pathlib.Path(workdir) / 'samples.png'} and "
          f"{pathlib.Path(workdir) / 'eval' / 'summary.json'}.")
  return summary
