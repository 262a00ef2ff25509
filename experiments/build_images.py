"""Image methods, the image half of ``experiments/build.py``: config strings -> U-Net, data, loss,
sampler and the image evaluation, as one ``Method`` record for the runner.

  config.data.name   digits (embedded, offline) | shapes (procedural) | mnist | fashion_mnist |
                     cifar10 | celeb_a (prepared TFDS datasets, config.data.tfds_data_dir)
  config.model.name  unet (DDPM++ / NCSN++, ``nets.UNet``) | ncsn (``nets.NCSN``, annealed Langevin)
  config.training.loss  dsm (denoising score matching in the configured prediction) | edm
                     (Karras et al. 2022: the EDM preconditioning around the raw network, its
                     log-normal noise levels and weighting)

The network sees the noise level in the form its paper used: t for VP / sub-VP (the U-Net's
``noise_scale`` turns it into DDPM's 0..999 step index), log sigma(t) for VE (NCSN++, NCSN), and
EDM's c_noise = log(sigma)/4 under the EDM preconditioning.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import conditions, data, losses, nets, parameterization, sdes, train
from diffusion_jax.data import images as image_lib
from diffusion_jax.parameterization import Prediction
from experiments.method import Method

TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "celeb_a")
MODELS = ("unet", "ncsn")
LOSSES = ("dsm", "edm")


def _unknown(key: str, value, allowed) -> ValueError:
  return ValueError(f"Unknown {key}={value!r}; expected one of {', '.join(map(repr, allowed))}.")


@functools.lru_cache(maxsize=4)
def _image_data(name: str, resolution: int, num_train: int, num_test: int, seed: int,
                tfds_data_dir: str):
  if name == "digits":
    return data.digits("train"), data.digits("test")
  if name == "shapes":
    return (data.shapes(num_train, resolution=resolution, seed=seed, split="train"),
            data.shapes(num_test, resolution=resolution, seed=seed, split="test"))
  if name in TFDS_DATASETS:
    return (_tfds_images(name, "train", num_test, tfds_data_dir),
            _tfds_images(name, "test", num_test, tfds_data_dir))
  raise _unknown("config.data.name", name, ("digits", "shapes", *TFDS_DATASETS))


def _tfds_images(name: str, split: str, num: int, data_dir: str) -> data.ImageDataset:
  """The first ``num`` images of a prepared TFDS split, as levels in memory (for the evaluation:
  the floors and the classifier); training reads the whole split through grain instead."""
  from experiments import input_pipeline

  if name == "celeb_a" and split == "test":
    split = "validation"  # score_sde evaluates CelebA on its validation split
  source = input_pipeline.tfds_image_source(name, split=split, data_dir=data_dir or None)
  rows = [source[i] for i in range(min(num, len(source)))]
  images = image_lib.model_to_levels(np.stack([r["x0"] for r in rows]), 256).astype(np.uint8)
  labels = np.array([r["label"] for r in rows], np.int32) if "label" in rows[0] else None
  return data.ImageDataset(images=images, labels=labels, num_levels=256)


def build_image_records(config: ml_collections.ConfigDict):
  """The training split as a random-access grain source of {"x0"[, "label"]} examples."""
  from experiments import input_pipeline

  c = config.data
  if c.name in TFDS_DATASETS:
    return input_pipeline.tfds_image_source(c.name, split=c.tfds_split,
                                            data_dir=c.tfds_data_dir or None,
                                            download=c.tfds_download)
  train_set, _ = build_image_data(config)
  train_set = without_classes(train_set, holdout_classes(config))
  return input_pipeline.image_source(train_set, labels=bool(config.model.num_classes))


def holdout_classes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """config.data.holdout_classes: the labels a class-conditional model never sees in training (the
  tuning protocol's held-out class, ``experiments/tune.py``); they are the highest labels, so the
  model's label table still has their rows (never trained) and its evaluation draws 0..K-1."""
  return tuple(int(k) for k in config.data.get("holdout_classes", ()))


def without_classes(dataset: data.ImageDataset, classes) -> data.ImageDataset:
  """The images whose label is not in ``classes`` (all of them for no classes)."""
  if not classes:
    return dataset
  return dataset.subset(np.flatnonzero(~np.isin(dataset.labels, np.asarray(classes))))


def build_image_data(config: ml_collections.ConfigDict):
  """config.data -> (train, test) ``ImageDataset``s (integer levels, labels, factors)."""
  c = config.data
  return _image_data(c.name, c.get("resolution", 0), c.get("num_train", 0), c.get("num_test", 0),
                     config.seed, c.get("tfds_data_dir", ""))


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """One example's (H, W, C), without loading the data where the config says it."""
  name = config.data.name
  if name == "digits":
    return (8, 8, 1)
  if name == "shapes":
    return (config.data.resolution,) * 2 + (3,)
  return {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3),
          "celeb_a": (64, 64, 3)}[name]


def num_levels(config: ml_collections.ConfigDict) -> int:
  return 17 if config.data.name == "digits" else 256


def build_image_model(config: ml_collections.ConfigDict, num_classes: int):
  """config.model -> the batched linen network (``nets.UNet`` or ``nets.NCSN``)."""
  c = config.model
  if c.name == "unet":
    return nets.UNet(model_channels=c.model_channels, channel_mult=tuple(c.channel_mult),
                     num_res_blocks=c.num_res_blocks, attn_resolutions=tuple(c.attn_resolutions),
                     dropout=c.dropout, embedding=c.time_embedding,
                     fourier_scale=c.fourier_scale, noise_scale=c.noise_scale,
                     skip_rescale=c.skip_rescale, resblock=c.resblock,
                     channel_mult_emb=c.channel_mult_emb, channel_mult_noise=c.channel_mult_noise,
                     encoder=c.encoder, decoder=c.decoder,
                     resample_filter=tuple(c.resample_filter), num_heads=c.num_heads,
                     num_classes=num_classes)
  if c.name == "ncsn":
    return nets.NCSN(features=c.model_channels, channel_mult=tuple(c.channel_mult),
                     num_res_blocks=c.num_res_blocks, embedding=c.time_embedding,
                     fourier_scale=c.fourier_scale, noise_scale=c.noise_scale,
                     num_classes=num_classes)
  raise _unknown("config.model.name", c.name, MODELS)


def build_model_fn(config: ml_collections.ConfigDict, module, sde, raw=None):
  """The network as a ``model_fn`` of (x, t) and the prediction it makes.

  dsm: VE networks see log sigma(t) (``parameterization.LogSigmaInput``), VP ones t; edm: the raw
  network inside ``EDMPrecond`` predicts x0. ``raw``: the raw network's model_fn in place of
  ``module``'s (a tuned network, ``diffusion_jax.tuning.TunedModelFn``).
  """
  raw = nets.as_model_fn(module) if raw is None else raw
  loss = config.training.loss
  if loss == "edm":
    return parameterization.EDMPrecond(raw, sde, config.training.sigma_data), Prediction.X0
  if loss != "dsm":
    raise _unknown("config.training.loss", loss, LOSSES)
  from experiments import build

  prediction = build.build_prediction(config)
  if isinstance(sde, sdes.VESDE):
    return parameterization.LogSigmaInput(raw, sde), prediction
  return raw, prediction


def build_loss_fn(config: ml_collections.ConfigDict, model_fn, sde, prediction, cond_key,
                  combine_fn=None):
  """config.training.loss -> the per-example loss of ``build_model_fn``'s model: EDM's, or DSM in
  the configured prediction and weighting; ``combine_fn`` as the losses take it (a tuned model)."""
  from experiments import build

  tc = config.training
  if tc.loss == "edm":
    return losses.make_edm_loss_fn(model_fn, sde, sigma_data=tc.sigma_data, p_mean=tc.p_mean,
                                   p_std=tc.p_std, t_min=tc.t_min, cond_key=cond_key,
                                   combine_fn=combine_fn)
  return losses.make_dsm_loss_fn(model_fn, sde, prediction=prediction,
                                 weighting=build.build_weighting(config), t_min=tc.t_min,
                                 cond_key=cond_key, combine_fn=combine_fn)


def _check_image_conditioning(config, train_set) -> int:
  num_classes = config.model.num_classes
  if not num_classes:
    return 0
  if train_set.labels is None:
    raise ValueError(f"config.model.num_classes={num_classes} trains a class-conditional model, "
                     f"but config.data.name={config.data.name!r} has no labels; use "
                     "config.model.num_classes=0.")
  have = int(np.max(train_set.labels)) + 1
  if num_classes != have:
    raise ValueError(f"config.model.num_classes={num_classes} must equal the number of classes of "
                     f"config.data.name={config.data.name!r}, {have}.")
  held = holdout_classes(config)
  if held and sorted(held) != list(range(num_classes - len(held), num_classes)):
    raise ValueError(f"config.data.holdout_classes must be the highest labels, e.g. "
                     f"({num_classes - 1},) of {num_classes}, got {held!r}.")
  return num_classes


def _classifier_config(config: ml_collections.ConfigDict):
  from experiments import classifier as classifier_lib

  return classifier_lib.ClassifierConfig(num_steps=config.eval.classifier_steps)


def _shape_readers(config: ml_collections.ConfigDict, train_set, test_set, factors=None) -> dict:
  """The shapes' factor readers (``experiments/evaluate/factors.py``), all or ``factors``."""
  from experiments.evaluate import factors as factors_lib

  return factors_lib.readers(config.data.name, train_set, test_set, _classifier_config(config),
                             factors=factors or factors_lib.FACTORS,
                             cache_dir=config.eval.classifier_dir or None)


def evaluation_classifier(config: ml_collections.ConfigDict, train_set, test_set):
  """The data's evaluation classifier (trained once with a fixed seed, then read from the cache);
  for the shapes, the shape reader of ``experiments/evaluate/factors.py``."""
  if config.data.name == "shapes":
    return _shape_readers(config, train_set, test_set, ("shape",))["shape"]
  from experiments import classifier as classifier_lib

  return classifier_lib.load_or_train(config.data.name, train_set, test_set,
                                      _classifier_config(config),
                                      cache_dir=config.eval.classifier_dir or None)


def evaluate_samples(config: ml_collections.ConfigDict, draw, train_set, test_set,
                     num_classes: int):
  """Sample quality next to the floors (``experiments/evaluate/images.py``), in pixels, the
  evaluation classifier's features and (config.eval.features="inception") Inception-v3's; for
  data with known factors (the shapes), what each factor's reader sees in the samples
  (``experiments/evaluate/factors.py``)."""
  from experiments.evaluate import images as evaluate_images

  # The shapes: every factor's reader, the shape reader being the evaluation classifier.
  readers = _shape_readers(config, train_set, test_set) if config.data.name == "shapes" else None
  classifier = readers["shape"] if readers else evaluation_classifier(config, train_set, test_set)
  e = config.eval
  inception = e.inception_weights if e.features == "inception" else None
  # A model trained without the held-out classes is scored on the others (its draws cycle through
  # labels 0..K-1 below them); the classifier above still reads every class.
  held = holdout_classes(config)
  if held:
    train_set, test_set = (without_classes(d, held) for d in (train_set, test_set))
    num_classes -= len(held)
  summary, plot = evaluate_images.evaluate(
      draw, train_set, test_set,
      feature_fns=evaluate_images.feature_strategies(classifier, inception),
      num_samples=config.sampling.num_samples, num_floor_splits=e.floor_repeats,
      classifier=classifier, num_classes=num_classes, seed=config.seed,
      confidence=e.confidence)
  if readers and summary["num_scored"]:
    from experiments.evaluate import factors

    summary.update(factors.factor_scores(plot["samples"], train_set, test_set, readers,
                                         num_floor_splits=e.floor_repeats,
                                         confidence=e.confidence, seed=config.seed))
  return summary, plot


def build_image_method(config: ml_collections.ConfigDict) -> Method:
  """config -> the image diffusion method: a U-Net (or NCSN) trained by DSM or EDM, the configured
  sampler, the image evaluation (``experiments/evaluate/images.py``) with test bits/dim."""
  from experiments import build

  sde = build.build_sde(config)
  train_set, test_set = build_image_data(config)
  shape = tuple(train_set.shape)
  num_classes = _check_image_conditioning(config, train_set)
  cond_key = "label" if num_classes else None
  null_cond = conditions.null_label(num_classes) if num_classes else None
  module = build_image_model(config, num_classes)
  model_fn, prediction = build_model_fn(config, module, sde)
  loss_fn = build_loss_fn(config, model_fn, sde, prediction, cond_key)
  if num_classes and config.model.label_dropout > 0:
    loss_fn = conditions.with_condition_dropout(loss_fn, config.model.label_dropout, null_cond,
                                                cond_key)
  optimizer, _ = build.build_optimizer(config)
  train_step = train.make_train_step(loss_fn, optimizer, build.build_ema_decay(config))
  sampler, ts = build.build_sampler(config), np.asarray(build.build_time_grid(config, sde))
  denoise_final = build.build_denoise_final(config)

  def init(key):
    cond = None if not num_classes else jnp.zeros((1,), jnp.int32)
    params = nets.init_params(module, key, jnp.zeros((1, *shape)), jnp.ones((1,)), cond)
    return train.TrainState.create(params, optimizer)

  def score_fn(params, cond=None):
    return parameterization.NetworkScore(model_fn, params, sde, prediction, cond)

  classifier_guided = build.guidance_config(config).kind == "classifier"
  classifier_fn, data_classes = None, 0
  if classifier_guided:
    from experiments import classifier as classifier_lib
    from experiments import noisy_classifier

    data_classes = classifier_lib.num_classes_of(
        classifier_lib.labelled("train_set", train_set)[1], train_set)
    classifier_module = noisy_classifier.recipe(config).module(data_classes, noise_conditional=True)
    classifier_fn = lambda p: noisy_classifier.NoisyClassifierFn(classifier_module, p)  # noqa: E731
  sample = build.guided_sample_fn(config, sde, sampler, ts, shape, denoise_final, score_fn,
                                  null_cond if num_classes and config.model.label_dropout > 0
                                  else None, classifier_fn)
  # A classifier-guided unconditional model is drawn, and scored, class by class like a
  # conditional one.
  eval_classes = num_classes or (data_classes if classifier_guided else 0)

  def evaluate(draw, key, params=None):
    del key  # the evaluation's draws use the runner's sampling keys; its splits config.seed
    summary, plot = evaluate_samples(config, draw, train_set, test_set, eval_classes)
    if params is not None and config.eval.bits_per_dim:
      from experiments import likelihood_eval

      summary.update(likelihood_eval.image_bits_per_dim(
          config, score_fn(params), sde, without_classes(test_set, holdout_classes(config))))
    return summary, plot

  to_data_range, write_grid, write_figure = image_outputs(train_set)
  return Method(init=init, train_step=train_step, sample=sample, evaluate=evaluate,
                example_shape=shape, loss_fn=loss_fn, cond_key=cond_key, null_cond=null_cond,
                score_fn=score_fn, write_figure=write_figure, write_grid=write_grid,
                to_data_range=to_data_range, headline=image_headline)


def image_outputs(train_set: data.ImageDataset):
  """(to_data_range, write_grid, write_figure) of an image method (``Method``'s fields): samples
  to the data's integer levels, a grid of samples, the evaluation's figure (a labelled row per
  class for class-conditional draws)."""
  levels = train_set.num_levels

  def to_data_range(x):
    return np.asarray(image_lib.model_to_levels(np.asarray(x), levels))

  def write_grid(path, x, title):
    from experiments.evaluate import images as evaluate_images

    evaluate_images.save_grid(path, image_lib.levels_to_model(to_data_range(x), levels),
                              title=title)

  def write_figure(path, plot, title):
    from experiments.evaluate import images as evaluate_images

    x = image_lib.levels_to_model(to_data_range(plot["samples"]), levels)
    if plot.get("labels") is not None:
      evaluate_images.save_class_grid(path, x, plot["labels"], title=title,
                                      class_names=train_set.class_names)
    else:
      evaluate_images.save_grid(path, x[:100], title=title)

  return to_data_range, write_grid, write_figure


def image_headline(summary: dict) -> str:
  """FD in pixels and features against their floors (mean +- std over splits), the classifier's
  reading of the samples, the copy check and the bits/dim."""
  parts = []
  for space in ("pixels", "features", "inception"):
    if f"fd_{space}" in summary:
      parts.append(f"FD {space} {summary[f'fd_{space}']:.3g} (floor {summary[f'fd_{space}_floor']:.3g}"
                   f" +- {summary[f'fd_{space}_floor_std']:.2g}, "
                   f"{summary[f'fd_{space}'] / summary[f'fd_{space}_floor']:.2f}x)")
  kind = summary.get("likelihood_kind")  # the baselines: exact, or which bound
  for key, name, fmt in (("label_accuracy", "read as their label", ".1%"),
                         ("confident_fraction", "confident", ".1%"),
                         ("valid_fraction", "valid (every factor read confidently)", ".1%"),
                         ("class_entropy_bits", "class entropy (bits)", ".3f"),
                         ("copy_fraction", "copies", ".1%"),
                         ("bits_per_dim_elbo", "ELBO (bits/dim)", ".3f"),
                         ("bits_per_dim", f"bits/dim ({kind})" if kind else "bits/dim", ".3f"),
                         ("bits_per_dim_ddpm_bound", "DDPM bound (bits/dim)", ".3f")):
    if key in summary and summary[key] is not None:
      parts.append(f"{name} {summary[key]:{fmt}}")
  return ", ".join(parts)
