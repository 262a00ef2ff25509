"""The evaluation classifier of an image dataset: trained once with a fixed seed, cached on disk.

  python -m experiments.classifier --dataset=digits            # train (or load) and report
  python -m experiments.classifier --dataset=digits --retrain  # ignore the cache

Its penultimate features and probabilities are the "classifier" feature strategy of
experiments/evaluate/images.py, and its test accuracy is reported next to every score it gives.

The cache entry is keyed by the dataset's name, a fingerprint of its train split (images, labels,
levels) and a hash of the classifier and training configuration, so a changed split or recipe never
reads a stale network. Default directory ``~/.cache/diffusion_jax/classifiers``, overridden by the
``cache_dir`` argument or the ``DIFFUSION_JAX_CLASSIFIER_CACHE`` environment variable. An entry is
two files written atomically (temporary file, then ``os.replace``): ``<key>.msgpack`` (the
parameters, ``flax.serialization``) and ``<key>.json`` (configuration, test accuracy, training
time), the JSON written last so that its presence marks a complete entry.

Training: a Python loop of jitted steps (a ``lax.scan`` over conv steps is slow on XLA:CPU) on
the cross-entropy of batches with random translations of up to ``max_shift`` pixels (edge
padding), ``diffusion_jax.train``'s optimiser (AdamW, warm-up, cosine decay) and ``TrainState``,
and the EMA of the parameters as the result. Parameters are drawn on the host
(``init_classifier``: nothing compiled).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from diffusion_jax import train as train_lib
from diffusion_jax.nets.classifier import Classifier, init_classifier

CACHE_ENV = "DIFFUSION_JAX_CLASSIFIER_CACHE"
DEFAULT_CACHE = pathlib.Path("~/.cache/diffusion_jax/classifiers")
_EVAL_BATCH = 256


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """The network (``diffusion_jax.nets.Classifier`` fields) and its training recipe."""

  channels: tuple[int, ...] = (32, 64)
  blocks_per_stage: int = 1
  feature_dim: int = 128
  num_groups: int = 8
  dropout_rate: float = 0.1
  num_steps: int = 300
  batch_size: int = 64
  learning_rate: float = 2e-3
  warmup_steps: int = 50
  weight_decay: float = 1e-4
  ema_decay: float = 0.99
  max_shift: int = 1
  seed: int = 0

  def module(self, num_classes: int) -> Classifier:
    return Classifier(num_classes=num_classes, channels=tuple(self.channels),
                      blocks_per_stage=self.blocks_per_stage, feature_dim=self.feature_dim,
                      num_groups=self.num_groups, dropout_rate=self.dropout_rate)

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["channels"] = list(out["channels"])
    return out


@functools.partial(jax.jit, static_argnums=0)
def _apply(module: Classifier, params, x):
  return module.apply(params, x, return_features=True)


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
  """A classifier and its parameters: ``features``, ``probs``, ``logits`` of model-space images."""

  module: Classifier
  params: Any
  test_accuracy: float | None
  info: dict = dataclasses.field(default_factory=dict)

  def logits_and_features(self, x) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, K), features (N, feature_dim)) in fixed-size chunks (one compile per shape)."""
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC images (N, H, W, C), got shape {x.shape}.")
    logits, features = [], []
    for start in range(0, x.shape[0], _EVAL_BATCH):
      chunk = x[start:start + _EVAL_BATCH]
      rows = chunk.shape[0]
      if rows < _EVAL_BATCH:  # pad to one fixed batch: one compile per image shape
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], _EVAL_BATCH - rows, 0)])
      lo, fe = _apply(self.module, self.params, chunk)
      logits.append(np.asarray(lo)[:rows])
      features.append(np.asarray(fe)[:rows])
    return np.concatenate(logits), np.concatenate(features)

  def logits(self, x) -> np.ndarray:
    return self.logits_and_features(x)[0]

  def features(self, x) -> np.ndarray:
    """The penultimate layer (N, feature_dim), float32."""
    return self.logits_and_features(x)[1]

  def probs(self, x) -> np.ndarray:
    """softmax(logits) (N, K), float64 (rows sum to 1 at the metrics' tolerance)."""
    logits = self.logits(x).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

  def accuracy(self, x, labels) -> float:
    return float(np.mean(self.logits(x).argmax(axis=1) == np.asarray(labels)))


def _labelled(name: str, dataset) -> tuple[np.ndarray, np.ndarray]:
  labels = getattr(dataset, "labels", None)
  if labels is None:
    raise ValueError(f"{name} must be an ImageDataset with labels (a classifier needs them).")
  x = np.asarray(dataset.to_model(), np.float32)
  labels = np.asarray(labels, np.int32)
  if x.ndim != 4 or labels.shape != (x.shape[0],):
    raise ValueError(f"{name} must hold images (N, H, W, C) and labels (N,), got {x.shape} and "
                     f"{labels.shape}.")
  return x, labels


def _num_classes(labels: np.ndarray, dataset) -> int:
  names = getattr(dataset, "class_names", None)
  return len(names) if names else int(labels.max()) + 1


def _shift(x: jax.Array, key: jax.Array, max_shift: int) -> jax.Array:
  """x (H, W, C) translated by integers in [-max_shift, max_shift] per axis, edge-padded."""
  if max_shift == 0:
    return x
  h, w, _ = x.shape
  padded = jnp.pad(x, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
  offset = jr.randint(key, (2,), 0, 2 * max_shift + 1)
  return jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), (h, w, x.shape[2]))


def _make_train_step(module: Classifier, optimizer, config: ClassifierConfig):
  """(state, x, y, key) -> (state, metrics): one AdamW step on the batch-mean cross-entropy.

  Batched rather than ``train.make_train_step``'s per-example vmap: for this conv net on XLA:CPU
  the vmapped step was measured 2x slower per step and 30% slower to compile. Keys as there:
  fold_in(key, step), one shift key per example.
  """

  def train_step(state: train_lib.TrainState, x, y, key):
    step_key = jr.fold_in(key, state.step)
    shift_keys = jr.split(jr.fold_in(step_key, 0), x.shape[0])
    x = jax.vmap(_shift, in_axes=(0, 0, None))(x, shift_keys, config.max_shift)

    def objective(params):
      logits = module.apply(params, x, train=True, rngs={"dropout": jr.fold_in(step_key, 1)})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, jnp.mean(jnp.argmax(logits, axis=1) == y)

    (loss, accuracy), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                          ema_params=train_lib.ema_update(state.ema_params, params,
                                                          config.ema_decay))
    return state, {"loss": loss, "accuracy": accuracy}

  return train_step


def train_classifier(train_set, test_set, config: ClassifierConfig = ClassifierConfig(), *,
                     log=None) -> TrainedClassifier:
  """Minimise the cross-entropy -log softmax(f(aug(x)))_y on the train split; report test accuracy.

  Fixed seed: the same data and config give the same parameters (on one backend).
  """
  x_train, y_train = _labelled("train_set", train_set)
  num_classes = _num_classes(y_train, train_set)
  module = config.module(num_classes)
  init_key, train_key, order_key = jr.split(jr.key(config.seed), 3)
  params = init_classifier(module, init_key, x_train[:1])  # on the host: nothing compiled

  optimizer = train_lib.make_optimizer(config.learning_rate, warmup_steps=config.warmup_steps,
                                       decay_steps=config.num_steps,
                                       weight_decay=config.weight_decay)
  state = train_lib.TrainState.create(params, optimizer)
  step_fn = jax.jit(_make_train_step(module, optimizer, config))
  rng = np.random.default_rng(np.asarray(jr.key_data(order_key)))  # batch order
  n, per_epoch = x_train.shape[0], max(x_train.shape[0] // config.batch_size, 1)
  start, cpu_start = time.perf_counter(), time.process_time()
  order = rng.permutation(n)
  for step in range(config.num_steps):
    if step % per_epoch == 0 and step:
      order = rng.permutation(n)  # a fresh pass over the data each epoch, full batches only
    idx = order[(step % per_epoch) * config.batch_size:][:config.batch_size]
    state, metrics = step_fn(state, x_train[idx], y_train[idx], train_key)
    if log is not None and (step + 1) % max(config.num_steps // 10, 1) == 0:
      log(f"step {step + 1}/{config.num_steps}: loss {float(metrics['loss']):.4f} "
          f"accuracy {float(metrics['accuracy']):.3f}")
  jax.block_until_ready(state.ema_params)
  seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
  trained = TrainedClassifier(module, state.ema_params, None)
  test_accuracy = None if test_set is None else trained.accuracy(*_labelled("test_set", test_set))
  info = {"train_seconds": seconds, "train_cpu_seconds": cpu_seconds, "num_classes": num_classes,
          "config": config.to_dict(), "train_accuracy": trained.accuracy(x_train, y_train)}
  return dataclasses.replace(trained, test_accuracy=test_accuracy, info=info)


def data_fingerprint(dataset) -> str:
  """sha256 of a split's images, labels and number of levels (first 16 hex digits)."""
  digest = hashlib.sha256()
  images = np.ascontiguousarray(dataset.images)
  header = (images.shape, str(images.dtype), getattr(dataset, "num_levels", None))
  digest.update(str(header).encode())
  digest.update(images.tobytes())
  if getattr(dataset, "labels", None) is not None:
    digest.update(np.ascontiguousarray(np.asarray(dataset.labels, np.int64)).tobytes())
  return digest.hexdigest()[:16]


def cache_key(name: str, train_set, config: ClassifierConfig) -> str:
  """``<name>-<hash of (config, train-split fingerprint)>``."""
  if not name or not all(c.isalnum() or c in "_-." for c in name):
    raise ValueError(f"name must be a non-empty dataset name of letters, digits, '_', '-' or '.', "
                     f"got {name!r}.")
  payload = json.dumps({"config": config.to_dict(), "data": data_fingerprint(train_set)},
                       sort_keys=True)
  return f"{name}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def cache_directory(cache_dir=None) -> pathlib.Path:
  """``cache_dir``, else $DIFFUSION_JAX_CLASSIFIER_CACHE, else ~/.cache/diffusion_jax/classifiers"""
  path = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE
  return pathlib.Path(path).expanduser()


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_bytes(data)
  os.replace(tmp, path)


def load_or_train(name: str, train_set, test_set, config: ClassifierConfig = ClassifierConfig(), *,
                  cache_dir=None, retrain: bool = False, log=None) -> TrainedClassifier:
  """The cached classifier for (name, train split, config), training and caching it if absent.

  ``info["cache"]`` says "hit" or "miss" and ``info["path"]`` where the parameters are.
  """
  directory = cache_directory(cache_dir)
  key = cache_key(name, train_set, config)
  params_path, meta_path = directory / f"{key}.msgpack", directory / f"{key}.json"
  if not retrain and meta_path.exists() and params_path.exists():
    meta = json.loads(meta_path.read_text())
    x_train, y_train = _labelled("train_set", train_set)
    module = config.module(meta["num_classes"])
    template = init_classifier(module, jr.key(0), x_train[:1])  # the tree's structure
    params = flax.serialization.from_bytes(template, params_path.read_bytes())
    return TrainedClassifier(module, params, meta["test_accuracy"],
                             {**meta, "cache": "hit", "path": str(params_path)})
  trained = train_classifier(train_set, test_set, config, log=log)
  directory.mkdir(parents=True, exist_ok=True)
  meta = {**trained.info, "name": name, "key": key, "test_accuracy": trained.test_accuracy,
          "data_fingerprint": data_fingerprint(train_set), "jax_version": jax.__version__}
  _atomic_write(params_path, flax.serialization.to_bytes(jax.device_get(trained.params)))
  _atomic_write(meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())
  return dataclasses.replace(trained, info={**meta, "cache": "miss", "path": str(params_path)})


def load_dataset(name: str, split: str):
  """``diffusion_jax.data.<name>(split)``: an ImageDataset (e.g. ``digits``)."""
  from diffusion_jax import data

  fn = getattr(data, name, None)
  if fn is None:
    raise ValueError(f"no image dataset named {name!r} in diffusion_jax.data.")
  return fn(split)


def main(argv) -> None:
  del argv
  from absl import flags

  f = flags.FLAGS
  train_set, test_set = load_dataset(f.dataset, "train"), load_dataset(f.dataset, "test")
  trained = load_or_train(f.dataset, train_set, test_set, cache_dir=f.cache_dir,
                          retrain=f.retrain, log=print)
  print(json.dumps({k: trained.info.get(k) for k in ("cache", "path", "train_seconds",
                                                      "train_accuracy")}
                   | {"test_accuracy": trained.test_accuracy}, indent=2))


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("dataset", "digits", "A dataset of diffusion_jax.data with labels.")
  flags.DEFINE_string("cache_dir", None, f"Cache directory (default: ${CACHE_ENV} or "
                      f"{DEFAULT_CACHE}).")
  flags.DEFINE_bool("retrain", False, "Train even when a cached classifier exists.")
  app.run(main)
