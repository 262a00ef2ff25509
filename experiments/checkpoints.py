"""Checkpoints of a run in ``workdir/checkpoints/<step>``: the train state, plus the data iterator.

Each checkpoint is an orbax Composite: item "state" (the ``TrainState``, every leaf a global array)
and, when the batch source has one, item "data" (the grain iterator's state, one JSON file per
process, through grain's orbax handler). Orbax writes a checkpoint into
``<step>.orbax-checkpoint-tmp*`` and renames it to ``<step>`` only when complete, so a crash mid-save
leaves the previous checkpoints intact and the partial directory is never restored (it is removed
on the next start).

Restoring checks what it reads. A checkpoint that fails to restore (a truncated array file, an
empty metadata or manifest file, an empty step directory, a step that disagrees with its
directory) is reported by path and moved to ``workdir/checkpoints_corrupted/`` (nothing is
deleted), and the newest intact one is used. If checkpoints exist but none is intact, restoring
stops with a message: a run never starts over silently.
"""

from __future__ import annotations

import contextlib
import functools
import logging as py_logging
import pathlib
import shutil
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from experiments import sharding

CORRUPTED_DIR = "checkpoints_corrupted"


class NoIntactCheckpointError(RuntimeError):
  """Checkpoints exist, but none of them restores."""


class _DropReadOnlyNotice(py_logging.Filter):
  # Orbax logs "Given directory is read only=..." as a WARNING whenever a manager is opened
  # read-only, which is exactly what restoring for sampling or evaluation asks for.
  def filter(self, record: py_logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


@contextlib.contextmanager
def _quiet_read_only():
  logger, notice = py_logging.getLogger("absl"), _DropReadOnlyNotice()
  logger.addFilter(notice)
  try:
    yield
  finally:
    logger.removeFilter(notice)


def _step_dirs(directory: pathlib.Path) -> dict[int, pathlib.Path]:
  """Committed step directories (integer names; orbax's tmp directories are not steps)."""
  if not directory.is_dir():
    return {}
  return {int(p.name): p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()}


@functools.cache
def _write_one_replica_on_cpu() -> None:
  """On CPU, save each replicated array from one replica (orbax's ``ArrayHandler`` with
  ``use_replica_parallel=False``); cached, so it runs once per process.

  Orbax's default on CPU splits every replicated array into one slice per replica so the replicas
  write in parallel. On one host the replicas are one memory; each slice is an eager JAX ``slice``
  of its own shape, compiled on first use: with 8 host devices that was 4 of the 5 s a save of a
  two-layer MLP's train state took (732 slices). GPU and TPU keep orbax's default.
  """
  if jax.default_backend() != "cpu":
    return
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # orbax warns that it replaces its own jax.Array entry
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  finally:
    logging.set_verbosity(level)


class Checkpoints:
  """``workdir/checkpoints`` through an orbax ``CheckpointManager`` keeping the last ``keep``."""

  def __init__(self, workdir, *, keep: int | None = None, read_only: bool = False):
    _write_one_replica_on_cpu()
    self.workdir = pathlib.Path(workdir).absolute()
    self.directory = self.workdir / "checkpoints"
    self.read_only = read_only
    if read_only:  # never deletes or moves anything: safe next to a running training job
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
      with _quiet_read_only():
        self.manager = ocp.CheckpointManager(self.directory, options=options)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, cleanup_tmp_directories=True)
      self.manager = ocp.CheckpointManager(self.directory, options=options)

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def steps(self) -> list[int]:
    return sorted(_step_dirs(self.directory))

  def path(self, step: int) -> pathlib.Path:
    return self.directory / str(step)

  def save(self, step: int, state, data_item=None) -> None:
    """Save ``state`` (and the data iterator ``data_item``) as checkpoint ``step`` (asynchronously)."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_item is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_item)
    self.manager.save(step, args=ocp.args.Composite(**items))

  def _restore_step(self, step: int, abstract_state, data_item):
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_item is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_item)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    state = restored["state"]
    saved_step = int(sharding.to_host(state.step))
    if saved_step != step:
      raise ValueError(f"the state inside says step {saved_step}.")
    return state

  def _set_aside(self, step: int) -> pathlib.Path:
    target = self.workdir / CORRUPTED_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(self.path(step)), str(target))
    self.manager.reload()
    return target

  def restore(self, abstract_state, data_item=None, *, step: int | None = None):
    """The newest intact checkpoint (or exactly ``step``): (state, step), or (None, None) if none.

    ``abstract_state`` gives the structure, shapes, dtypes and shardings to restore into;
    ``data_item`` is the iterator to restore in place (the batch source's ``checkpoint_item``).
    """
    steps = self.steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"No checkpoint for step {step} in {self.directory}; the "
                                f"checkpoints there are {steps or 'none'}.")
      steps = [step]
    failures = []  # (step, message), newest first
    for candidate in reversed(steps):
      try:
        with _quiet_read_only():
          state = self._restore_step(candidate, abstract_state, data_item)
      except Exception as error:  # orbax/tensorstore raise many kinds: each one means unusable
        reason = str(error).split(" [tensorstore_spec")[0][:400]  # without tensorstore's specs
        message = f"{self.path(candidate)} cannot be restored ({type(error).__name__}: {reason})"
        logging.warning("Corrupted checkpoint: %s.", message)
        failures.append((candidate, message))
        continue
      # Set the corrupted newer ones aside (one process only: the directory is shared), so their
      # steps can be saved again; only now, once an intact one is known to exist.
      if failures and not self.read_only and step is None and jax.process_count() == 1:
        for bad, message in failures:
          logging.warning("Moved the corrupted checkpoint %s to %s.", self.path(bad),
                          self._set_aside(bad))
      if failures:
        logging.warning("Falling back to the newest intact checkpoint, %s.", self.path(candidate))
      return state, candidate
    if failures:
      raise NoIntactCheckpointError(
          f"No intact checkpoint in {self.directory}; refusing to start over (move the directory "
          "away to start a new run). " + " ".join(f"{m}." for _, m in failures))
    return None, None
