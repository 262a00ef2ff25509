"""Training and evaluation loops: data parallelism, multi-host input, checkpoints, logging, figures.

Data parallel with ``jax.jit`` + ``jax.sharding``: one mesh axis "data" over every device of every
process; the batch is sharded along it, the train state is replicated. Each process builds only
its rows of the global batch and joins them with ``jax.make_array_from_process_local_data``.
Every leaf of the state is a global array, so orbax saves and restores it from any number of
processes. Files (metrics, TensorBoard, figures, summaries) are written by process 0 only.

Workdir layout:
  checkpoints/<step>/    orbax checkpoints (written to a tmp dir, then renamed: atomic)
  metrics.jsonl          one JSON record per logged step
  tensorboard/           TensorBoard event files
  config.json            the config of the latest run
  samples.png            EMA-model samples over data samples
  eval/summary.json      two-sample distances of the model next to the data-vs-data floor
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from tqdm import tqdm
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from diffusion_jax import metrics as metrics_lib
from diffusion_jax import sampling as sample_lib
from diffusion_jax import train as train_lib
from diffusion_jax.parameterization import NetworkScore
from experiments import build

DATA_AXIS = "data"

# Independent key streams derived from config.seed, one per purpose.
_INIT, _TRAIN, _DATA, _SAMPLE, _EVAL, _LIKELIHOOD = range(6)


def _key(config: ml_collections.ConfigDict, purpose: int) -> jax.Array:
  return jr.fold_in(jr.key(config.seed), purpose)


def sampling_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The key of the end-of-training samples, shared with --mode=sample so both draw the same examples."""
  return _key(config, _SAMPLE)


def likelihood_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The key of --mode=eval_likelihood (its test examples and estimator noise)."""
  return _key(config, _LIKELIHOOD)


def _key_data(key: jax.Array) -> np.ndarray:
  """Raw key bits as NumPy: a host value every process holds, valid input to a multi-process jit."""
  return np.asarray(jr.key_data(key))


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis "data" over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_rows(mesh, batch_size: int) -> tuple[int, int]:
  """The rows [start, stop) of a global batch that this process's devices hold."""
  num_devices = mesh.devices.size
  if batch_size % num_devices:
    raise ValueError(f"config.training.batch_size={batch_size} must be divisible by the number of "
                     f"devices ({num_devices}).")
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  bounds = sorted((idx[0].start or 0, idx[0].stop or batch_size) for idx in index_map.values())
  start, stop = bounds[0][0], bounds[-1][1]
  if sum(b - a for a, b in bounds) != stop - start:
    raise ValueError("this process's devices do not hold a contiguous block of the batch.")
  return start, stop


# ---------------------------------------------------------------------------------------------
# Building the pieces of a run from a config.


class _Run:
  """The static objects of a run, built once from the config (no state, no files)."""

  def __init__(self, config: ml_collections.ConfigDict, mesh):
    self.config = config
    self.mesh = mesh
    self.sde = build.build_sde(config)
    self.model = build.build_model(config)
    self.dataset = build.build_dataset(config)
    self.prediction = build.build_prediction(config)
    self.optimizer, self.lr_schedule = build.build_optimizer(config)
    loss_fn = train_lib.make_dsm_loss_fn(
        self.model.apply, self.sde, prediction=self.prediction,
        weighting=build.build_weighting(config), t_min=config.training.t_min)
    self.train_step = train_lib.make_train_step(loss_fn, self.optimizer,
                                                config.training.ema_decay)

  def init_state(self, key_data: np.ndarray) -> train_lib.TrainState:
    x = jnp.zeros((1, self.dataset.dim))
    params = self.model.init(jr.wrap_key_data(key_data), x, jnp.ones((1,)))
    return train_lib.TrainState.create(params, self.optimizer)

  def create_state(self) -> train_lib.TrainState:
    """The step-0 state, replicated on the mesh (every leaf a global array)."""
    init = jax.jit(self.init_state, out_shardings=replicated(self.mesh))
    return init(_key_data(_key(self.config, _INIT)))

  def abstract_state(self, sharding) -> train_lib.TrainState:
    shapes = jax.eval_shape(self.init_state, _key_data(_key(self.config, _INIT)))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)

  def score_fn(self, params) -> NetworkScore:
    return NetworkScore(self.model.apply, params, self.sde, self.prediction)


def make_sharded_train_step(train_step, mesh):
  """jit(train_step) with the batch split over the "data" axis and the state replicated.

  The state is donated: its buffers are reused for the next state.
  """

  def step_fn(state, batch, key_data):
    return train_step(state, batch, jr.wrap_key_data(key_data))

  rep = replicated(mesh)
  return jax.jit(step_fn, in_shardings=(rep, batch_sharding(mesh), rep),
                 out_shardings=(rep, rep), donate_argnums=0)


def make_global_batch_fn(dataset, key: jax.Array, batch_size: int, mesh):
  """``batch_fn(step)``: the global batch at ``step``, sharded over the mesh's "data" axis.

  This process computes only the rows its devices hold (``dataset.batch`` is a pure function of
  (key, step, row)), and the rows of all processes form one global array.
  """
  start, stop = local_rows(mesh, batch_size)
  local_fn = jax.jit(functools.partial(dataset.batch, batch_size=batch_size, start=start,
                                       stop=stop))
  sharding = batch_sharding(mesh)

  def batch_fn(step: int) -> dict:
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(
            sharding, np.asarray(a), (batch_size,) + a.shape[1:]), local_fn(key, step))

  return batch_fn


def _to_host(tree):
  """A replicated (possibly multi-process) pytree of arrays as NumPy, read from a local shard."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)


# ---------------------------------------------------------------------------------------------
# Checkpoints.


def checkpoint_manager(workdir, config, *, read_only: bool = False) -> ocp.CheckpointManager:
  """Orbax manager for ``workdir/checkpoints``: keeps the last ``keep_checkpoints``.

  Orbax writes each checkpoint into ``<step>.orbax-checkpoint-tmp*`` and renames it to
  ``<step>`` only when complete, so a crash mid-save leaves the previous checkpoints intact and
  the partial directory is never restored (it is deleted on the next start).
  """
  if read_only:  # never deletes anything, so it is safe next to a running training job
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.training.keep_checkpoints,
                                           cleanup_tmp_directories=True)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints", options=options)


def restore_state(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def restore_model(config: ml_collections.ConfigDict, workdir, *, step: int | None = None,
                  sharding=None):
  """The EMA model of the latest (or given) checkpoint in ``workdir``.

  Returns (score_fn, sde, state): ``score_fn`` is a per-example ``NetworkScore`` over the EMA
  parameters; ``state`` is the full ``TrainState``. Arrays are placed with ``sharding``
  (default: the first local device; pass a replicated ``NamedSharding`` for multi-process use).
  """
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  run = _Run(config, mesh=None)
  with checkpoint_manager(workdir, config, read_only=True) as manager:
    state = restore_state(manager, run.abstract_state(sharding), step)
  if state is None:
    raise FileNotFoundError(f"No checkpoint in {pathlib.Path(workdir) / 'checkpoints'}.")
  return run.score_fn(state.ema_params), run.sde, state


# ---------------------------------------------------------------------------------------------
# Logging.


class _MetricWriter:
  """metrics.jsonl + TensorBoard on process 0; on resume, records past the restored step are dropped."""

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

  def close(self) -> None:
    if self.enabled:
      self.tb.close()


# ---------------------------------------------------------------------------------------------
# Training.


def train(config: ml_collections.ConfigDict, workdir, *, stop_at_step: int | None = None,
          mesh=None) -> train_lib.TrainState:
  """Train to ``config.training.num_steps``, resuming from the latest checkpoint in ``workdir``.

  ``stop_at_step`` ends the loop early without a final checkpoint, as a preemption would (tests).
  Returns the replicated final state.
  """
  workdir = pathlib.Path(workdir)
  mesh = make_mesh() if mesh is None else mesh
  run = _Run(config, mesh)
  tc = config.training
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

  manager = checkpoint_manager(workdir, config)
  state = restore_state(manager, run.abstract_state(replicated(mesh)))
  if state is None:
    state = run.create_state()
  start_step = int(_to_host(state.step))
  if start_step:
    logging.info("Resumed from the checkpoint at step %d in %s.", start_step, workdir)

  step_fn = make_sharded_train_step(run.train_step, mesh)
  batch_fn = make_global_batch_fn(run.dataset, _key(config, _DATA), tc.batch_size, mesh)
  train_key = _key_data(_key(config, _TRAIN))
  writer = _MetricWriter(workdir, start_step)
  end_step = tc.num_steps if stop_at_step is None else min(stop_at_step, tc.num_steps)
  try:
    progress = tqdm(total=tc.num_steps, initial=start_step, disable=jax.process_index() != 0,
                    desc="train", dynamic_ncols=True)
    pending, tic = [], time.perf_counter()
    for step in range(start_step, end_step):
      state, step_metrics = step_fn(state, batch_fn(step), train_key)
      pending.append(step_metrics)
      done = step + 1
      progress.update(1)
      if done % tc.log_every == 0 or done == tc.num_steps:
        means = _mean_metrics(pending)
        toc = time.perf_counter()
        means["learning_rate"] = float(run.lr_schedule(step))
        means["steps_per_sec"] = len(pending) / (toc - tic)
        writer.write(done, means)
        progress.set_postfix(loss=f"{means['loss']:.4f}")
        pending, tic = [], toc
      if done % tc.checkpoint_every == 0 or done == tc.num_steps:
        manager.save(done, args=ocp.args.StandardSave(state))
    progress.close()
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
  return state


def _mean_metrics(pending: list[dict]) -> dict:
  host = [_to_host(m) for m in pending]
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


# ---------------------------------------------------------------------------------------------
# Sampling and evaluation.


@functools.lru_cache(maxsize=None)
def _sampling_program(sde, sampler, shape: tuple[int, ...], num: int, denoise_final, mesh):
  """jit of ``num`` examples of ``sample_from_prior``, keys sharded over the mesh's "data" axis."""

  def sample_all(score_fn, ts, key_data, offset):
    keys = sample_lib.example_keys(jr.wrap_key_data(key_data), num, offset)
    keys = jax.lax.with_sharding_constraint(keys, batch_sharding(mesh))
    one = lambda k: sample_lib.sample_from_prior(sde, score_fn, sampler, ts, key=k, shape=shape,
                                                 denoise_final=denoise_final)
    return jax.vmap(one, axis_name=sample_lib.BATCH_AXIS)(keys)

  rep = replicated(mesh)
  return jax.jit(sample_all, in_shardings=(rep, rep, rep, rep), out_shardings=rep)


def draw_samples(score_fn, sde, sampler, ts, key: jax.Array, *, num: int, shape: tuple[int, ...],
                 mesh, offset: int = 0, denoise_final: bool | None = None) -> dict:
  """Examples offset .. offset + num - 1 of ``diffusion_jax.sample_batch``, sharded over the mesh.

  Example n uses fold_in(key, n) exactly as ``sample_batch`` does, so the samples do not depend on
  the number of devices or processes, nor on how a large draw is chunked. Returns host arrays
  x, denoised and nfe, gathered on every process.
  """
  num_devices = mesh.devices.size
  padded = -(-num // num_devices) * num_devices  # keys shard evenly over the devices
  program = _sampling_program(sde, sampler, tuple(shape), padded, denoise_final, mesh)
  out = program(score_fn, np.asarray(ts, np.float32), _key_data(key), np.int32(offset))
  return {"x": _to_host(out.x)[:num], "denoised": _to_host(out.denoised)[:num],
          "nfe": _to_host(out.nfe)[:num]}


def two_sample_distances(x: np.ndarray, y: np.ndarray, key: jax.Array, config) -> dict:
  """Energy distance, squared MMD (RBF) and sliced W1 between sample sets x and y."""
  return {
      "energy_distance": float(metrics_lib.energy_distance(x, y)),
      "mmd": float(metrics_lib.mmd_rbf(x, y, bandwidth=config.eval.mmd_bandwidth)),
      "sliced_w1": float(metrics_lib.sliced_wasserstein(
          x, y, key, num_projections=config.eval.num_projections)),
  }


def plot_samples(path: pathlib.Path, model_samples: np.ndarray, data_samples: np.ndarray,
                 title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  both = np.concatenate([model_samples, data_samples])
  lo, hi = np.percentile(both, 0.5, axis=0), np.percentile(both, 99.5, axis=0)
  pad = 0.1 * (hi - lo)
  fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
  axes[0].scatter(*data_samples.T, s=2, c="tab:gray", alpha=0.5)
  axes[0].set_title("data")
  axes[1].scatter(*data_samples.T, s=2, c="tab:gray", alpha=0.25, label="data")
  axes[1].scatter(*model_samples.T, s=2, c="tab:blue", alpha=0.6, label="model (EMA)")
  axes[1].set_title(title)
  axes[1].legend(loc="upper right", markerscale=4)
  for ax in axes:
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_aspect("equal")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def evaluate(config: ml_collections.ConfigDict, workdir, state: train_lib.TrainState, *,
             mesh=None) -> dict:
  """Sample the EMA model, write samples.png and eval/summary.json; returns the summary."""
  workdir = pathlib.Path(workdir)
  mesh = make_mesh() if mesh is None else mesh
  run = _Run(config, mesh)
  sc = config.sampling
  sampler = build.build_sampler(config)
  ts = np.asarray(build.build_time_grid(config, run.sde))
  tic = time.perf_counter()
  drawn = draw_samples(run.score_fn(state.ema_params), run.sde, sampler, ts,
                       sampling_key(config), num=sc.num_samples, shape=(run.dataset.dim,),
                       mesh=mesh, denoise_final=build.build_denoise_final(config))
  samples = drawn["x"]
  sample_time = time.perf_counter() - tic
  if jax.process_index() != 0:
    return {}
  ref_key, fresh_key, proj_key = jr.split(_key(config, _EVAL), 3)
  reference = np.asarray(run.dataset.sample(ref_key, sc.num_samples))
  model = two_sample_distances(samples, reference, proj_key, config)
  # The floor: the same distances between the reference and independent data sets of the same
  # size; averaged over repeats because one pair's sliced W1 varies by about 20% at n = 4000.
  floors = [two_sample_distances(np.asarray(run.dataset.sample(k, sc.num_samples)), reference,
                                 proj_key, config)
            for k in jr.split(fresh_key, config.eval.floor_repeats)]
  floor = {k: float(np.mean([f[k] for f in floors])) for k in model}
  summary = {
      "step": int(_to_host(state.step)),
      "num_samples": sc.num_samples,
      "sampler": {"name": sc.sampler, "repr": repr(sampler), "grid": sc.grid,
                  "num_steps": len(ts) - 1, "t_min": float(ts[-1]),
                  "nfe_mean": float(np.mean(drawn["nfe"])), "seconds": sample_time},
      "model_vs_data": model,
      "data_vs_data": floor,
      "data_vs_data_std": {k: float(np.std([f[k] for f in floors])) for k in model},
      "floor_repeats": len(floors),
      # Energy distance and MMD are unbiased estimates: their floor is about 0 and may be negative,
      # so compare them with data_vs_data_std; the ratio is given only where the floor is positive.
      "ratio_to_floor": {k: model[k] / floor[k] if floor[k] > 0 else None for k in model},
      "num_nonfinite_samples": int(np.sum(~np.isfinite(samples).all(axis=1))),
  }
  (workdir / "eval").mkdir(parents=True, exist_ok=True)
  (workdir / "eval" / "summary.json").write_text(json.dumps(summary, indent=2))
  plot_samples(workdir / "samples.png", samples, reference,
               f"model (EMA) at step {summary['step']}")
  return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Train (resuming if a checkpoint exists), then sample and evaluate the EMA model."""
  mesh = make_mesh()
  state = train(config, workdir, mesh=mesh)
  summary = evaluate(config, workdir, state, mesh=mesh)
  if summary:
    print(f"Step {summary['step']}: distances model vs data (floor: data vs data) "
          + ", ".join(f"{k} {summary['model_vs_data'][k]:.4g} ({summary['data_vs_data'][k]:.4g})"
                      for k in summary["model_vs_data"])
          + f". Wrote {pathlib.Path(workdir) / 'samples.png'} and eval/summary.json.")
  return summary
