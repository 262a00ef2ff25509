"""Sample grids of trained image models: one row per run (its SDE and network), one column per
sampler, all at the same budget.

  python experiments/figures/image_sample_grids.py \
      --workdirs=workdirs/digits,workdirs/digits_ncsn [--samplers=dpm_solver_2m,heun,...] \
      [--nfe=40] [--num=1000] [--shown=64] [--out=DIR]

Each panel shows the first ``--shown`` of ``--num`` samples (in the data's levels, as the
evaluation scores them) and its title the pixel and feature Frechet distances over their floors.
Points are ``--mode=sample`` runs kept in each workdir's ``samples/`` (image_quality_vs_nfe.py's
points at the same NFE and n are reused, and vice versa).
"""

import _common
import _image_sweep
import numpy as np
from absl import app, flags

from diffusion_jax.data import to_grid

flags.DEFINE_list("workdirs", None, "Trained image runs, one row each (their configs are read from "
                  "them).")
flags.DEFINE_list("samplers", ["dpm_solver_2m", "heun", "edm_stochastic", "ancestral"],
                  f"Samplers, one column each, any of: {', '.join(_image_sweep.SAMPLERS)}.")
flags.DEFINE_integer("nfe", 40, "Network evaluations per sample for every panel.", lower_bound=1)
flags.DEFINE_integer("num", 1000, "Samples drawn and scored per panel.", lower_bound=2)
flags.DEFINE_integer("shown", 64, "Samples shown per panel (a square number fills the grid).",
                     lower_bound=1)
flags.mark_flag_as_required("workdirs")
flags.adopt_module_key_flags(_common)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = FLAGS
  names = _image_sweep.check_samplers(args.samplers)
  if args.shown > args.num:
    raise app.UsageError(f"--shown ({args.shown}) must be at most --num ({args.num}).")
  runs = [(w, *_image_sweep.load(None, w)) for w in args.workdirs]
  nrow = int(np.ceil(np.sqrt(args.shown)))
  plt = _common.pyplot()
  fig, axes = plt.subplots(len(runs), len(names), squeeze=False,
                           figsize=(2.6 * len(names), 3.3 * len(runs)))
  payload = {"nfe": args.nfe, "num": args.num, "runs": []}
  for row, (workdir, config, step) in enumerate(runs):
    sde = _image_sweep.SDE_NAMES.get(config.sde.name, config.sde.name)
    entry = {"workdir": str(workdir), "sde": config.sde.name, "model": config.model.name,
             "checkpoint_step": step, "samplers": {}}
    for col, name in enumerate(names):
      s = _image_sweep.point(config, workdir, step, name, args.nfe, args.num)
      images = _image_sweep.images_in_unit_range(config, s["npz"])[:args.shown]
      grid = to_grid(images, nrow, pad_value=0.0 if images.shape[-1] == 1 else 1.0)
      ax = axes[row, col]
      ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray_r" if
                grid.shape[-1] == 1 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
      px = s["fd_pixels"] / s["fd_pixels_floor"]
      ft = s["fd_features"] / s["fd_features_floor"]
      ax.set_title(f"{_image_sweep.DISPLAY[name]}, NFE {s['nfe_mean']:.0f}\n"
                   f"FD/floor: pixels {px:.2f}, features {ft:.2f}", fontsize=8)
      ax.set_xticks([]), ax.set_yticks([])
      if col == 0:
        ax.set_ylabel(f"{sde} SDE, {config.model.name}\n(step {step})", fontsize=9)
      entry["samplers"][name] = {"nfe": s["nfe_mean"], "fd_pixels_ratio": px,
                                 "fd_features_ratio": ft,
                                 "confident_fraction": s["confident_fraction"], "npz": s["npz"]}
    payload["runs"].append(entry)
  data = {c.data.name for _, c, _ in runs}
  fig.suptitle(f"{', '.join(sorted(data))}: {args.shown} of {args.num} samples per panel")
  fig.tight_layout(h_pad=1.2)  # room for the two-line titles of the row below
  _common.write(args.out, f"image_sample_grids_{'_'.join(sorted(data))}", fig, payload)


if __name__ == "__main__":
  _common.run(main)
