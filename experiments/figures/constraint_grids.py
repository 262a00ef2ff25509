"""Inpainting and colorization of held-out images with a trained image model, scored by the
evaluation classifier (or the shapes' colour reader).

  python experiments/figures/constraint_grids.py --workdir=workdirs/digits_cond \
      [--task=inpaint_right] [--methods=replace,repaint] [--num=297]
  python experiments/figures/constraint_grids.py --workdir=workdirs/shapes16 --task=colorize

Tasks (the known part is taken from each test image):
- ``inpaint_right`` / ``inpaint_left`` / ``inpaint_bottom``: that half of every image is masked
  and sampled; the score is the share of completions the evaluation classifier reads as the
  original image's label, next to its accuracy on the originals and on the masked images with the
  hole left at the background level (-1).
- ``colorize`` (RGB data with a colour factor, the shapes): the grey image is known and the colour
  sampled (Song et al. 2021's decoupled basis); the score is the share of colorized images whose
  colour the shapes' colour reader reads as the original's.

Methods: ``replace`` (``samplers.Inpaint`` around the run's sampler), ``repaint``
(``samplers.RePaint`` with --resamples, on a grid with that many times fewer steps, the same NFE)
``dps`` (inpainting only: ``samplers.PosteriorSampling`` of the measurement mask * x with
--dps_zeta, on half the steps: each costs two evaluations) and ``dps_replace`` (DPS inside
``Inpaint``: the gradient step, then the known pixels put back exactly).
A class-conditional model is used through its null label (its unconditional score). Writes
constraint_grids_<task>.png (rows: originals, the known part, then one row per method) and .json.
"""

import json
import pathlib

import _common
import _image_sweep
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from absl import app, flags

TASKS = ("inpaint_right", "inpaint_left", "inpaint_bottom", "colorize")
METHODS = ("replace", "repaint", "dps", "dps_replace")
_image_sweep.define_workdir_flags("A trained image run's directory.")
flags.DEFINE_enum("task", "inpaint_right", TASKS, "What is known and what is sampled.")
flags.DEFINE_list("methods", list(METHODS), f"Any of: {', '.join(METHODS)} (dps and dps_replace "
                  "are skipped for colorize).")
flags.DEFINE_integer("resamples", 5, "RePaint's resamples per step (on num_steps / resamples "
                     "steps).", lower_bound=2)
flags.DEFINE_float("dps_zeta", 6.0, "DPS's step size zeta (inpainting only; 6 was the best of 1, "
                   "3, 6, 10, 20 on the digits at 41 NFE).", lower_bound=0.0)
flags.DEFINE_integer("num", 297, "Test images to complete (at most the test split).", lower_bound=1)
flags.DEFINE_integer("shown", 12, "Images per row of the figure.", lower_bound=1)
flags.adopt_module_key_flags(_common)
flags.adopt_module_key_flags(_image_sweep)  # --workdir, --checkpoint_step, --config
FLAGS = flags.FLAGS


def _mask(task, images):
  """1 where the test image is known (its right, left or bottom half is sampled)."""
  _, h, w, _ = images.shape
  mask = np.zeros(images.shape, np.float32)
  if task == "inpaint_right":
    mask[:, :, : w // 2] = 1.0
  elif task == "inpaint_left":
    mask[:, :, w // 2:] = 1.0
  elif task == "inpaint_bottom":
    mask[:, : h // 2] = 1.0
  return mask


def _restore(config, workdir, step, method):
  from experiments import sharding
  from experiments import train as train_lib
  from experiments.checkpoints import Checkpoints

  mesh = sharding.make_mesh()
  with Checkpoints(workdir, read_only=True) as checkpoints:
    state, restored = checkpoints.restore(
        train_lib.abstract_state(method, config, sharding.replicated(mesh)), step=step)
  if state is None:
    raise app.UsageError(f"No checkpoint in {workdir}/checkpoints.")
  state = train_lib.with_frozen(method, state, sharding.replicated(mesh))
  return train_lib.model_params(method, state), restored


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from diffusion_jax import samplers as S
  from diffusion_jax.sampling import sample_batch
  from experiments import build, build_images
  from experiments.evaluate import images as evaluate_images

  unknown = [m for m in FLAGS.methods if m not in METHODS]
  if unknown or not FLAGS.methods:
    raise app.UsageError(f"--methods must list some of {', '.join(METHODS)}; unknown: {unknown}.")
  config, step = _image_sweep.load(FLAGS["config"], FLAGS.workdir, FLAGS.checkpoint_step)
  train_set, test_set = build_images.build_image_data(config)
  images = np.asarray(test_set.to_model(), np.float32)[:FLAGS.num]
  labels = None if test_set.labels is None else np.asarray(test_set.labels)[:FLAGS.num]
  n, shape = images.shape[0], images.shape[1:]
  if FLAGS.task == "colorize":
    if shape[-1] != 3 or getattr(test_set, "factors", None) is None:
      raise app.UsageError(f"--task=colorize needs RGB data with a colour factor (the shapes); "
                           f"{config.data.name} has shape {shape}.")
  elif labels is None:
    raise app.UsageError(f"--task={FLAGS.task} is scored by the classifier: {config.data.name} has "
                         "no labels.")
  method = build.build_method(config)
  params, step = _restore(config, FLAGS.workdir, step, method)
  sde = build.build_sde(config)
  score = method.score_fn(params, method.null_cond)  # a conditional model: its null label
  inner = build.build_sampler(config)
  ts = np.asarray(build.build_time_grid(config, sde))
  denoise_final = build.build_denoise_final(config)
  if FLAGS.task == "colorize":
    grey = images.mean(axis=-1)
    known = np.repeat(grey[..., None], 3, axis=-1)  # what is shown as "known"
    constrained = lambda: S.colorization(inner, jnp.asarray(grey))  # noqa: E731
  else:
    mask = _mask(FLAGS.task, images)
    known = np.where(mask > 0, images, -1.0)
    constrained = lambda: S.Inpaint(inner, jnp.asarray(mask), jnp.asarray(images))  # noqa: E731

  results, rows, raw = {}, {}, {}
  for name in FLAGS.methods:
    if name == "repaint":
      sampler = S.RePaint(constrained(), FLAGS.resamples)
      steps = max(1, (len(ts) - 1) // FLAGS.resamples)
      grid = np.asarray(build.build_time_grid(_with_steps(config, steps), sde))
    elif name in ("dps", "dps_replace"):
      if FLAGS.task == "colorize":
        continue
      sampler = S.PosteriorSampling(inner, S.MaskedMeasurement(jnp.asarray(mask)),
                                    jnp.asarray(mask * images),
                                    jnp.full((n,), FLAGS.dps_zeta))  # per example: sampler_axes=0
      if name == "dps_replace":  # DPS's gradient step, then the known pixels put back
        sampler = S.Inpaint(sampler, jnp.asarray(mask), jnp.asarray(images))
      steps = max(1, (len(ts) - 1) // 2)
      grid = np.asarray(build.build_time_grid(_with_steps(config, steps), sde))
    else:
      sampler, grid = constrained(), ts
    out = sample_batch(sde, score, sampler, jnp.asarray(grid), key=jr.key(config.seed), num=n,
                       shape=tuple(shape), sampler_axes=_per_example_axes(sampler),
                       denoise_final=denoise_final)
    raw[name] = np.asarray(out.x)
    rows[name] = np.clip(raw[name], -1.0, 1.0)  # shown and scored in the data's range
    results[name] = {"nfe": int(out.nfe[0]), "steps": len(grid) - 1}
    print(f"{name}: {results[name]['nfe']} NFE", flush=True)

  if FLAGS.task == "colorize":
    from experiments.evaluate import factors as factors_lib

    reader = build_images._shape_readers(config, train_set, test_set, ("colour",))["colour"]
    truth = factors_lib.reader_dataset(test_set, "colour").labels[:n]
    score_name = "colour_accuracy"
    reference = {"originals": float(np.mean(reader.probs(images).argmax(1) == truth)),
                 "grey (as RGB)": float(np.mean(reader.probs(known).argmax(1) == truth))}
    for name, x in rows.items():
      results[name][score_name] = float(np.mean(reader.probs(x).argmax(1) == truth))
      results[name]["grey_error_max"] = float(np.abs(raw[name].mean(-1) - grey).max())
  else:
    classifier = build_images.evaluation_classifier(config, train_set, test_set)
    score_name = "label_accuracy"
    reference = {"originals": classifier.accuracy(images, labels),
                 "masked (hole at -1)": classifier.accuracy(known, labels)}
    for name, x in rows.items():
      results[name][score_name] = classifier.accuracy(x, labels)
      results[name]["known_error_max"] = float(
          np.abs(np.where(mask > 0, raw[name] - images, 0.0)).max())
  for name in rows:
    print(f"{name}: {score_name} {results[name][score_name]:.3f}", flush=True)

  k = min(FLAGS.shown, n)
  panel = np.concatenate([images[:k], known[:k]] + [rows[m][:k] for m in rows])
  row_names = ["original", "known"] + [f"{m} ({100 * results[m][score_name]:.1f}%)" for m in rows]
  out_dir = pathlib.Path(FLAGS.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / f"constraint_grids_{FLAGS.task}.png"
  evaluate_images.save_grid(path, panel, ncols=k,
                            title=f"{config.data.name} {FLAGS.task}: " + ", ".join(row_names)
                            + f"; originals {100 * reference['originals']:.1f}%")
  payload = {"workdir": str(FLAGS.workdir), "checkpoint_step": step, "task": FLAGS.task, "num": n,
             "score": score_name, "reference": reference, "methods": results,
             "sampler": config.sampling.sampler}
  (out_dir / f"constraint_grids_{FLAGS.task}.json").write_text(json.dumps(payload, indent=1))
  print(f"Wrote {path} (figure) and its .json (numbers).")


def _per_example_axes(sampler):
  """sampler_axes: every array of the sampler has one row per example, except a colour basis."""
  import jax

  from diffusion_jax import samplers as S

  def axes(part):
    mapped = jax.tree.map(lambda _: 0, part)
    if isinstance(part, S.Inpaint):
      mapped = mapped.replace(inner=axes(part.inner), basis=None)
    elif hasattr(part, "inner"):
      mapped = mapped.replace(inner=axes(part.inner))
    return mapped

  return axes(sampler)


def _with_steps(config, steps):
  c = config.copy_and_resolve_references()
  c.sampling.num_steps = steps
  return c


if __name__ == "__main__":
  _common.run(main)
