"""Classifier guidance (Dhariwal & Nichol 2021) of an image model against its scale: the share of
samples read as the class they were drawn for, the Frechet distances over their floors and the
class entropy, with the run's noise-conditional classifier p(y | x_t, t).

  python -m experiments.main --workdir=workdirs/digits --mode=train_classifier   # once
  python experiments/figures/classifier_guidance_sweep.py --workdir=workdirs/digits \
      [--scales=0,1,2,4,8] [--num=1000]

The model is guided from its unconditional score (a conditional model: its null label), the
samples drawn for the ten classes in turn; scale 0 is the unguided unconditional model, whose
"label accuracy" is chance. Each point is ``--mode=sample`` with config.sampling.guidance.kind =
classifier (experiments/sampling.py), kept in ``<workdir>/samples/`` and read back when present.
The sampler is the run's own. Left: label accuracy and the confident share; middle: pixel and
classifier-feature FD over their floors; right: the class entropy of the readings.
"""

import functools
import json
import pathlib

import _common
import _image_sweep
import numpy as np
from absl import app, flags

_image_sweep.define_workdir_flags("A trained image run with a noisy classifier "
                                  "(--mode=train_classifier).")
flags.DEFINE_string("scales", "0,1,2,4,8", "Comma-separated classifier-guidance scales >= 0.")
flags.DEFINE_integer("num", 1000, "Samples per point (the floors are taken at this n).",
                     lower_bound=10)
flags.adopt_module_key_flags(_common)
flags.adopt_module_key_flags(_image_sweep)  # --workdir, --checkpoint_step, --config
FLAGS = flags.FLAGS
KEYS = _image_sweep.GUIDED_KEYS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from experiments import noisy_classifier

  scales = _common.float_list(FLAGS.scales, "scales")
  config, step = _image_sweep.load(FLAGS["config"], FLAGS.workdir, FLAGS.checkpoint_step)
  info_path = pathlib.Path(FLAGS.workdir) / noisy_classifier.DIRECTORY / "info.json"
  if not info_path.exists():
    raise app.UsageError(f"No noisy classifier in {info_path.parent}: train it first with "
                         f"python -m experiments.main --workdir={FLAGS.workdir} "
                         "--mode=train_classifier.")
  num_classes = json.loads(info_path.read_text())["num_classes"]
  point = functools.partial(_image_sweep.guided_point, config, FLAGS.workdir, step, FLAGS.num,
                            kind="classifier")
  rows = []
  for scale in scales:
    s = point(scale=scale)
    rows.append({"scale": scale, **{k: s.get(k) for k in KEYS}})
    print(f"scale {scale:g}: read as their label {100 * s['label_accuracy']:.1f}%, pixel FD "
          f"{s['fd_pixels'] / s['fd_pixels_floor']:.2f}x, feature FD "
          f"{s['fd_features'] / s['fd_features_floor']:.2f}x its floor", flush=True)

  plt = _common.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
  x = np.arange(len(scales))
  axes[0].plot(x, [100 * r["label_accuracy"] for r in rows], "o-", label="read as their label")
  axes[0].plot(x, [100 * r["confident_fraction"] for r in rows], "s--",
               label="classified with p > 0.9")
  axes[0].set_ylabel("share of samples (%)")
  for space, marker in (("pixels", "o-"), ("features", "s-")):
    axes[1].plot(x, [r[f"fd_{space}"] / r[f"fd_{space}_floor"] for r in rows], marker,
                 label=f"FD, {space}")
  axes[1].axhline(1.0, color="k", ls=":", label="floor (data vs data)")
  axes[1].set_ylabel("Frechet distance / its floor")
  axes[2].plot(x, [r["class_entropy_bits"] for r in rows], "o-")
  axes[2].axhline(np.log2(num_classes), color="k", ls=":",
                  label=f"uniform over {num_classes} classes")
  axes[2].set_ylabel("class entropy of the readings (bits)")
  for ax in axes:
    ax.set_xticks(x)
    ax.set_xticklabels([f"{s:g}" for s in scales])
    ax.set_xlabel("classifier-guidance scale")
    ax.legend(fontsize=8)
  fig.suptitle(f"{config.data.name}: classifier guidance, n = {FLAGS.num}, checkpoint {step}, "
               f"{config.sampling.sampler} ({rows[0]['nfe_mean']:.0f} NFE)")
  fig.tight_layout()
  _common.write(FLAGS.out, "classifier_guidance_sweep", fig,
                {"workdir": str(FLAGS.workdir), "checkpoint_step": step, "num": FLAGS.num,
                 "scales": scales, "noisy_classifier": str(info_path), "rows": rows})


if __name__ == "__main__":
  _common.run(main)
