"""--mode=tune: control a trained, frozen model by training a small part of it
(``diffusion_jax.tuning``), on a class it never saw, and measure what it learnt and what it forgot.

  python -m experiments.main --config=experiments/configs/digits_holdout.py \
      --workdir=workdirs/digits_holdout
  python -m experiments.main --mode=tune --config=experiments/configs/tune_digits.py:prompt \
      --workdir=workdirs/tune/prompt_k5 [--config.tune.num_shots=10]
  python -m experiments.main --mode=sample --workdir=workdirs/tune/prompt_k5 \
      --config.sampling.sampler=ddim

The protocol (config.tune): the base run (config.tune.base_workdir) is a class-conditional model
trained without the held-out label (config.data.holdout_classes); K = config.tune.num_shots
training images of that label, chosen with config.tune.shot_seed, are all a method sees of it.

- prompt: the label's embedding row alone is trained (``tuning.PromptTuning``);
- dreambooth: every weight, on the K images and, with config.tune.prior_preservation, as many of
  the frozen model's own samples of the other classes (Ruiz et al. 2022's class-prior
  preservation loss with lambda = 1: the two halves of each batch in expectation);
- lora: rank config.tune.lora_rank updates of the kernels config.tune.lora_targets matches,
  trained unmerged, sampled merged or not (config.sampling.lora_merged);
- film: per-channel scale and shift of every residual block for the held-out label;
- controlnet: a ControlNet on the frozen model for the config.tune.control_size average pooling of
  the image, trained on the training images (all of them: the control, not a class, is what it
  learns), the null label standing for "no class".

Only the trainable part is checkpointed (``Method.frozen``); the frozen weights are read from the
base run at every start. The tuned model is an ordinary run for ``--mode=sample``: every sampler,
classifier-free guidance (its null label is the frozen model's) and the likelihood apply.

The evaluation (eval/summary.json, samples.png) for the held-out class: config.eval.tune_num_samples
draws of the label, the share the digits classifier confidently reads as it, and their classifier
-feature FD to the real images of the label the method did not see, next to the FD of as many
other real ones (the floor, over config.eval.floor_repeats random halves); forgetting: the same
config.eval.tune_num_forgetting draws of the other classes (same keys) from the tuned and the
frozen model, their label accuracy and feature FD to the test images, and the share of draws that
are bit for bit the frozen model's. For the ControlNet: the share of draws, one per test image's
control, whose pooling lies within the match radius: the 95th percentile, over the test images, of
the distance from a test image's pooling to the nearest training image's (how close the data
itself comes to a test control), next to the frozen model's share (its draws ignore the control).
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import conditions, nets, parameterization, train, tuning
from diffusion_jax.data import images as image_lib
from experiments import build, build_images, keys, sharding
from experiments import workdir as workdir_lib
from experiments.method import Method

METHODS = ("prompt", "dreambooth", "lora", "film", "controlnet")
CACHE_DIR = "tune_cache"  # in the base workdir: the frozen model's draws, shared by its tunings


class TuneError(ValueError):
  """A tuning config that does not fit its base run."""


def is_tune_config(config: ml_collections.ConfigDict) -> bool:
  return config.get("tune") is not None


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The base run's saved config; the tuning config must build the same network on the same data."""
  workdir = pathlib.Path(config.tune.base_workdir)
  saved = workdir_lib.load_config(workdir)
  if saved is None:
    raise TuneError(f"config.tune.base_workdir={str(workdir)!r} holds no trained run "
                    f"({workdir / workdir_lib.CONFIG_FILE} is missing); train the base model first "
                    "(experiments/configs/digits_holdout.py).")
  for section in ("data", "sde", "model"):
    where = workdir_lib.first_difference(saved.get(section), config.get(section),
                                         f"config.{section}")
    if where:
      raise TuneError(f"{where} differs from the base run's ({workdir}): a tuning run builds the "
                      "frozen network exactly as it was trained; pass the base run's settings.")
  if config.training.loss != saved.training.loss or (
      config.training.loss == "edm" and config.training.sigma_data != saved.training.sigma_data):
    raise TuneError("config.training.loss and sigma_data must be the base run's (the network's "
                    f"preconditioning): {saved.training.loss!r}, {saved.training.sigma_data!r}.")
  return saved


@functools.lru_cache(maxsize=2)
def _base_params(workdir: str, step: int):
  """(EMA parameters on the host, step) of the base run's checkpoint (step 0: the newest)."""
  from experiments import train as train_lib
  from experiments.checkpoints import Checkpoints

  saved = workdir_lib.load_config(workdir)
  method = build_images.build_image_method(saved)
  placement = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with Checkpoints(workdir, read_only=True) as checkpoints:
    state, restored = checkpoints.restore(train_lib.abstract_state(method, saved, placement),
                                          step=step or None)
  if state is None:
    raise TuneError(f"config.tune.base_workdir={workdir!r} has no checkpoint.")
  return jax.device_get(state.ema_params), restored


def base_params(config: ml_collections.ConfigDict):
  return _base_params(str(config.tune.base_workdir), int(config.tune.base_step))[0]


def label(config) -> int:
  return int(config.tune.label)


def shots(config, train_set) -> np.ndarray:
  """The indices of the K training images of the held-out label a method may see."""
  pool = np.flatnonzero(train_set.labels == label(config))
  k = config.tune.num_shots
  if not 1 <= k <= pool.size:
    raise TuneError(f"config.tune.num_shots must lie in [1, {pool.size}] (the training images of "
                    f"label {label(config)}), got {k!r}.")
  return np.sort(np.random.default_rng(config.tune.shot_seed).choice(pool, k, replace=False))


def unseen_images(config, train_set, test_set) -> np.ndarray:
  """The real images of the held-out label the method did not see (model range): the reference."""
  seen = np.zeros(len(train_set), bool)
  seen[shots(config, train_set)] = True
  train_rows = np.flatnonzero((train_set.labels == label(config)) & ~seen)
  test_rows = np.flatnonzero(test_set.labels == label(config))
  return np.concatenate([train_set.subset(train_rows).to_model(),
                         test_set.subset(test_rows).to_model()]).astype(np.float32)


def build_tuner(config, module, shape, *, merged: bool = False):
  t = config.tune
  if t.method == "prompt":
    init = tuple(range(config.model.num_classes - len(build_images.holdout_classes(config))))
    return tuning.PromptTuning(label(config), init_labels=init if t.prompt_init == "mean" else (),
                               per_block=bool(t.prompt_per_block))
  if t.method == "dreambooth":
    return tuning.FineTune()
  if t.method == "lora":
    return tuning.LoRA(t.lora_rank, alpha=t.lora_alpha or None, targets=t.lora_targets,
                       merged=merged)
  if t.method == "film":
    return tuning.FiLM((label(config),))
  if t.method == "controlnet":
    size = t.control_size
    return tuning.ControlNet(module, tuple(shape), (size, size, shape[-1]),
                             hint_channels=t.hint_channels)
  raise TuneError(f"config.tune.method must be one of {METHODS}, got {t.method!r}.")


def _controlled(loss_fn, size: int, null_label: int):
  """A loss on {"x0", ...} examples whose condition is {"label": null, "control": pool(x0)}."""

  def wrapped(params, frozen, example, key):
    x0 = example["x0"]
    cond = {"label": jnp.asarray(null_label, jnp.int32),
            "control": tuning.average_pool(x0[None], size)[0]}
    return loss_fn(params, frozen, {"x0": x0, "cond": cond}, key)

  return wrapped


def build_tune_method(config: ml_collections.ConfigDict) -> Method:
  """The tuned model as a ``Method``: init reads the frozen base parameters and starts the tuner;
  the loss differentiates the trainable tree only; sample / evaluate take {"base", "tuned"}."""
  base_config(config)
  t = config.tune
  sde = build.build_sde(config)
  train_set, test_set = build_images.build_image_data(config)
  shape = tuple(train_set.shape)
  num_classes = config.model.num_classes
  if not num_classes:
    raise TuneError("the tuning protocol needs a class-conditional base model "
                    "(config.model.num_classes > 0).")
  null_cond = conditions.null_label(num_classes)
  module = build_images.build_image_model(config, num_classes)
  raw = nets.as_model_fn(module)
  controlled = t.method == "controlnet"
  train_tuner = build_tuner(config, module, shape)
  sample_tuner = build_tuner(config, module, shape,
                             merged=bool(config.sampling.get("lora_merged", True)))
  model_fn, prediction = build_images.build_model_fn(config, module, sde,
                                                      tuning.TunedModelFn(raw, train_tuner))
  sample_fn, _ = build_images.build_model_fn(config, module, sde,
                                             tuning.TunedModelFn(raw, sample_tuner))
  cond_key = "cond" if controlled else "label"
  loss_fn = build_images.build_loss_fn(config, model_fn, sde, prediction, cond_key,
                                       combine_fn=tuning.combine)
  if controlled:
    loss_fn = _controlled(loss_fn, t.control_size, int(null_cond))
  optimizer, _ = build.build_optimizer(config)
  train_step = train.make_train_step(loss_fn, optimizer, build.build_ema_decay(config))
  sampler, ts = build.build_sampler(config), np.asarray(build.build_time_grid(config, sde))

  base_params(config)  # read now, outside any trace (abstract_state traces init)

  def frozen():
    return base_params(config)

  def init(key):
    base = frozen()
    return train.TrainState.create(train_tuner.init(key, base), optimizer, frozen=base)

  def score_fn(params, cond=None):
    return parameterization.NetworkScore(sample_fn, params, sde, prediction, cond)

  # The null label of classifier-free guidance; a ControlNet's draws bring their own condition.
  sample = build.guided_sample_fn(config, sde, sampler, ts, shape,
                                  build.build_denoise_final(config), score_fn,
                                  None if controlled else null_cond)
  levels = train_set.num_levels

  def evaluate(draw, key, params=None):
    del key, params
    return evaluate_tuned(config, draw, train_set, test_set)

  def to_data_range(x):
    return np.asarray(image_lib.model_to_levels(np.asarray(x), levels))

  return Method(init=init, train_step=train_step, sample=sample, evaluate=evaluate,
                example_shape=shape, loss_fn=loss_fn, cond_key=cond_key, null_cond=null_cond,
                score_fn=score_fn, write_figure=write_samples_figure, to_data_range=to_data_range,
                headline=headline, frozen=frozen, combine=tuning.combine)


def build_tune_source(config: ml_collections.ConfigDict, mesh):
  """The tuning batches: the K images of the held-out label (with DreamBooth's prior
  preservation, as many rows of them as of the frozen model's samples of the other classes); for
  the ControlNet, every training image of the other classes."""
  from experiments import input_pipeline

  train_set, _ = build_images.build_image_data(config)
  tc = config.training
  if config.tune.method == "controlnet":
    records = build_images.without_classes(train_set, build_images.holdout_classes(config))
    return input_pipeline.GrainSource(input_pipeline.image_source(records, labels=False),
                                      batch_size=tc.batch_size, seed=config.seed, mesh=mesh)
  instances = train_set.subset(shots(config, train_set))
  if config.tune.method == "dreambooth" and config.tune.prior_preservation:
    prior = prior_samples(config, mesh)
    repeat = -(-len(prior) // len(instances))
    instances = instances.subset(np.tile(np.arange(len(instances)), repeat)[:len(prior)])
    images = np.concatenate([instances.images, prior.images])
    labels = np.concatenate([instances.labels, prior.labels])
    instances = image_lib.ImageDataset(images=images, labels=labels,
                                       num_levels=train_set.num_levels)
  return input_pipeline.GrainSource(input_pipeline.image_source(instances),
                                    batch_size=tc.batch_size, seed=config.seed, mesh=mesh)


# ---------------------------------------------------------------------------------------------
# The frozen model's draws (cached in the base workdir, shared by every tuning of it).


def _frozen_config(config):
  frozen = ml_collections.ConfigDict(config.to_dict())
  del frozen["tune"]
  return frozen


def _sampler_stem(config, num: int, what: str) -> str:
  """What the cached draws are: the sampler's stem, their number and seed, and the compiler
  setup (JAX version, backend, XLA_FLAGS), since the bitwise comparison with the tuned model's
  draws holds only for the same arithmetic."""
  import hashlib
  import os

  from experiments import sampling

  step = _base_params(str(config.tune.base_workdir), int(config.tune.base_step))[1]
  setup = f"{jax.__version__}|{jax.default_backend()}|{os.environ.get('XLA_FLAGS', '')}"
  digest = hashlib.sha256(setup.encode()).hexdigest()[:8]
  return (f"{what}_{sampling.output_stem(_frozen_config(config), step)}_n{num}_seed{config.seed}"
          f"_{digest}")


def frozen_draws(config, num: int, cond, what: str, mesh=None) -> np.ndarray:
  """``num`` draws (x, model range) of the frozen base model under the run's sampler and keys."""
  from experiments import train as train_lib

  stem = _sampler_stem(config, num, what)
  path = pathlib.Path(config.tune.base_workdir) / CACHE_DIR / f"{stem}.npz"
  if path.exists():
    return np.load(path)["x"]
  mesh = sharding.make_mesh() if mesh is None else mesh
  frozen_config = _frozen_config(config)
  method = build_images.build_image_method(frozen_config)
  x = train_lib.make_draw(method, base_params(config), frozen_config, mesh)(num, cond)["x"]
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, x=x)
    tmp.replace(path)
  return x


def other_labels(config, num: int) -> np.ndarray:
  """Labels 0..K-1 of the classes the base model was trained on, in turn."""
  kept = config.model.num_classes - len(build_images.holdout_classes(config))
  return (np.arange(num) % kept).astype(np.int32)


def prior_samples(config, mesh) -> image_lib.ImageDataset:
  """The frozen model's samples of the trained classes, as levels: DreamBooth's class prior."""
  num = config.tune.num_prior
  labels = other_labels(config, num)
  x = frozen_draws(config, num, labels, "prior", mesh)
  levels = build_images.num_levels(config)
  return image_lib.ImageDataset(images=image_lib.model_to_levels(x, levels).astype(np.uint8),
                                labels=labels, num_levels=levels)


# ---------------------------------------------------------------------------------------------
# The evaluation.


def _fd_against_halves(f_samples, f_ref, repeats: int, seed: int) -> dict:
  """FD of the samples to a random half A of the reference, next to the FD of the other half B to
  A (the floor), both at n = |B| samples; mean and std over ``repeats`` random halves."""
  from diffusion_jax import metrics

  rng = np.random.default_rng(seed)
  model, floor = [], []
  half = f_ref.shape[0] // 2
  for _ in range(repeats):
    order = rng.permutation(f_ref.shape[0])
    a, b = f_ref[order[:half]], f_ref[order[half:]]
    pick = rng.choice(f_samples.shape[0], b.shape[0], replace=b.shape[0] > f_samples.shape[0])
    model.append(metrics.fd(f_samples[pick], a))
    floor.append(metrics.fd(b, a))
  return {"fd": float(np.mean(model)), "fd_std": float(np.std(model, ddof=1)),
          "fd_floor": float(np.mean(floor)), "fd_floor_std": float(np.std(floor, ddof=1)),
          "fd_ratio": float(np.mean(model) / np.mean(floor)), "fd_n": int(f_ref.shape[0] - half)}


def _class_reading(classifier, x, labels, confidence: float) -> dict:
  probs = classifier.probs(x)
  read = probs.argmax(axis=1)
  confident = (read == labels) & (probs.max(axis=1) >= confidence)
  return {"label_accuracy": float(np.mean(read == labels)),
          "confident_fraction": float(np.mean(confident))}


def _quantized(x, levels: int) -> np.ndarray:
  from experiments.evaluate import images as evaluate_images

  return evaluate_images.to_cell_centres(np.asarray(x, np.float32), levels)


def evaluate_tuned(config, draw, train_set, test_set) -> tuple[dict, dict]:
  """The protocol's numbers for a tuned model (module docstring): (summary, plot data)."""
  from diffusion_jax import metrics

  classifier = build_images.evaluation_classifier(config, train_set, test_set)
  levels, e, t = train_set.num_levels, config.eval, config.tune
  summary = {"method": t.method, "num_shots": int(t.num_shots), "label": label(config),
             "classifier_test_accuracy": classifier.test_accuracy}
  if t.method == "controlnet":
    return _evaluate_control(config, draw, train_set, test_set, summary)
  held = build_images.holdout_classes(config)
  # Forgetting: the other classes from the tuned and the frozen model, drawn with the same keys
  # (first: the runner keeps the last draw, the held-out one, as the evaluation's samples file).
  m = e.tune_num_forgetting
  labels = other_labels(config, m)
  tuned_x = np.asarray(draw(m, labels)["x"], np.float32)
  frozen_x = frozen_draws(config, m, labels, "forgetting")
  test_other = build_images.without_classes(test_set, held)
  train_other = build_images.without_classes(train_set, held)
  f_test = classifier.features(test_other.to_model())
  f_train = classifier.features(train_other.to_model())
  rng = np.random.default_rng(config.seed)
  floor = [metrics.fd(f_train[rng.choice(len(train_other), m, replace=m > len(train_other))],
                      f_test) for _ in range(e.floor_repeats)]
  for name, xs in (("tuned", tuned_x), ("frozen", frozen_x)):
    q = _quantized(xs, levels)
    summary.update({f"{name}_other_{k}": v
                    for k, v in _class_reading(classifier, q, labels, e.confidence).items()})
    summary[f"{name}_other_fd"] = metrics.fd(classifier.features(q), f_test)
  summary["other_fd_floor"] = float(np.mean(floor))
  summary["other_fd_floor_std"] = float(np.std(floor, ddof=1))
  summary["forgetting_fd"] = summary["tuned_other_fd"] - summary["frozen_other_fd"]
  summary["forgetting_accuracy"] = (summary["frozen_other_label_accuracy"]
                                    - summary["tuned_other_label_accuracy"])
  summary["forgetting_relative_fd"] = summary["forgetting_fd"] / summary["frozen_other_fd"]
  same = np.all(tuned_x.reshape(m, -1) == frozen_x.reshape(m, -1), axis=1)
  summary["other_bitwise_equal_fraction"] = float(np.mean(same))
  n = e.tune_num_samples
  drawn = draw(n, np.full((n,), label(config), np.int32))
  summary["nfe_mean"] = float(np.mean(drawn["nfe"]))
  x = _quantized(drawn["x"], levels)
  reading = _class_reading(classifier, x, np.full((n,), label(config)), e.confidence)
  summary.update({f"heldout_{k}": v for k, v in reading.items()})
  ref = unseen_images(config, train_set, test_set)
  fd = _fd_against_halves(classifier.features(x), classifier.features(ref), e.floor_repeats,
                          config.seed)
  summary.update({f"heldout_{k}": v for k, v in fd.items()})

  shot_images = train_set.subset(shots(config, train_set)).to_model()
  return summary, {"samples": x, "shots": shot_images, "reference": ref,
                   "other_samples": _quantized(tuned_x, levels), "other_labels": labels}


def match_radius(train_x, test_x, size: int, percentile: float = 95.0) -> float:
  """The ``percentile`` over the test images of the RMS distance from a test image's pooling to
  the nearest training image's pooling."""
  def pooled(x):
    return np.asarray(tuning.average_pool(jnp.asarray(x), size)).reshape(len(x), -1)

  pooled_train, pooled_test = pooled(train_x), pooled(test_x)
  d2 = ((pooled_test[:, None, :] - pooled_train[None, :, :]) ** 2).mean(axis=-1)
  return float(np.percentile(np.sqrt(d2.min(axis=1)), percentile))


def _pool_errors(x, controls, size: int) -> np.ndarray:
  pooled = np.asarray(tuning.average_pool(jnp.asarray(x), size))
  return np.sqrt(((pooled - controls) ** 2).reshape(len(x), -1).mean(axis=1))


def _evaluate_control(config, draw, train_set, test_set, summary):
  size, levels = config.tune.control_size, train_set.num_levels
  held = build_images.holdout_classes(config)
  train_x = build_images.without_classes(train_set, held).to_model()
  test_x = test_set.to_model()
  controls = np.asarray(tuning.average_pool(jnp.asarray(test_x), size))
  n = len(test_x)
  null = np.full((n,), config.model.num_classes, np.int32)
  drawn = draw(n, {"label": null, "control": controls})
  summary["nfe_mean"] = float(np.mean(drawn["nfe"]))
  x = _quantized(drawn["x"], levels)
  radius = match_radius(train_x, test_x, size)
  errors = _pool_errors(x, controls, size)
  frozen_x = _quantized(frozen_draws(config, n, null, "unconditional"), levels)
  frozen_errors = _pool_errors(frozen_x, controls, size)
  summary.update({"control_size": int(size), "num_controls": int(n),
                  "match_radius": radius, "match_fraction": float(np.mean(errors <= radius)),
                  "control_rms_median": float(np.median(errors)),
                  "frozen_match_fraction": float(np.mean(frozen_errors <= radius)),
                  "frozen_control_rms_median": float(np.median(frozen_errors))})
  return summary, {"samples": x, "controls": controls, "reference": test_x}


def headline(summary: dict) -> str:
  if summary.get("method") == "controlnet":
    return (f"{summary['match_fraction']:.1%} of draws match their control (radius "
            f"{summary['match_radius']:.3f}; frozen model {summary['frozen_match_fraction']:.1%}), "
            f"median control RMS {summary['control_rms_median']:.3f}")
  return (f"label {summary['label']}: {summary['heldout_confident_fraction']:.1%} confident, "
          f"feature FD {summary['heldout_fd']:.3g} (floor {summary['heldout_fd_floor']:.3g}, "
          f"{summary['heldout_fd_ratio']:.2f}x); other classes: accuracy "
          f"{summary['tuned_other_label_accuracy']:.1%} (frozen "
          f"{summary['frozen_other_label_accuracy']:.1%}), feature FD "
          f"{summary['tuned_other_fd']:.3g} (frozen {summary['frozen_other_fd']:.3g}), "
          f"{summary['other_bitwise_equal_fraction']:.0%} bitwise the frozen model's")


def write_samples_figure(path, plot: dict, title: str) -> None:
  """Held-out class: the K shots, samples and unseen real images in rows; ControlNet: controls
  (upsampled) over their samples."""
  from experiments.evaluate import images as evaluate_images

  if "controls" in plot:
    c = np.asarray(plot["controls"][:10])
    h = plot["samples"].shape[1] // c.shape[1]
    up = np.repeat(np.repeat(c, h, axis=1), h, axis=2)
    rows = np.concatenate([up, plot["samples"][:10], plot["reference"][:10]])
    evaluate_images.save_grid(path, rows, title=f"{title}\ncontrols, samples, the test images",
                              ncols=10)
    return
  shots_row = plot["shots"][:10]
  rows = [np.concatenate([shots_row, np.full((10 - len(shots_row), *shots_row.shape[1:]), -1.0)])
          if len(shots_row) < 10 else shots_row, plot["samples"][:30], plot["reference"][:10]]
  evaluate_images.save_grid(path, np.concatenate(rows), ncols=10,
                            title=f"{title}\nthe K shots, samples (3 rows), unseen real images")


def check_init_equivalence(config, method) -> dict:
  """Whether the tuned network at step 0 equals the frozen one bit for bit, on a fixed batch of
  the other classes (and, for the ControlNet, with controls): the zero-initialisation claim."""
  base = base_params(config)
  state = method.init(keys.key(config, keys.INIT))
  shape = method.example_shape
  x = jax.random.normal(jax.random.key(0), (8, *shape))
  t = jnp.linspace(0.05, 0.95, 8)
  labels = jnp.asarray(other_labels(config, 8))
  module = build_images.build_image_model(config, config.model.num_classes)
  frozen = jax.jit(nets.as_model_fn(module))(base, x, t, labels)
  tuner = build_tuner(config, module, shape)
  cond = labels
  if config.tune.method == "controlnet":
    cond = {"label": labels, "control": tuning.average_pool(x, config.tune.control_size)}
  tuned = jax.jit(tuning.TunedModelFn(nets.as_model_fn(module), tuner))(
      tuning.combine(state.params, base), x, t, cond)
  return {"init_bitwise_equal_other_classes": bool(np.array_equal(np.asarray(frozen),
                                                                  np.asarray(tuned)))}


def run(config: ml_collections.ConfigDict, workdir) -> dict:
  """Tune (resuming), then evaluate; eval/summary.json gains the trainable size and wall times."""
  from experiments import train as train_lib

  workdir = pathlib.Path(workdir)
  mesh = sharding.make_mesh()
  method = build_tune_method(config)
  init_check = check_init_equivalence(config, method)
  source = build_tune_source(config, mesh)
  tic = time.perf_counter()
  state = train_lib.train(config, workdir, mesh=mesh, method=method, source=source)
  tune_seconds = time.perf_counter() - tic
  summary = train_lib.evaluate(config, workdir, state, mesh=mesh, method=method)
  if jax.process_index() != 0:
    return {}
  trainable = tuning.num_params(state.params)
  total = tuning.num_params(state.frozen)
  summary.update(init_check)
  summary.update({"trainable_params": trainable, "frozen_params": total,
                  "trainable_fraction": trainable / total, "tune_seconds": tune_seconds,
                  "tune_steps": int(config.training.num_steps)})
  path = workdir / "eval" / "summary.json"
  path.write_text(json.dumps(summary, indent=2))
  print(f"{config.tune.method}, K = {config.tune.num_shots}: {trainable:,} trainable parameters "
        f"({trainable / total:.2%} of {total:,}), tuned in {tune_seconds:.0f} s; "
        f"{headline(summary)}")
  return summary
