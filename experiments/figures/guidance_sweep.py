"""The Ho & Salimans sweep on a class-conditional image model: sample quality and class accuracy
against the guidance weight w, for plain classifier-free guidance, CFG with a noise-level
interval (Kynkaanniemi et al. 2024) and autoguidance (Karras et al. 2024).

  python experiments/figures/guidance_sweep.py --workdir=workdirs/digits_cond \
      [--weights=0,0.1,0.3,0.5,1,2,4] [--interval=0.3,5] [--guide_step=400] [--num=1000]

w is Ho & Salimans' weight: guided = (1 + w) s(x | y) - w s(x | null), gamma = 1 + w (diffusers'
guidance_scale); w = 0 is the unguided conditional model. Autoguidance at weight w uses the same
gamma = 1 + w with the EMA model of checkpoint --guide_step of the same run as its guide. Left:
the classifier-feature Frechet distance over its floor (the grey band is the floor's spread);
middle: the share of samples the evaluation classifier reads as the label they were drawn for;
right: the class entropy of the classifier's readings (the data's is about log2(10) = 3.32 bits).
Each point is ``--mode=sample`` (experiments/sampling.py), kept in ``<workdir>/samples/`` and read
back when present, so the figure can be redrawn for free. The sampler is the run's own.
"""

import json
import pathlib

import _common
import _image_sweep
import numpy as np
from absl import app, flags

flags.DEFINE_string("workdir", None, "A trained class-conditional image run (label dropout > 0).")
flags.DEFINE_integer("checkpoint_step", None, "The checkpoint to sample (default: the latest).")
flags.DEFINE_string("weights", "0,0.1,0.3,0.5,1,2,4", "Comma-separated guidance weights w >= 0.")
flags.DEFINE_string("interval", "0.3,5", "sigma_lo,sigma_hi of the interval variant (EDM noise "
                    "levels sigma/alpha); empty: no interval variant.")
flags.DEFINE_integer("guide_step", None, "Autoguidance: the earlier checkpoint whose EMA model "
                     "guides (default: the oldest kept); 0: no autoguidance variant.")
flags.DEFINE_integer("num", 1000, "Samples per point (the floors are taken at this n).",
                     lower_bound=10)
flags.mark_flag_as_required("workdir")
_image_sweep.define_config_flag()
flags.adopt_module_key_flags(_common)
FLAGS = flags.FLAGS
KEYS = ("fd_features", "fd_features_floor", "fd_features_floor_std", "fd_pixels", "fd_pixels_floor",
        "label_accuracy", "confident_fraction", "class_entropy_bits", "nfe_mean")


def _floats(text: str, name: str, count: int | None = None) -> list[float]:
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    values = None
  if not values or min(values) < 0 or (count is not None and len(values) != count):
    what = f"{count} numbers" if count else "numbers"
    raise app.UsageError(f"--{name} must be comma-separated {what} >= 0, got {text!r}.")
  return values


def _point(config, workdir, step, num, **guidance):
  from experiments import sampling

  config = config.copy_and_resolve_references()
  config.sampling.num_samples = num
  config.sampling.batch_size = min(config.sampling.batch_size, num)
  config.sampling.guidance.update(guidance)
  stem = sampling.output_stem(config, step)
  path = pathlib.Path(workdir) / "samples" / f"{stem}.json"
  if path.exists():
    print(f"read {path}", flush=True)
    return json.loads(path.read_text())
  return sampling.run(config, workdir, step=step)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from experiments import checkpoints as checkpoints_lib

  weights = _floats(FLAGS.weights, "weights")
  interval = _floats(FLAGS.interval, "interval", 2) if FLAGS.interval.strip() else None
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
      s = (_point(config, FLAGS.workdir, step, FLAGS.num, kind="none") if w == 0 else
           _point(config, FLAGS.workdir, step, FLAGS.num, gamma=1.0 + w, **fields))
      rows.append({"w": w, **{k: s.get(k) for k in KEYS}})
    results[name] = rows
    print(name, [(r["w"], round(r["fd_features"] / r["fd_features_floor"], 3),
                  round(r["label_accuracy"], 3)) for r in rows], flush=True)

  plt = _common.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
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
                 "results": results})


if __name__ == "__main__":
  _common.run(main)
