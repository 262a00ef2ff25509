"""Tuning a frozen model to a class it never saw, method by method (experiments/tune.py): samples
of the held-out 9 per method and K next to the real ones, and the table of what each learnt (the
confident share, the feature FD over its floor) and forgot (the change in accuracy and feature FD
on 0-8), with the trainable parameters and the tuning time; the ControlNet's controls and samples.

  python -m experiments.main --config=experiments/configs/digits_holdout.py \
      --workdir=workdirs/digits_holdout
  python experiments/figures/tuning_methods.py [--root=workdirs/tune] [--shots=5,10]

Each (method, K) is a tuning run in <root>/<method>_k<K> (the ControlNet's in <root>/controlnet),
tuned with experiments/configs/tune_digits.py when it has no eval/summary.json yet, read back
otherwise. "dreambooth_noprior" is DreamBooth without the prior preservation loss.
"""

import json
import pathlib

import _common
import numpy as np
from absl import app, flags

from experiments import cpu_flags

cpu_flags.use_xla_convolutions()  # as the runner trains and samples on CPU (before JAX starts)

flags.DEFINE_string("base_workdir", "workdirs/digits_holdout",
                    "The frozen model: a run of experiments/configs/digits_holdout.py.")
flags.DEFINE_string("root", "workdirs/tune", "Directory of the tuning runs (one per method and K).")
flags.DEFINE_string("methods", "prompt,dreambooth,dreambooth_noprior,lora,film,controlnet",
                    "Comma-separated methods (experiments/configs/tune_digits.py's, and "
                    "dreambooth_noprior).")
flags.DEFINE_string("shots", "5,10", "Comma-separated K: training images of the held-out class.")
flags.adopt_module_key_flags(_common)
FLAGS = flags.FLAGS

METHODS = ("prompt", "dreambooth", "dreambooth_noprior", "lora", "film", "controlnet")
_COLUMNS = (("heldout_confident_fraction", "confident 9s", "{:.1%}"),
            ("heldout_fd_ratio", "FD / floor (9s)", "{:.2f}"),
            ("forgetting_accuracy", "accuracy drop 0-8", "{:+.1%}"),
            ("forgetting_relative_fd", "FD change 0-8", "{:+.1%}"),
            ("other_bitwise_equal_fraction", "0-8 bitwise", "{:.0%}"),
            ("trainable_params", "trainable", "{:,}"),
            ("tune_seconds", "tuning (s)", "{:.0f}"))


def _config(method: str, k: int):
  from experiments.configs import tune_digits

  config = tune_digits.get_config("dreambooth" if method == "dreambooth_noprior" else method)
  config.tune.base_workdir = FLAGS.base_workdir
  config.tune.num_shots = k
  if method == "dreambooth_noprior":
    config.tune.prior_preservation = False
  return config


def _run(method: str, k: int) -> tuple[dict, pathlib.Path]:
  from experiments import tune, validate

  name = "controlnet" if method == "controlnet" else f"{method}_k{k}"
  workdir = pathlib.Path(FLAGS.root) / name
  path = workdir / "eval" / "summary.json"
  if not path.exists():
    config = _config(method, k)
    try:
      validate.validate(config, "tune")
    except validate.ConfigError as e:
      raise app.UsageError(str(e)) from None
    print(f"Tuning {name} in {workdir} ...", flush=True)
    tune.run(config, workdir)
  return json.loads(path.read_text()), workdir


def _samples(workdir: pathlib.Path, num: int) -> np.ndarray:
  """The first ``num`` held-out draws of a run (model range), from its evaluation's samples file."""
  with np.load(next((workdir / "samples").glob("*.npz"))) as f:
    x = f["x"]
  return x[:num]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  methods = [m.strip() for m in FLAGS.methods.split(",") if m.strip()]
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise app.UsageError(f"--methods must be among {', '.join(METHODS)}, got {unknown}.")
  shots = _common.int_list(FLAGS.shots, "shots")
  if not (pathlib.Path(FLAGS.base_workdir) / "config.json").exists():
    raise app.UsageError(f"--base_workdir={FLAGS.base_workdir} holds no trained run: train it with "
                         "python -m experiments.main --config=experiments/configs/"
                         f"digits_holdout.py --workdir={FLAGS.base_workdir}.")
  from experiments import build_images, tune

  rows, grids = [], []
  for method in methods:
    for k in ([shots[0]] if method == "controlnet" else shots):
      summary, workdir = _run(method, k)
      label = "controlnet" if method == "controlnet" else f"{method}, K={k}"
      rows.append({"run": label, "workdir": str(workdir), **summary})
      grids.append((label, _samples(workdir, 10), method == "controlnet"))
      print(f"{label}: {tune.headline(summary)}", flush=True)

  config = _config(methods[0], shots[0])
  train_set, test_set = build_images.build_image_data(config)
  real = tune.unseen_images(config, train_set, test_set)[:10]

  plt = _common.pyplot()
  held = [r for r in rows if r["method"] != "controlnet"]
  fig = plt.figure(figsize=(12, 0.75 * (len(grids) + 1) + 0.3 * (len(held) + 2) + 0.6))
  spec = fig.add_gridspec(2, 1, height_ratios=[0.75 * (len(grids) + 1), 0.3 * (len(held) + 2)])
  ax = fig.add_subplot(spec[0])
  strip = [np.concatenate(list(real[:, :, :, 0]), axis=1)]
  names = ["real 9s (unseen)"]
  for label, x, control in grids:
    x = np.clip(x[:10, :, :, 0], -1, 1)
    strip.append(np.concatenate(list(x), axis=1))
    names.append(f"{label} (draws for test controls)" if control else label)
  height = strip[0].shape[0]
  image = np.concatenate([np.pad(s, ((1, 1), (0, 0)), constant_values=-1) for s in strip])
  ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
  ax.set_yticks([(height + 2) * (i + 0.5) for i in range(len(names))])
  ax.set_yticklabels(names, fontsize=8)
  ax.set_xticks([])
  ax.set_title("Tuning the digits model trained on 0-8 to the unseen 9: samples per method and K")
  if held:
    table_ax = fig.add_subplot(spec[1])
    table_ax.axis("off")
    cells = [[fmt.format(r[key]) if r.get(key) is not None else "-" for key, _, fmt in _COLUMNS]
             for r in held]
    table = table_ax.table(cellText=cells, rowLabels=[r["run"] for r in held],
                           colLabels=[name for _, name, _ in _COLUMNS], loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
  fig.tight_layout()
  _common.write(FLAGS.out, "tuning_methods", fig, {"runs": rows})


if __name__ == "__main__":
  _common.run(main)
