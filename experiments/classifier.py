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

  def module(self, num_classes: int, noise_conditional: bool = False) -> Classifier:
    return Classifier(num_classes=num_classes, channels=tuple(self.channels),
                      blocks_per_stage=self.blocks_per_stage, feature_dim=self.feature_dim,
                      num_groups=self.num_groups, dropout_rate=self.dropout_rate,
                      noise_conditional=noise_conditional)

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


def labelled(name: str, dataset) -> tuple[np.ndarray, np.ndarray]:
  labels = getattr(dataset, "labels", None)
  if labels is None:
    raise ValueError(f"{name} must be an ImageDataset with labels (a classifier needs them).")
  x = np.asarray(dataset.to_model(), np.float32)
  labels = np.asarray(labels, np.int32)
  if x.ndim != 4 or labels.shape != (x.shape[0],):
    raise ValueError(f"{name} must hold images (N, H, W, C) and labels (N,), got {x.shape} and "
                     f"{labels.shape}.")
  return x, labels


def num_classes_of(labels: np.ndarray, dataset) -> int:
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


def noised(sde, x0: jax.Array, key: jax.Array, t_min: float) -> tuple[jax.Array, jax.Array]:
  """(x_t, t): x_t = alpha(t) x0 + sigma(t) noise under ``sde``, t ~ U(t_min, T) per example."""
  t_key, noise_key = jr.split(key)
  t = jr.uniform(t_key, (x0.shape[0],), minval=t_min, maxval=sde.T)
  alpha, sigma = jax.vmap(sde.marginal)(t)
  shape = (-1,) + (1,) * (x0.ndim - 1)
  return alpha.reshape(shape) * x0 + sigma.reshape(shape) * jr.normal(noise_key, x0.shape), t


def _make_train_step(module: Classifier, optimizer, config: ClassifierConfig, sde=None,
                     t_min: float = 1e-3):
  """(state, x, y, key) -> (state, metrics): one AdamW step on the batch-mean cross-entropy.

  Batched rather than ``train.make_train_step``'s per-example vmap: for this conv net on XLA:CPU
  the vmapped step was measured 2x slower per step and 30% slower to compile. Keys as there:
  fold_in(key, step), one shift key per example. With ``sde`` (a noise-conditional module), each
  shifted image is noised to x_t at its own t ~ U(t_min, T) and the classifier is told t.
  """

  def train_step(state: train_lib.TrainState, x, y, key):
    step_key = jr.fold_in(key, state.step)
    shift_keys = jr.split(jr.fold_in(step_key, 0), x.shape[0])
    x = jax.vmap(_shift, in_axes=(0, 0, None))(x, shift_keys, config.max_shift)
    args = (x,) if sde is None else noised(sde, x, jr.fold_in(step_key, 2), t_min)

    def objective(params):
      logits = module.apply(params, *args, train=True, rngs={"dropout": jr.fold_in(step_key, 1)})
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
                     sde=None, t_min: float = 1e-3, log=None) -> TrainedClassifier:
  """Minimise the cross-entropy -log softmax(f(aug(x)))_y on the train split; report test accuracy.

  Fixed seed: the same data and config give the same parameters (on one backend). With ``sde``,
  the classifier is noise-conditional, p(y | x_t, t), trained on x_t for t ~ U(t_min, T) (classifier
  guidance's classifier); its test accuracy is then reported per noise level
  (``info["test_accuracy_by_t"]``, ``test_accuracy`` None).
  """
  x_train, y_train = labelled("train_set", train_set)
  num_classes = num_classes_of(y_train, train_set)
  module = config.module(num_classes, noise_conditional=sde is not None)
  init_key, train_key, order_key = jr.split(jr.key(config.seed), 3)
  t_example = None if sde is None else jnp.ones((1,))
  params = init_classifier(module, init_key, x_train[:1], t_example)  # on the host: nothing compiled

  optimizer = train_lib.make_optimizer(config.learning_rate, warmup_steps=config.warmup_steps,
                                       decay_steps=config.num_steps,
                                       weight_decay=config.weight_decay)
  state = train_lib.TrainState.create(params, optimizer)
  step_fn = jax.jit(_make_train_step(module, optimizer, config, sde, t_min))
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
  info = {"train_seconds": seconds, "train_cpu_seconds": cpu_seconds, "num_classes": num_classes,
          "config": config.to_dict()}
  if sde is not None:
    if test_set is not None:
      info["test_accuracy_by_t"] = accuracy_by_noise_level(
          module, jax.device_get(state.ema_params), sde, *labelled("test_set", test_set), t_min)
    return dataclasses.replace(trained, info=info)
  test_accuracy = None if test_set is None else trained.accuracy(*labelled("test_set", test_set))
  info["train_accuracy"] = trained.accuracy(x_train, y_train)
  return dataclasses.replace(trained, test_accuracy=test_accuracy, info=info)


# A noisy classifier's test accuracy is reported at these times (fractions of T): from nearly clean
# images to nearly pure noise, where it falls to chance.
REPORT_TIMES = (0.0, 0.25, 0.5, 0.75, 1.0)


def accuracy_by_noise_level(module: Classifier, params, sde, x, y, t_min: float, *,
                            seed: int = 0) -> dict:
  """A noise-conditional classifier's accuracy on (x, y) noised to t = max(f T, t_min) for each f of
  REPORT_TIMES (fixed noise draws): {"<t>": accuracy}."""
  apply = jax.jit(lambda p, v, t: module.apply(p, v, t))
  x, y = np.asarray(x, np.float32), np.asarray(y)
  out = {}
  for i, fraction in enumerate(REPORT_TIMES):
    t = max(fraction * sde.T, t_min)
    alpha, sigma = (float(v) for v in sde.marginal(jnp.asarray(t)))
    noise = np.asarray(jr.normal(jr.fold_in(jr.key(seed), i), x.shape))
    correct = 0
    for start in range(0, x.shape[0], _EVAL_BATCH):
      x_t = alpha * x[start:start + _EVAL_BATCH] + sigma * noise[start:start + _EVAL_BATCH]
      logits = apply(params, x_t, np.full((x_t.shape[0],), t, np.float32))
      correct += int(np.sum(np.asarray(logits).argmax(1) == y[start:start + _EVAL_BATCH]))
    out[f"{t:g}"] = correct / x.shape[0]
  return out


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


def atomic_write(path: pathlib.Path, data: bytes) -> None:
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
    x_train, y_train = labelled("train_set", train_set)
    module = config.module(meta["num_classes"])
    template = init_classifier(module, jr.key(0), x_train[:1])  # the tree's structure
    params = flax.serialization.from_bytes(template, params_path.read_bytes())
    return TrainedClassifier(module, params, meta["test_accuracy"],
                             {**meta, "cache": "hit", "path": str(params_path)})
  trained = train_classifier(train_set, test_set, config, log=log)
  directory.mkdir(parents=True, exist_ok=True)
  meta = {**trained.info, "name": name, "key": key, "test_accuracy": trained.test_accuracy,
          "data_fingerprint": data_fingerprint(train_set), "jax_version": jax.__version__}
  atomic_write(params_path, flax.serialization.to_bytes(jax.device_get(trained.params)))
  atomic_write(meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())
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
