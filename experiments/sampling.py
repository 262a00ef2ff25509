"""--mode=sample: draw config.sampling.num_samples from the latest checkpoint with the configured sampler.

  python -m experiments.main --config=experiments/configs/toy2d.py --workdir=DIR --mode=sample \
      --config.sampling.sampler=dpm_solver_2m --config.sampling.grid=log_snr \
      --config.sampling.num_steps=10

Writes DIR/samples/<sampler>_<steps>steps_step<ckpt>.npz (x, denoised, nfe, ts) and a .png scatter
of the first two coordinates over fresh data, plus a .json with the two-sample distances to data.
Examples are drawn in compiled chunks of config.sampling.batch_size (a progress bar counts them);
example n always uses fold_in(key, n), so the samples do not depend on the chunk size.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.random as jr
import ml_collections
import numpy as np

from experiments import build
from experiments import run as run_lib


def draw(score_fn, sde, sampler, ts, key, *, num: int, shape: tuple[int, ...], batch_size: int,
         mesh, denoise_final=None, progress: bool = True) -> dict:
  """num examples in chunks of batch_size (one compiled program; the last chunk is padded)."""
  from tqdm import tqdm

  chunks = []
  with tqdm(total=num, desc=f"sample ({type(sampler).__name__})", disable=not progress,
            dynamic_ncols=True) as bar:
    for offset in range(0, num, batch_size):
      chunks.append(run_lib.draw_samples(score_fn, sde, sampler, ts, key, num=batch_size,
                                         shape=shape, mesh=mesh, offset=offset,
                                         denoise_final=denoise_final))
      bar.update(min(batch_size, num - offset))
  return {k: np.concatenate([c[k] for c in chunks])[:num] for k in chunks[0]}


def run(config: ml_collections.ConfigDict, workdir) -> dict:
  """Restore the EMA model of the latest checkpoint, sample, and write .npz, .png and .json."""
  workdir = pathlib.Path(workdir)
  mesh = run_lib.make_mesh()
  score_fn, sde, state = run_lib.restore_model(config, workdir,
                                               sharding=run_lib.replicated(mesh))
  sc = config.sampling
  sampler = build.build_sampler(config)
  ts = np.asarray(build.build_time_grid(config, sde))
  dataset = build.build_dataset(config)
  key = run_lib.sampling_key(config)
  tic = time.perf_counter()
  drawn = draw(score_fn, sde, sampler, ts, key, num=sc.num_samples, shape=(dataset.dim,),
               batch_size=min(sc.batch_size, sc.num_samples), mesh=mesh,
               denoise_final=build.build_denoise_final(config),
               progress=jax.process_index() == 0)
  seconds = time.perf_counter() - tic
  if jax.process_index() != 0:
    return {}

  step = int(np.asarray(jax.device_get(state.step)))
  start = f"ancestral{sc.ancestral_start_steps}_" if sc.get("ancestral_start_steps", 0) else ""
  stem = f"{start}{sc.sampler}{'_pc' if sc.corrector != 'none' else ''}_{len(ts) - 1}steps_step{step}"
  out_dir = workdir / "samples"
  out_dir.mkdir(parents=True, exist_ok=True)
  np.savez(out_dir / f"{stem}.npz", ts=ts, **drawn)

  eval_key, proj_key = jr.split(jr.fold_in(key, 1))
  reference = np.asarray(dataset.sample(eval_key, sc.num_samples))
  finite = np.isfinite(drawn["x"]).all(axis=1)
  summary = {
      "checkpoint_step": step, "sampler": repr(sampler), "grid": sc.grid, "num_steps": len(ts) - 1,
      "t_min": float(ts[-1]), "num_samples": sc.num_samples, "seconds": seconds,
      "nfe_mean": float(drawn["nfe"].mean()), "num_nonfinite_samples": int((~finite).sum()),
  }
  if finite.sum() >= 2:
    summary["model_vs_data"] = run_lib.two_sample_distances(drawn["x"][finite], reference,
                                                            proj_key, config)
  (out_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2))
  if dataset.dim >= 2:
    run_lib.plot_samples(out_dir / f"{stem}.png", drawn["x"][finite][:, :2], reference[:, :2],
                         f"{sc.sampler}, {len(ts) - 1} steps, NFE {summary['nfe_mean']:.0f}")
  return summary
