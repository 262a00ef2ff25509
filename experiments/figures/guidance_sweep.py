"""The Ho & Salimans sweep on a class-conditional image model: sample quality and class accuracy
against the guidance weight w, for plain classifier-free guidance, CFG with a noise-level
interval (Kynkaanniemi et al. 2024) and autoguidance (Karras et al. 2024); and CFG++ (Chung et
al. 2024) against its lambda.

  python experiments/figures/guidance_sweep.py --workdir=workdirs/digits_cond \
      [--weights=0,0.1,0.3,0.5,1,2,4] [--interval=0.3,5] [--guide_step=400] [--num=1000] \
      [--cfgpp_lambdas=0,0.05,0.1,0.2,0.4] [--cfgpp_sampler=ddim]

w is Ho & Salimans' weight: guided = (1 + w) s(x | y) - w s(x | null), gamma = 1 + w (diffusers'
guidance_scale); w = 0 is the unguided conditional model. Autoguidance at weight w uses the same
gamma = 1 + w with the EMA model of checkpoint --guide_step of the same run as its guide. Left:
the classifier-feature Frechet distance over its floor (the grey band is the floor's spread);
middle: the share of samples the evaluation classifier reads as the label they were drawn for;
right: the class entropy of the classifier's readings (the data's is about log2(10) = 3.32 bits).
The second row is CFG++ with --cfgpp_sampler on the run's grid and step count (CFG++ is defined
for DDIM-type steps; lambda = 0 is the unconditional model), next to the unguided conditional model
drawn by the same sampler and by the run's own.
Each point is ``--mode=sample`` (experiments/sampling.py), kept in ``<workdir>/samples/`` and read
back when present, so the figure can be redrawn for free. The sampler is the run's own.
"""

import functools

import _common
import _image_sweep
import numpy as np
from absl import app, flags

_image_sweep.define_workdir_flags("A trained class-conditional image run (label dropout > 0).")
flags.DEFINE_string("weights", "0,0.1,0.3,0.5,1,2,4", "Comma-separated guidance weights w >= 0.")
flags.DEFINE_string("interval", "0.3,5", "sigma_lo,sigma_hi of the interval variant (EDM noise "
                    "levels sigma/alpha); empty: no interval variant.")
flags.DEFINE_integer("guide_step", None, "Autoguidance: the earlier checkpoint whose EMA model "
                     "guides (default: the oldest kept); 0: no autoguidance variant.")
flags.DEFINE_string("cfgpp_lambdas", "0,0.05,0.1,0.2,0.4", "CFG++ strengths lambda; empty: no "
                    "CFG++ row.")
flags.DEFINE_enum("cfgpp_sampler", "ddim", ["ddim", "dpm_solver_2m", "dpm_solver_3m"],
                  "The sampler CFG++ wraps.")
flags.DEFINE_integer("num", 1000, "Samples per point (the floors are taken at this n).",
                     lower_bound=10)
flags.adopt_module_key_flags(_common)
flags.adopt_module_key_flags(_image_sweep)  # --workdir, --checkpoint_step, --config
FLAGS = flags.FLAGS
KEYS = _image_sweep.GUIDED_KEYS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from experiments import checkpoints as checkpoints_lib

  weights = _common.float_list(FLAGS.weights, "weights")
  lambdas = (_common.float_list(FLAGS.cfgpp_lambdas, "cfgpp_lambdas")
             if FLAGS.cfgpp_lambdas.strip() else [])
  interval = _common.float_list(FLAGS.interval, "interval", 2) if FLAGS.interval.strip() else None
  if interval and not interval[0] < interval[1]:
    raise app.UsageError(f"--interval needs sigma_lo < sigma_hi, got {FLAGS.interval!r}.")
  config, step = _image_sweep.load(FLAGS["config"], FLAGS.workdir, FLAGS.checkpoint_step)
  if not (config.model.num_classes and config.model.label_dropout > 0):
    raise app.UsageError(f"--workdir {FLAGS.workdir} is not a class-conditional run trained with "
                         "label dropout (config.model.num_classes > 0, label_dropout > 0).")
  with checkpoints_lib.Checkpoints(FLAGS.workdir, read_only=True) as checkpoints:
    kept = checkpoints.steps()
  step = kept[-1] if step is None else step
  guide_step = FLAGS.guide_step
  if guide_step is None:
    guide_step = kept[0] if kept[0] < step else 0
  if guide_step and (guide_step not in kept or guide_step >= step):
    raise app.UsageError(f"--guide_step={guide_step} must be a kept checkpoint before step {step}; "
                         f"kept: {kept}.")

  point = functools.partial(_image_sweep.guided_point, config, FLAGS.workdir, step, FLAGS.num)
  variants = {"CFG": {"kind": "cfg"}}
  if interval:
    variants[f"CFG, sigma in ({interval[0]:g}, {interval[1]:g}]"] = {
        "kind": "cfg", "sigma_lo": interval[0], "sigma_hi": interval[1]}
  if guide_step:
    variants[f"autoguidance (guide: step {guide_step})"] = {"kind": "autoguidance",
                                                           "guide_step": guide_step}
  results = {}
  for name, fields in variants.items():
    rows = []
    for w in weights:
      # w = 0 is the unguided model for every variant: sampled once, without guidance.
      s = point(kind="none") if w == 0 else point(gamma=1.0 + w, **fields)
      rows.append({"w": w, **{k: s.get(k) for k in KEYS}})
    results[name] = rows
    print(name, [(r["w"], round(r["fd_features"] / r["fd_features_floor"], 3),
                  round(r["label_accuracy"], 3)) for r in rows], flush=True)

  cfgpp = {}
  if lambdas:
    sampler = FLAGS.cfgpp_sampler
    # The conditional model unguided, by CFG++'s sampler: the reference of the CFG++ row.
    s = point(sampler=sampler, kind="none")
    cfgpp["unguided"] = {k: s.get(k) for k in KEYS}
    s = point(kind="none")  # the run's own sampler, unguided (w = 0 above: read back)
    cfgpp["unguided_run_sampler"] = {k: s.get(k) for k in KEYS}
    cfgpp["rows"] = []
    for lam in lambdas:
      s = point(sampler=sampler, kind="cfgpp", gamma=lam)
      cfgpp["rows"].append({"lambda": lam, **{k: s.get(k) for k in KEYS}})
    print(f"CFG++ ({sampler})", [(r["lambda"], round(r["fd_features"] / r["fd_features_floor"], 3),
                                  round(r["label_accuracy"], 3)) for r in cfgpp["rows"]],
          flush=True)

  plt = _common.pyplot()
  fig, axes = plt.subplots(2 if lambdas else 1, 3, figsize=(15, 8.6 if lambdas else 4.3),
                           squeeze=False)
  if lambdas:
    _plot_cfgpp(axes[1], cfgpp, lambdas, config)
  axes = axes[0]
  first = next(iter(results.values()))[0]
  floor, spread = first["fd_features_floor"], first["fd_features_floor_std"]
  axes[0].axhspan(1 - spread / floor, 1 + spread / floor, color="grey", alpha=0.25,
                  label="floor +- 1 std")
  x = np.arange(len(weights))
  for name, rows in results.items():
    axes[0].plot(x, [r["fd_features"] / r["fd_features_floor"] for r in rows], "o-", label=name)
    axes[1].plot(x, [100 * r["label_accuracy"] for r in rows], "o-", label=name)
    axes[2].plot(x, [r["class_entropy_bits"] for r in rows], "o-", label=name)
  axes[2].axhline(np.log2(config.model.num_classes), color="k", ls=":", label="uniform classes")
  for ax, label in zip(axes, ("feature FD / its floor", "samples read as their label (%)",
                              "class entropy of the readings (bits)")):
    ax.set_xticks(x)
    ax.set_xticklabels([f"{w:g}" for w in weights])
    ax.set_xlabel("guidance weight w (gamma = 1 + w)")
    ax.set_ylabel(label)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{config.data.name}: guidance sweep, n = {FLAGS.num}, checkpoint {step}, "
               f"{config.sampling.sampler} ({first['nfe_mean']:.0f} NFE unguided; guided: twice "
               "the network batch)")
  fig.tight_layout()
  _common.write(FLAGS.out, "guidance_sweep", fig,
                {"workdir": str(FLAGS.workdir), "checkpoint_step": step, "num": FLAGS.num,
                 "weights": weights, "interval": interval, "guide_step": guide_step,
                 "results": results, "cfgpp_sampler": FLAGS.cfgpp_sampler if lambdas else None,
                 "cfgpp": cfgpp})


def _plot_cfgpp(axes, cfgpp, lambdas, config):
  """The CFG++ row: its three scores against lambda, the unguided conditional model as lines."""
  rows = cfgpp["rows"]
  scores = (lambda r: r["fd_features"] / r["fd_features_floor"],
            lambda r: 100 * r["label_accuracy"], lambda r: r["class_entropy_bits"])
  labels = ("feature FD / its floor", "samples read as their label (%)",
            "class entropy of the readings (bits)")
  for ax, score, label in zip(axes, scores, labels):
    ax.plot(lambdas, [score(r) for r in rows], "o-", color="C4",
            label=f"CFG++ ({FLAGS.cfgpp_sampler})")
    ax.axhline(score(cfgpp["unguided"]), color="C4", ls="--",
               label=f"conditional, unguided ({FLAGS.cfgpp_sampler})")
    ax.axhline(score(cfgpp["unguided_run_sampler"]), color="C0", ls=":",
               label=f"conditional, unguided ({config.sampling.sampler})")
    ax.set_xlabel("CFG++ lambda (0: the unconditional model)")
    ax.set_ylabel(label)
  axes[0].legend(fontsize=8)


if __name__ == "__main__":
  _common.run(main)
