"""Shared by the experiment tests: how to start child Pythons and compare trees."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def subprocess_env(**extra) -> dict:
  """The test environment for child Pythons: repo importable, shared compilation cache."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(jax.config.jax_compilation_cache_dir))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  env.update(extra)
  return env


def run_figure(name: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
  """``python experiments/figures/<name>.py *args`` in a child Python, output captured."""
  return subprocess.run([sys.executable, str(REPO / "experiments" / "figures" / f"{name}.py"),
                         *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                        timeout=timeout)


def assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def tiny_config(**training):
  """experiments/configs/toy2d_tiny.py keeping 3 checkpoints, with training fields overridden."""
  from experiments.configs import toy2d_tiny

  config = toy2d_tiny.get_config()
  config.training.keep_checkpoints = 3
  for k, v in training.items():
    config.training[k] = v
  return config
