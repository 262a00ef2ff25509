"""The runner's public face: train, evaluate, restore a trained model, draw sharded samples.

The pieces live in their own modules: experiments/train.py (the loop and the end-of-training
evaluation), experiments/checkpoints.py (orbax), experiments/sharding.py (mesh and sharded
programs), experiments/input_pipeline.py (batch sources), experiments/evaluate/ (one evaluation
per kind of data), experiments/build.py (config -> objects, the ``Method`` record),
experiments/keys.py (the key streams). The names below are kept for main.py, sampling.py,
likelihood_eval.py and the figure scripts.
"""

from __future__ import annotations

import pathlib

import jax

from diffusion_jax import sampling as sample_lib
from experiments import build, progress
from experiments import sharding as sharding_lib
from experiments.checkpoints import Checkpoints
from experiments.keys import likelihood_key, sampling_key  # noqa: F401  (re-exported)
from experiments.sharding import make_mesh, replicated  # noqa: F401  (re-exported)
from experiments.train import evaluate, train, train_and_evaluate  # noqa: F401  (re-exported)
from experiments.train import abstract_state, model_params, with_frozen

__all__ = ["draw_samples", "evaluate", "likelihood_key", "make_mesh", "replicated",
           "restore_model", "sampling_key", "train", "train_and_evaluate"]


def restore_model(config, workdir, *, step: int | None = None, sharding=None, method=None):
  """The EMA model of the newest intact (or the given) checkpoint in ``workdir``.

  Returns (score_fn, sde, state): ``score_fn`` is a per-example score function over the EMA
  parameters (unconditional; bind a condition with ``score_fn.replace(cond=c)``); ``state`` is the
  full ``TrainState``. Arrays are placed with ``sharding`` (default: the first local device; pass
  a replicated ``NamedSharding`` for multi-process use). Never writes to the workdir.
  """
  placement = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  method = build.build_method(config) if method is None else method
  with Checkpoints(workdir, read_only=True) as checkpoints:
    state, _ = checkpoints.restore(abstract_state(method, config, placement), step=step)
  if state is None:
    raise FileNotFoundError(f"No checkpoint in {pathlib.Path(workdir) / 'checkpoints'}.")
  state = with_frozen(method, state, placement)
  return method.score_fn(model_params(method, state)), build.build_sde(config), state


def draw_samples(score_fn, sde, sampler, ts, key: jax.Array, *, num: int, shape: tuple[int, ...],
                 mesh, cond=None, batch_size: int | None = None,
                 denoise_final: bool | None = None) -> dict:
  """``num`` examples of ``sampling.sample_examples`` for any score function, sharded over the mesh.

  Example n uses fold_in(key, n) (and row n of ``cond``) exactly as ``sample_batch`` does, so the
  samples depend neither on the number of devices or processes nor on ``batch_size`` (the chunk).
  Returns host arrays x, denoised and nfe, gathered on every process.
  """
  shape = tuple(shape)

  def sample(fn, keys, rows):
    out = sample_lib.sample_examples(sde, fn, sampler, ts, keys, shape=shape, cond=rows,
                                     denoise_final=denoise_final,
                                     progress_fn=progress.report_step)
    return {"x": out.x, "denoised": out.denoised, "nfe": out.nfe}

  program = sharding_lib.make_sharded_sampler(sample, mesh)
  return sharding_lib.draw(program, score_fn, key, num=num, mesh=mesh, cond=cond,
                       batch_size=batch_size)
