"""The lecture's summary table, measured: diffusion, the VAE, the PixelCNN, the flow and the GAN
trained by the same runner on the same data for the same wall-time budget, scored by the same
image evaluation in one likelihood convention.

  python experiments/figures/lecture_table.py [--minutes=10] [--root=workdirs/lecture_table]
  python experiments/figures/lecture_table.py --data=mnist --tfds_data_dir=~/tensorflow_datasets

Each family is a run of ``python -m experiments.main`` in <root>/<data>/<family>: the diffusion
model is experiments/configs/digits.py (mnist.py), the others experiments/configs/baselines.py,
each with config.training.time_budget_s = 60 * --minutes. A run that has finished (its budget used
or its steps done) and has its evaluation is read back, not trained again; an interrupted one
resumes. Then every family's EMA model draws 1,000 samples twice (the first compiles; the second
is timed).

Writes lecture_table_<data>.json (every number and the lecture's claims checked against them),
lecture_table_<data>.md (the table) and lecture_table_<data>.png (samples of every family) to
--out. Columns: test bits/dim (exact, or the bound named; the same 100 test images and the same
dequantisation of the levels for every family, offset log2(L / 2)), pixel and classifier-feature
FD over their train-vs-test floors, the share of samples the digits classifier reads with
p >= 0.9, the class entropy of its readings (floor: the test set's), time to draw 1,000 samples,
training wall time (compilation included) and steps, trained parameters.
"""

import ast
import json
import math
import pathlib
import time

import _common
import numpy as np
from absl import app, flags

from experiments import cpu_flags
from experiments.lecture import claims, fd_ratio, markdown

cpu_flags.use_xla_convolutions()  # as the runner trains and samples on CPU (before JAX starts)

FAMILIES = ("diffusion", "vae", "pixelcnn", "flow", "gan")
NAMES = {"diffusion": "Diffusion (VP, EDM loss, U-Net)", "vae": "VAE", "pixelcnn": "PixelCNN++",
         "flow": "Glow (flow)", "gan": "DCGAN + R1"}

flags.DEFINE_string("root", "workdirs/lecture_table",
                    "Directory of the runs, one per family: <root>/<data>/<family>.")
flags.DEFINE_string("families", ",".join(FAMILIES), "Comma-separated families, among "
                    + ", ".join(FAMILIES) + ".")
flags.DEFINE_enum("data", "digits", ["digits", "mnist"],
                  "digits: the embedded 8x8 digits (offline); mnist: prepared TFDS MNIST.")
flags.DEFINE_string("tfds_data_dir", "", "--data=mnist: where TFDS MNIST is prepared.")
flags.DEFINE_float("minutes", 10.0, "Training wall-time budget of every family, in minutes.")
flags.DEFINE_integer("timed_samples", 1000, "Samples drawn for the sampling time (reported per "
                     "1,000).")
flags.DEFINE_multi_string(
    "override", [], "[family:]section.field=value, applied to the family's config (all families "
    "without a prefix), e.g. --override=sampling.num_samples=2000 "
    "--override=pixelcnn:model.features=96. Values are Python literals.")
flags.adopt_module_key_flags(_common)
FLAGS = flags.FLAGS


def _parse_override(text: str):
  lhs, eq, value = text.partition("=")
  family, _, path = lhs.rpartition(":")
  if not eq or not path:
    raise app.UsageError(f"--override must be [family:]section.field=value, got {text!r}.")
  if family and family not in FAMILIES:
    raise app.UsageError(f"--override={text!r}: family {family!r} is not one of "
                         f"{', '.join(FAMILIES)}.")
  try:
    value = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    pass  # a bare string
  return family, path, value


def family_config(family: str, data: str, minutes: float, overrides=(), tfds_data_dir: str = ""):
  """The family's config on ``data`` with the budget and the overrides applied."""
  from experiments import validate

  if family == "diffusion":
    from experiments.configs import digits, mnist

    config = (digits if data == "digits" else mnist).get_config()
  else:
    from experiments.configs import baselines

    config = baselines.get_config(f"{family},{data}")
    # The budget decides: the families' constant learning rates do not depend on num_steps.
    config.training.num_steps = 100 * config.training.num_steps
  config.training.time_budget_s = 60.0 * minutes
  if data == "mnist" and tfds_data_dir:
    config.data.tfds_data_dir = tfds_data_dir
  for prefix, path, value in overrides:
    if prefix and prefix != family:
      continue
    try:
      validate.check_override_keys(config, [path])
    except validate.ConfigError as e:
      raise app.UsageError(str(e)) from None
    *sections, field = path.split(".")
    target = config
    for s in sections:
      target = target[s]
    target[field] = value
  return config


def _finished(config, workdir: pathlib.Path) -> int | None:
  """The step of a finished run's last checkpoint (budget used or steps done), else None."""
  from experiments import train, workdir as workdir_lib

  steps = workdir_lib.checkpoint_steps(workdir) if (workdir / "checkpoints").exists() else []
  if not steps:
    return None
  last, spent = steps[-1], train.read_train_time(workdir).get(steps[-1], 0.0)
  if last >= config.training.num_steps or spent >= config.training.time_budget_s:
    return last
  return None


def run_family(family: str, config, workdir: pathlib.Path, timed_samples: int = 1000) -> dict:
  """Train (or resume, or read back) the family's run, time its sampler; one row of the table."""
  from experiments import build, build_images, checkpoints, sampling, sharding, train, validate
  from diffusion_jax import tuning

  try:
    validate.validate(config, "train")
  except validate.ConfigError as e:
    raise app.UsageError(f"{family}: {e}") from None
  method = build.build_method(config)
  mesh = sharding.make_mesh()
  summary_path = workdir / "eval" / "summary.json"
  step = _finished(config, workdir)
  summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
  if step is None or summary is None or summary.get("step") != step:
    print(f"{family}: training in {workdir} (budget {config.training.time_budget_s:.0f} s) ...",
          flush=True)
    state = train.train(config, workdir, mesh=mesh, method=method)
    summary = train.evaluate(config, workdir, state, mesh=mesh, method=method)
  else:
    print(f"{family}: reading the finished run in {workdir} (step {step}).", flush=True)
    with checkpoints.Checkpoints(workdir, read_only=True) as ckpt:
      state, _ = ckpt.restore(train.abstract_state(method, config, sharding.replicated(mesh)),
                              step=step)
  step = int(summary["step"])
  seconds = _sample_seconds(method, config, state, mesh, workdir, step, timed_samples)
  params = state.params
  row = {"family": family, "name": NAMES[family], "workdir": str(workdir), "step": step,
         "train_seconds": train.read_train_time(workdir).get(step),
         "batch_size": config.training.batch_size,
         "num_levels": build_images.num_levels(config),
         "num_params": tuning.num_params(params),
         "seconds_per_1000_samples": seconds,
         "likelihood_kind": summary.get("likelihood_kind",
                                        "upper bound (PF-ODE, uniform dequantisation)"),
         "samples_file": str(workdir / "samples" / f"{sampling.output_stem(config, step)}.npz")}
  if family == "gan":
    row["num_params_generator"] = tuning.num_params(params["generator"])
  for key in ("bits_per_dim", "bits_per_dim_se", "bits_per_dim_elbo", "bits_per_dim_ddpm_bound",
              "fd_pixels", "fd_pixels_floor", "fd_pixels_floor_std", "fd_features",
              "fd_features_floor", "fd_features_floor_std", "confident_fraction",
              "class_entropy_bits", "class_entropy_bits_floor", "copy_fraction", "nfe_mean"):
    if summary.get(key) is not None:
      row[key] = summary[key]
  return row


def _sample_seconds(method, config, state, mesh, workdir: pathlib.Path, step: int,
                    num: int) -> float:
  """Seconds per 1,000 samples of the run's sampler, timed over ``num`` draws after a compiling
  one, kept in <workdir>/eval/sample_time.json for the step and ``num``."""
  from experiments import train

  path = workdir / "eval" / "sample_time.json"
  if path.exists():
    cached = json.loads(path.read_text())
    if cached.get("step") == step and cached.get("num") == num:
      return cached["seconds_per_1000_samples"]
  draw = train.make_draw(method, train.model_params(method, state), config, mesh)
  draw(min(num, config.sampling.batch_size))  # compiles the program of one chunk
  tic = time.perf_counter()
  draw(num)
  seconds = (time.perf_counter() - tic) * 1000 / num
  path.write_text(json.dumps({"step": step, "num": num, "seconds_per_1000_samples": seconds}))
  return seconds


def figure(rows: list[dict], data: str, num: int = 64):
  """A grid of ``num`` samples per family (the evaluation's draws, in the data's levels)."""
  from diffusion_jax.data import images as image_lib
  from experiments.evaluate import images as evaluate_images

  plt = _common.pyplot()
  fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 3.0), squeeze=False)
  for ax, r in zip(axes[0], rows):
    with np.load(r["samples_file"]) as f:
      x = image_lib.levels_to_model(f["data"][:num], r["num_levels"])
    grid = evaluate_images.tile(x, int(math.ceil(math.sqrt(len(x)))))
    gray = grid.shape[-1] == 1
    ax.imshow(grid[..., 0] if gray else grid, cmap="gray" if gray else None, vmin=0, vmax=1)
    ax.set_title(f"{r['name']}\nfeature FD {fd_ratio(r, 'features'):.2f}x floor",
                 fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(f"{num} samples per family ({data}, equal training budgets)", fontsize=10)
  fig.tight_layout(rect=(0, 0, 1, 0.92))  # room for the title above the panels' two-line titles
  return fig


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  families = [f.strip() for f in FLAGS.families.split(",") if f.strip()]
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown or not families:
    raise app.UsageError(f"--families must list some of {', '.join(FAMILIES)}, got "
                         f"{FLAGS.families!r}.")
  if FLAGS.timed_samples < 1:
    raise app.UsageError(f"--timed_samples must be >= 1, got {FLAGS.timed_samples}.")
  if not FLAGS.minutes > 0:
    raise app.UsageError(f"--minutes must be > 0, got {FLAGS.minutes!r}.")
  overrides = [_parse_override(o) for o in FLAGS.override]
  configs = {f: family_config(f, FLAGS.data, FLAGS.minutes, overrides, FLAGS.tfds_data_dir)
             for f in families}  # every config built (and its overrides checked) before training
  root = pathlib.Path(FLAGS.root) / FLAGS.data
  rows = []
  for f in families:
    rows.append(run_family(f, configs[f], root / f, FLAGS.timed_samples))
    print(json.dumps({k: v for k, v in rows[-1].items() if not isinstance(v, str)}), flush=True)
  found = claims({r["family"]: r for r in rows})
  import jax

  payload = {"data": FLAGS.data, "minutes": FLAGS.minutes, "device": jax.devices()[0].device_kind,
             "rows": rows, "claims": found}
  name = f"lecture_table_{FLAGS.data}"
  text = markdown(rows, found, FLAGS.data, FLAGS.minutes)
  _common.write(FLAGS.out, name, figure(rows, FLAGS.data), payload)
  (pathlib.Path(FLAGS.out) / f"{name}.md").write_text(text)
  print(text)


if __name__ == "__main__":
  _common.run(main)
