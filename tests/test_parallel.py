"""Data parallelism: a training step on 8 devices, and on 2 processes joined with jax.distributed,
equals the step on one device for the same global batch."""

import functools
import socket
import subprocess
import sys

import jax
import numpy as np

from experiments import build, input_pipeline, keys, run, sharding
from experiments import train as train_loop
from experiments.configs import toy2d_tiny
from experiment_helpers import REPO, subprocess_env

# The gradient is a mean over the global batch; with the batch split over devices (or processes)
# the partial sums are added in another order, so float32 gradients differ in the last bits
# (relative ~1e-6). Adam moves each weight by lr * m_hat / (sqrt(v_hat) + eps) with
# |.| <= lr = 1e-3 here, so a 1e-6 relative change of g moves a weight by ~1e-9 (plus one float32
# rounding of p + update, ~1e-7 relative). The exception is a weight whose gradient is ~0
# (g/|g| is then sensitive to rounding): with two steps such a weight moves by at most 2 lr, so
# we also require that no weight differs by more than 1e-5 and that the median agrees to 1e-8.
close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-6)


def _assert_same_training(a, b):
  jax.tree.map(close, a, b)
  diffs = np.concatenate([np.abs(np.asarray(x) - np.asarray(y)).ravel()
                          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))])
  assert np.median(diffs) < 1e-8


def _one_step(config, mesh, step=0):
  method = build.build_method(config)
  state = train_loop.create_state(method, config, mesh)
  batch = build.build_batch_source(config, mesh, keys.key(config, keys.DATA)).batch(step)
  step_fn = sharding.make_sharded_train_step(method.train_step, mesh)
  new_state, metrics, finite = step_fn(state, batch,
                                       sharding.key_data(keys.key(config, keys.TRAIN)))
  assert bool(finite)
  return sharding.to_host(new_state), sharding.to_host(metrics), batch


def test_eight_devices_take_the_same_step_as_one():
  assert jax.device_count() == 8  # set by conftest.py
  config = toy2d_tiny.get_config()
  one, m_one, batch_one = _one_step(config, run.make_mesh(jax.devices()[:1]))
  eight, m_eight, batch_eight = _one_step(config, run.make_mesh())
  assert len(batch_eight["x0"].sharding.device_set) == 8  # really sharded
  np.testing.assert_array_equal(batch_one["x0"], batch_eight["x0"])  # same global batch
  np.testing.assert_allclose(m_one["loss"], m_eight["loss"], rtol=1e-6)  # summation order
  assert int(one.step) == int(eight.step) == 1
  _assert_same_training(one.params, eight.params)
  _assert_same_training(one.ema_params, eight.ema_params)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
  """Two local processes (2 CPU devices each) run the CLI as one job and train like one process."""
  overrides = ["--config.training.num_steps=2", "--config.training.warmup_steps=1"]
  port = _free_port()
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.main", "--config=experiments/configs/toy2d_tiny.py",
       f"--workdir={tmp_path / 'job'}", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}", *overrides],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    outputs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:  # never leave a half of the job waiting for its peer
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]

  config = toy2d_tiny.get_config()
  config.training.num_steps, config.training.warmup_steps = 2, 1
  reference = run.train(config, tmp_path / "single", mesh=run.make_mesh(jax.devices()[:1]))
  _, _, job = run.restore_model(config, tmp_path / "job")
  assert int(job.step) == 2
  _assert_same_training(sharding.to_host(reference.params), job.params)
  _assert_same_training(sharding.to_host(reference.ema_params), job.ema_params)
  # Only process 0 wrote the logs and the evaluation.
  assert (tmp_path / "job" / "eval" / "summary.json").exists()
  assert len((tmp_path / "job" / "metrics.jsonl").read_text().splitlines()) == 1
