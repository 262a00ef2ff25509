"""Shared by the image figure scripts: sample a trained image workdir with one sampler at one budget.

Each point is ``--mode=sample`` run in-process (experiments/sampling.py): it writes
``<workdir>/samples/<stem>.npz/.json/.png`` with the same evaluation as the end of training, so a
point that was sampled before (same stem: sampler, grid, steps, t_min, n, checkpoint) is read back
instead of drawn again, and the figures can be redrawn for free.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags

from experiments import cpu_flags

cpu_flags.use_xla_convolutions()  # as the runner samples on CPU (before JAX starts its backends)

# sampler -> (grid, network evaluations per step): each sampler on the grid it is usually run on
# (benchmarks/samplers.py: the same choices on the exact 2-D problems).
SAMPLERS = {
    "dpm_solver_2m": ("log_snr", 1),
    "dpm_solver_3m": ("log_snr", 1),
    "unipc": ("log_snr", 1),
    "ipndm": ("log_snr", 1),
    "heun": ("edm", 2),
    "edm_stochastic": ("edm", 2),
    "ddim": ("time_quadratic", 1),
    "euler": ("time_uniform", 1),
    "ancestral": ("time_uniform", 1),
    "annealed_langevin": ("log_snr", None),  # config.sampling.langevin_steps per level
}
DISPLAY = {
    "dpm_solver_2m": "DPM-Solver++(2M)", "dpm_solver_3m": "DPM-Solver++(3M)", "unipc": "UniPC-2",
    "ipndm": "iPNDM", "heun": "Heun (EDM)", "edm_stochastic": "EDM stochastic", "ddim": "DDIM",
    "euler": "Euler (PF-ODE)", "ancestral": "ancestral (DDPM)",
    "annealed_langevin": "annealed Langevin",
}
SDE_NAMES = {"vp": "VP", "subvp": "sub-VP", "ve": "VE"}
# The summary fields the guidance figures keep per point.
GUIDED_KEYS = ("fd_features", "fd_features_floor", "fd_features_floor_std", "fd_pixels",
               "fd_pixels_floor", "fd_pixels_floor_std", "label_accuracy", "confident_fraction",
               "class_entropy_bits", "nfe_mean")


def check_samplers(names) -> list[str]:
  unknown = [n for n in names if n not in SAMPLERS]
  if unknown or not names:
    raise app.UsageError(f"--samplers must list some of {', '.join(SAMPLERS)}; unknown: {unknown}.")
  return list(names)


def define_workdir_flags(workdir_help: str) -> None:
  """--workdir (required), --checkpoint_step and --config: the flags of a script that reads one
  trained image run."""
  flags.DEFINE_string("workdir", None, workdir_help)
  flags.DEFINE_integer("checkpoint_step", None, "The checkpoint to sample (default: the latest).")
  flags.mark_flag_as_required("workdir")
  define_config_flag()


def define_config_flag() -> None:
  """--config: the workdir's saved config by default (``_common.run`` injects it), with
  evaluation fields overridable (--config.sampling.t_min=...)."""
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
      "config", None, "Default: the config saved in --workdir. Sampling fields may be overridden "
      "(--config.sampling.t_min=1e-4); trained ones may not.")


def load(config_flag, workdir, checkpoint_step=None):
  """(config, step) of a trained image workdir (``config_flag`` None: its saved config); a usage
  error if it is not one."""
  from experiments import build, validate
  from experiments import workdir as workdir_lib

  try:
    config = (workdir_lib.get_config(workdir) if config_flag is None else
              workdir_lib.config_from_flags(config_flag, workdir))
    if not build.is_image_data(config):
      raise app.UsageError(f"--workdir {workdir} is not an image run (its data: "
                           f"{config.data.name}).")
    step = workdir_lib.check_checkpoint_step(workdir, checkpoint_step)
    validate.validate(config, "sample")
  except (validate.ConfigError, workdir_lib.WorkdirError) as e:
    raise app.UsageError(str(e)) from None
  return config, step


def steps_for(config, sampler: str, nfe: int) -> int:
  """Steps of ``sampler`` that spend about ``nfe`` network evaluations (the figures plot the
  measured NFE)."""
  per_step = SAMPLERS[sampler][1] or config.sampling.langevin_steps
  if per_step == 2:  # Heun-type: 2 per step, the last step Euler
    return max(1, (nfe + 1) // 2)
  return max(1, nfe // per_step)


def point(config, workdir, step: int, sampler: str, nfe: int, num: int) -> dict:
  """The summary of ``num`` samples of ``sampler`` at about ``nfe`` evaluations (cached on disk),
  plus ``npz``: the path of its samples."""
  config = config.copy_and_resolve_references()
  sc = config.sampling
  sc.sampler = sampler
  sc.grid = SAMPLERS[sampler][0]
  sc.num_steps = steps_for(config, sampler, nfe)
  sc.num_samples = num
  sc.batch_size = min(sc.batch_size, num)
  summary, stem = _sample_or_read(config, workdir, step, f"{sampler} at {nfe} NFE: ")
  return {**summary, "npz": str(stem.parent / f"{stem.name}.npz")}


def _sample_or_read(config, workdir, step: int, label: str = "") -> tuple[dict, pathlib.Path]:
  """``--mode=sample``'s summary for ``config`` at ``step``, read back from its JSON when it was
  sampled before; and the path stem of its files."""
  from experiments import sampling

  stem = pathlib.Path(workdir) / "samples" / sampling.output_stem(config, step)
  json_path = stem.parent / f"{stem.name}.json"  # not with_suffix: stems hold dots (tmin0.001)
  if json_path.exists():
    print(f"{label}read {json_path}", flush=True)
    return json.loads(json_path.read_text()), stem
  return sampling.run(config, workdir, step=step), stem


def guided_point(config, workdir, step: int, num: int, sampler: str | None = None,
                 **guidance) -> dict:
  """The summary of ``num`` samples of the run's sampler (or ``sampler``, same grid and steps) with
  the config.sampling.guidance fields ``guidance`` (cached on disk, like ``point``)."""
  config = config.copy_and_resolve_references()
  if sampler is not None:
    config.sampling.sampler = sampler
  config.sampling.num_samples = num
  config.sampling.batch_size = min(config.sampling.batch_size, num)
  config.sampling.guidance.update(guidance)
  return _sample_or_read(config, workdir, step)[0]


def images_in_unit_range(config, npz_path) -> np.ndarray:
  """The samples of a point as (N, H, W, C) floats in [0, 1] (their data levels / (L - 1))."""
  from experiments.build_images import num_levels

  with np.load(npz_path) as d:
    levels = d["data"]
  return levels.astype(np.float32) / (num_levels(config) - 1)
