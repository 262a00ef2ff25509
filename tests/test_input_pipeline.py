"""Batch sources: the grain source reads each process's rows of a per-epoch shuffled dataset, its
iterator state restores exactly, and a run killed with SIGKILL mid-epoch and restarted ends with
the same parameters and metrics as an uninterrupted one (bitwise on CPU)."""

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from experiments import input_pipeline, run
from experiments.configs import toy2d_tiny
from experiment_helpers import REPO, assert_trees_equal, subprocess_env


def _ids(n):
  return input_pipeline.ArraySource({"x0": np.arange(n, dtype=np.float32)[:, None],
                                     "label": np.arange(n, dtype=np.int32)})


def test_local_batches_are_rows_of_a_reshuffled_epoch_and_split_by_process():
  n, batch = 12, 4  # an epoch is 3 steps
  whole = input_pipeline.local_batches(_ids(n), batch_size=batch, seed=3, start=0, stop=batch)
  epochs = [np.concatenate([whole[s]["label"] for s in range(3 * e, 3 * e + 3)]) for e in range(3)]
  for labels in epochs:  # every example exactly once per epoch
    np.testing.assert_array_equal(np.sort(labels), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
  # Two "processes" holding rows [0, 1) and [1, 4) see exactly their rows of the same batches.
  lo = input_pipeline.local_batches(_ids(n), batch_size=batch, seed=3, start=0, stop=1)
  hi = input_pipeline.local_batches(_ids(n), batch_size=batch, seed=3, start=1, stop=4)
  for s in range(7):
    np.testing.assert_array_equal(np.concatenate([lo[s]["label"], hi[s]["label"]]),
                                  whole[s]["label"])
  # Another seed, another order.
  other = input_pipeline.local_batches(_ids(n), batch_size=batch, seed=4, start=0, stop=batch)
  assert not np.array_equal(other[0]["label"], whole[0]["label"])


def test_grain_source_state_restores_to_the_same_next_batches():
  mesh = run.make_mesh()
  source = input_pipeline.GrainSource(_ids(40), batch_size=16, seed=0, mesh=mesh)
  for step in range(3):
    source.batch(step)
  state = source.checkpoint_item.get_state()
  want = [np.asarray(source.batch(s)["label"]) for s in (3, 4)]
  fresh = input_pipeline.GrainSource(_ids(40), batch_size=16, seed=0, mesh=mesh)
  fresh.checkpoint_item.set_state(state)
  fresh.resume(3)
  for s, w in zip((3, 4), want):
    np.testing.assert_array_equal(fresh.batch(s)["label"], w)
  with pytest.raises(RuntimeError, match="in order: asked for step 9"):
    fresh.batch(9)


OVERRIDES = ["--config.data.source=array", "--config.data.num_examples=40",
             "--config.training.num_steps=8"]

# Runs experiments.main, but SIGKILLs itself when asked for the batch of step 5: after checkpoint
# 4 has been committed (40 examples, batches of 64 rows: step 4 ends inside the seventh epoch).
KILLED_AT_STEP_5 = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    from absl import app
    from experiments import input_pipeline, main

    workdir = pathlib.Path(sys.argv[2].split("=", 1)[1])
    batch = input_pipeline.GrainSource.batch

    def batch_or_die(self, step):
      if step == 5:
        for _ in range(600):  # the save is asynchronous: wait until 4 is committed
          if (workdir / "checkpoints" / "4").is_dir():
            break
          time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)
      return batch(self, step)

    input_pipeline.GrainSource.batch = batch_or_die
    app.run(main.main, argv=["main", *sys.argv[1:]])
""")


def _records(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(ln).items() if k != "steps_per_sec"} for ln in lines]


def test_sigkilled_grain_run_restarts_to_the_same_result(tmp_path):
  config = toy2d_tiny.get_config()
  config.data.source, config.data.num_examples, config.training.num_steps = "array", 40, 8
  config.training.batch_size = 64
  flags = ["--config=experiments/configs/toy2d_tiny.py", f"--workdir={tmp_path / 'killed'}",
           *OVERRIDES, "--config.training.batch_size=64"]
  killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP_5, *flags], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL
  steps = sorted(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps[-1] == 4, steps
  restarted = subprocess.run([sys.executable, "-m", "experiments.main", *flags], cwd=REPO,
                             env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert restarted.returncode == 0, restarted.stderr[-3000:]

  reference = run.train(config, tmp_path / "uninterrupted")
  _, _, final = run.restore_model(config, tmp_path / "killed")
  assert int(final.step) == 8
  assert_trees_equal(final, jax.device_get(reference))  # bitwise, optimiser state included
  # The same metrics at every logged step (the records the killed run wrote past its checkpoint
  # were dropped on restart), so the resumed run saw exactly the batches it would have seen.
  assert _records(tmp_path / "killed") == _records(tmp_path / "uninterrupted")


def test_tfds_source_through_grain_without_network():
  """A TFDS data source (mocked: tests never reach the network) served by the grain source:
  uint8 pixels mapped onto [-1, 1], labels int32, one epoch holds every record once."""
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    records = input_pipeline.tfds_source("mnist", split="train")
    raw = tfds.data_source("mnist", split="train")
    pixels = np.stack([np.asarray(raw[i]["image"]) for i in range(16)])
    source = input_pipeline.GrainSource(records, batch_size=8, seed=0, mesh=run.make_mesh())
    batches = [source.batch(s) for s in range(2)]
  x0 = np.concatenate([np.asarray(b["x0"]) for b in batches])
  assert x0.shape == (16, 28, 28, 1) and x0.dtype == np.float32
  # The epoch is a permutation of the records: compare the sorted pixel sums, mapped by hand.
  np.testing.assert_allclose(np.sort(x0.reshape(16, -1).sum(1)),
                             np.sort((pixels.astype(np.float32) / 127.5 - 1).reshape(16, -1).sum(1)),
                             rtol=1e-5)  # float32 sums of 784 values
  assert batches[0]["label"].dtype == np.int32
