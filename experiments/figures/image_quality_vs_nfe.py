"""Sample quality of a trained image model against the sampling budget, each sampler on its grid.

  python experiments/figures/image_quality_vs_nfe.py --workdir=workdirs/digits \
      [--samplers=dpm_solver_2m,heun,ddim,...] [--nfes=10,20,40] [--num=1000] [--out=DIR]

Left: the pixel-space Frechet distance over its floor (the same distance from training images to
the test set, at the same n); right: the same in the evaluation classifier's feature space. The
grey band is the floor's spread (+- one standard deviation over splits, as a ratio). Each point
is ``--mode=sample`` (experiments/sampling.py) and is kept in ``<workdir>/samples/``, so rerunning
with more samplers or budgets draws only the new points.
"""

import _common
import _image_sweep
from absl import app, flags

_image_sweep.define_workdir_flags("A trained image run's directory (its config is read from it).")
flags.DEFINE_list("samplers", ["dpm_solver_2m", "heun", "ddim", "euler", "edm_stochastic",
                               "ancestral"],
                  f"Samplers to draw, any of: {', '.join(_image_sweep.SAMPLERS)}.")
flags.DEFINE_string("nfes", "10,20,40", "Comma-separated budgets of network evaluations.")
flags.DEFINE_integer("num", 1000, "Samples per point (the floors are taken at this n).",
                     lower_bound=2)
flags.adopt_module_key_flags(_common)
flags.adopt_module_key_flags(_image_sweep)  # --workdir, --checkpoint_step, --config
FLAGS = flags.FLAGS
SPACES = (("pixels", "pixel space"), ("features", "classifier features"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = FLAGS
  nfes = _common.int_list(args.nfes, "nfes")
  names = _image_sweep.check_samplers(args.samplers)
  config, step = _image_sweep.load(FLAGS["config"], args.workdir, args.checkpoint_step)
  results = {}
  for name in names:
    rows = []
    for nfe in nfes:
      s = _image_sweep.point(config, args.workdir, step, name, nfe, args.num)
      rows.append({"nfe": s["nfe_mean"], "num_steps": s["sampler"]["num_steps"],
                   **{k: s[k] for k in ("fd_pixels", "fd_pixels_floor", "fd_pixels_floor_std",
                                        "fd_features", "fd_features_floor",
                                        "fd_features_floor_std", "confident_fraction",
                                        "class_entropy_bits", "num_nonfinite")}})
    results[name] = {"grid": _image_sweep.SAMPLERS[name][0], "rows": rows}
    print(name, [(round(r["nfe"]), round(r["fd_pixels"] / r["fd_pixels_floor"], 3))
                 for r in rows], flush=True)

  plt = _common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  first = next(iter(results.values()))["rows"][0]
  for ax, (space, label) in zip(axes, SPACES):
    spread = first[f"fd_{space}_floor_std"] / first[f"fd_{space}_floor"]
    ax.axhspan(1 - spread, 1 + spread, color="0.85", label="floor +- 1 std (train vs test)")
    ax.axhline(1.0, color="0.5", lw=0.6)
    for name, res in results.items():
      rows = res["rows"]
      ax.plot([r["nfe"] for r in rows], [r[f"fd_{space}"] / r[f"fd_{space}_floor"] for r in rows],
              "o-", ms=3, label=f"{_image_sweep.DISPLAY[name]} ({res['grid']} grid)")
    ax.set_xscale("log"), ax.set_yscale("log")
    # Ticks at the asked budgets (two-evaluation steps spend one more or one less); plain numbers
    # on both log axes, not 2 x 10^0.
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    plain = plt.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel(f"Frechet distance / its floor ({label})")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=7)
  sde = _image_sweep.SDE_NAMES.get(config.sde.name, config.sde.name)
  fig.suptitle(f"{config.data.name}: {config.model.name} model, {sde} SDE, checkpoint step {step}, "
               f"{args.num} samples per point")
  fig.tight_layout()
  _common.write(args.out, f"image_quality_vs_nfe_{config.data.name}", fig,
                {"workdir": str(args.workdir), "checkpoint_step": step, "num": args.num,
                 "samplers": results})


if __name__ == "__main__":
  _common.run(main)
