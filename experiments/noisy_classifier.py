"""--mode=train_classifier: the noise-conditional classifier p(y | x_t, t) of a run, for classifier guidance.

  python -m experiments.main --workdir=workdirs/digits --mode=train_classifier
  python -m experiments.main --workdir=workdirs/digits --mode=sample \
      --config.sampling.guidance.kind=classifier --config.sampling.guidance.scale=2

Dhariwal & Nichol (2021) guide an unconditional model with the gradient of a classifier trained on
noisy images: x_t = alpha(t) x0 + sigma(t) noise for t ~ U(t_min, T) under the run's own SDE, the
classifier told t. The network is ``nets.Classifier(noise_conditional=True)``, trained by the same
loop as the evaluation classifiers (``experiments/classifier.py``: AdamW, random shifts, EMA) on
the run's training split with the section ``config.noisy_classifier``. It is written to
``<workdir>/noisy_classifier/`` atomically (``params.msgpack``, then ``info.json`` with its test
accuracy at several noise levels); sampling with ``guidance.kind = "classifier"`` reads it.
"""

from __future__ import annotations

import json
import pathlib

import flax.serialization
import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
import ml_collections

from diffusion_jax.nets.classifier import Classifier, init_classifier
from experiments import classifier as classifier_lib

DIRECTORY = "noisy_classifier"


class NoisyClassifierFn(flax.struct.PyTreeNode):
  """log p(y | x_t = x, t) for every class, on ONE example: the ``classifier`` of
  ``guidance.ClassifierGuidance`` (the parameters are leaves; the module is static)."""

  module: Classifier = flax.struct.field(pytree_node=False)
  params: object

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    logits = self.module.apply(self.params, x[None], jnp.reshape(t, (1,)).astype(x.dtype))
    return jax.nn.log_softmax(logits[0])


def recipe(config: ml_collections.ConfigDict) -> classifier_lib.ClassifierConfig:
  c = config.noisy_classifier
  return classifier_lib.ClassifierConfig(
      channels=tuple(c.channels), blocks_per_stage=c.blocks_per_stage, feature_dim=c.feature_dim,
      dropout_rate=c.dropout_rate, num_steps=c.num_steps, batch_size=c.batch_size,
      learning_rate=c.learning_rate, warmup_steps=c.warmup_steps, max_shift=c.max_shift,
      seed=config.seed)


def train(config: ml_collections.ConfigDict, workdir, *, log=print) -> dict:
  """Train the run's noise-conditional classifier and write it to ``<workdir>/noisy_classifier``."""
  from experiments import build, build_images

  sde = build.build_sde(config)
  train_set, test_set = build_images.build_image_data(config)
  t_min = float(config.noisy_classifier.t_min)
  trained = classifier_lib.train_classifier(train_set, test_set, recipe(config), sde=sde,
                                            t_min=t_min, log=log)
  info = {**trained.info, "t_min": t_min, "sde": config.sde.name,
          "noisy_classifier": config.noisy_classifier.to_dict(), "jax_version": jax.__version__}
  out = pathlib.Path(workdir) / DIRECTORY
  out.mkdir(parents=True, exist_ok=True)
  classifier_lib.atomic_write(out / "params.msgpack",
                              flax.serialization.to_bytes(jax.device_get(trained.params)))
  # The JSON last: its presence marks a complete classifier.
  classifier_lib.atomic_write(out / "info.json", json.dumps(info, indent=2).encode())
  log(f"Noisy classifier: {info['train_seconds']:.0f} s; test accuracy by t "
      f"{info.get('test_accuracy_by_t')}. Wrote {out}.")
  return info


def load(config: ml_collections.ConfigDict, workdir,
         example_shape) -> tuple[NoisyClassifierFn, dict]:
  """The run's trained noisy classifier as a ``NoisyClassifierFn`` and its info; ``example_shape``
  is one image's (H, W, C) (the method's ``example_shape``), for the parameters' structure."""
  out = pathlib.Path(workdir) / DIRECTORY
  if not (out / "info.json").exists():
    raise FileNotFoundError(f"No noisy classifier in {out}: train it first with "
                            f"--workdir={workdir} --mode=train_classifier.")
  info = json.loads((out / "info.json").read_text())
  module = recipe(config).module(info["num_classes"], noise_conditional=True)
  template = init_classifier(module, jr.key(0), jnp.zeros((1, *example_shape)), jnp.ones((1,)))
  params = flax.serialization.from_bytes(template, (out / "params.msgpack").read_bytes())
  return NoisyClassifierFn(module, jax.tree.map(jnp.asarray, params)), info


__all__ = ["NoisyClassifierFn", "load", "train"]
