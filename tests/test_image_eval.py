"""The evaluation classifier and the image evaluation (floors, class metrics, copy check, grids)."""

import dataclasses
import importlib
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.image
import numpy as np
import pytest

from diffusion_jax import metrics
from diffusion_jax.data import digits
from diffusion_jax.nets import Classifier, init_classifier
from experiment_helpers import REPO, subprocess_env
from experiments import classifier as classifier_lib
from experiments.evaluate import images as images_eval

shapes_lib = importlib.import_module("diffusion_jax.data.shapes")  # (data.shapes is the constructor)


def _digits():
  # Small parts of the fixed split keep the tests fast: 300 training and 100 test images.
  return digits("train").subset(slice(0, 300)), digits("test").subset(slice(0, 100))


_TINY = classifier_lib.ClassifierConfig(channels=(8,), feature_dim=16, num_groups=4,
                                        num_steps=300, batch_size=16, warmup_steps=5,
                                        learning_rate=1e-2, ema_decay=0.9, dropout_rate=0.0)


@pytest.fixture(scope="module")
def data():
  return _digits()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
  """One tiny classifier for the module, trained through the cache (a miss)."""
  cache = tmp_path_factory.mktemp("classifiers")
  out = classifier_lib.load_or_train("digits", *data, _TINY, cache_dir=cache)
  return out, cache


# --- the network ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 8, 1), (16, 16, 3), (28, 28, 1), (32, 32, 3)])
def test_classifier_shapes(shape):
  net = Classifier(num_classes=5, channels=(8, 16, 16), feature_dim=12, num_groups=4)
  x = jr.normal(jr.key(0), (2, *shape))
  params = jax.eval_shape(net.init, jr.key(1), x)
  # Traced, not compiled (compiling four conv nets costs a minute on this CPU); the trained
  # classifier below runs the same graph at 8x8.
  logits, features = jax.eval_shape(lambda p, x: net.apply(p, x, return_features=True), params, x)
  assert logits.shape == (2, 5) and features.shape == (2, 12)


def test_init_classifier_matches_flax_init():
  net = Classifier(num_classes=3, channels=(8, 16), feature_dim=16, num_groups=4,
                   noise_conditional=True, embed_dim=16)
  x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros(1)
  params = init_classifier(net, jr.key(0), x, t)
  reference = jax.eval_shape(net.init, jr.key(0), x, t)
  assert jax.tree.structure(params) == jax.tree.structure(reference)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == jax.tree.map(
      lambda a: (a.shape, a.dtype), reference)
  kernel = np.asarray(params["params"]["_ResBlock_1"]["Conv_0"]["kernel"])  # (3, 3, 8, 16)
  # lecun_normal: variance 1 / fan_in (72); 1152 draws give the std to about 2% (4% tolerance).
  assert np.std(kernel) == pytest.approx(np.sqrt(1 / 72), rel=0.08)
  assert np.abs(kernel).max() <= 2 * np.sqrt(1 / 72) / 0.87962566103423978 + 1e-6  # truncated
  again = init_classifier(net, jr.key(0), x, t)  # the same key, the same parameters
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), params, again)))


def test_noise_conditional_classifier():
  net = Classifier(num_classes=3, channels=(8,), feature_dim=8, num_groups=4,
                   noise_conditional=True, embed_dim=16)
  x = jr.normal(jr.key(0), (2, 8, 8, 1))
  params = init_classifier(net, jr.key(1), x, jnp.zeros(2))
  apply = jax.jit(net.apply)
  a = apply(params, x, jnp.array([0.1, 0.1]))
  b = apply(params, x, jnp.array([0.1, 0.9]))
  np.testing.assert_allclose(a[0], b[0], rtol=1e-6)  # example 0 saw the same t
  assert not np.allclose(a[1], b[1])  # the noise level reaches the logits
  with pytest.raises(ValueError, match="needs t of shape"):
    jax.eval_shape(net.apply, params, x)
  plain = Classifier(num_classes=3, channels=(8,))
  with pytest.raises(ValueError, match="noise_conditional=False"):
    jax.eval_shape(plain.init, jr.key(0), x[:1], jnp.zeros(1))
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(plain.init, jr.key(0), x[0])


# --- training and the cache ----------------------------------------------------------------------

def test_trained_classifier_and_cache(trained, data, tmp_path, monkeypatch):
  clf, cache = trained
  assert clf.info["cache"] == "miss"
  # 300 steps of batch 16 on 300 digits (measured 0.64): far above chance (0.1), short of converged.
  assert clf.test_accuracy > 0.4
  assert clf.test_accuracy == pytest.approx(clf.accuracy(data[1].to_model(), data[1].labels))
  again = classifier_lib.load_or_train("digits", *data, _TINY, cache_dir=cache)
  assert again.info["cache"] == "hit" and again.test_accuracy == clf.test_accuracy
  x = data[1].to_model()[:5]
  np.testing.assert_array_equal(again.logits(x), clf.logits(x))  # the stored parameters, exactly
  # Batched like every network here: an example alone gives its row (GroupNorm is per example).
  np.testing.assert_allclose(clf.logits(x[2:3]), clf.logits(x)[2:3], rtol=1e-5, atol=1e-5)
  meta = json.loads((cache / f"{again.info['key']}.json").read_text())
  assert meta["config"]["channels"] == [8] and meta["name"] == "digits"
  probs = clf.probs(x)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-12)  # float64 softmax
  # The key changes with the recipe and with the data; the environment variable moves the cache.
  other = dataclasses.replace(_TINY, seed=1)
  assert classifier_lib.cache_key("digits", data[0], other) != again.info["key"]
  shifted = dataclasses.replace(data[0], labels=np.roll(data[0].labels, 1))
  assert classifier_lib.cache_key("digits", shifted, _TINY) != again.info["key"]
  monkeypatch.setenv(classifier_lib.CACHE_ENV, str(tmp_path))
  assert classifier_lib.cache_directory() == tmp_path
  with pytest.raises(ValueError, match="name must be"):
    classifier_lib.cache_key("../x", data[0], _TINY)


# --- the evaluation ------------------------------------------------------------------------------

REQUIRED = ("fd_pixels", "fd_pixels_floor", "fd_pixels_floor_std", "fd_features",
            "fd_features_floor", "fd_features_floor_std", "kid", "kid_floor", "precision",
            "recall", "confident_fraction", "class_entropy_bits", "class_histogram",
            "copy_fraction", "classifier_test_accuracy", "num_samples", "nfe_mean",
            "num_nonfinite")


def _train_draw(train, seed=1):
  """A 'model' that returns random training images: the floor's own distribution."""
  def draw(num, cond):
    idx = np.random.default_rng(seed).choice(train.shape[0], num, replace=False)
    return {"x": train[idx], "nfe": np.full(num, 7)}
  return draw


def test_evaluate_against_direct_computation(trained, data):
  clf, _ = trained
  train_set, test_set = data
  train, test = train_set.to_model(), test_set.to_model()
  n, splits = 100, 4
  fns = images_eval.feature_strategies(clf)
  summary, plot = images_eval.evaluate(_train_draw(train), train_set, test_set, feature_fns=fns,
                                       classifier=clf, num_samples=n, num_floor_splits=splits,
                                       kid_subsets=5, seed=3)
  assert set(REQUIRED) <= set(summary)
  json.dumps(summary)  # the summary is plain JSON
  x = images_eval.to_cell_centres(train[np.random.default_rng(1).choice(300, n, replace=False)], 17)
  flat = lambda a: a.reshape(a.shape[0], -1)
  # The same numbers from the metrics directly: FD of the samples vs the test set, and the floor
  # over subsets drawn by default_rng(seed).choice of the same size n (float64 on both sides).
  assert summary["fd_pixels"] == pytest.approx(metrics.fd(flat(x), flat(test)), rel=1e-10)
  rng = np.random.default_rng(3)
  floors = [metrics.fd(flat(train[rng.choice(300, n, replace=False)]), flat(test))
            for _ in range(splits)]
  assert summary["fd_pixels_floor"] == pytest.approx(np.mean(floors), rel=1e-10)
  assert summary["fd_pixels_floor_std"] == pytest.approx(np.std(floors, ddof=1), rel=1e-8)
  assert summary["fd_features"] == pytest.approx(
      metrics.fd(clf.features(x), clf.features(test)), rel=1e-6)  # float32 features
  assert summary["confident_fraction"] == metrics.confident_fraction(clf.probs(x))
  assert summary["class_histogram"] == metrics.class_histogram(clf.probs(x)).tolist()
  assert summary["nfe_mean"] == 7 and summary["num_nonfinite"] == 0
  # Training images drawn like the floor's: the model's FD lies inside the floor's spread (4 std,
  # or 20% where 4 splits give a small std), and every sample is its own nearest training image.
  for space in ("pixels", "features"):
    lo = summary[f"fd_{space}_floor"] - max(4 * summary[f"fd_{space}_floor_std"],
                                            0.2 * summary[f"fd_{space}_floor"])
    hi = summary[f"fd_{space}_floor"] + max(4 * summary[f"fd_{space}_floor_std"],
                                            0.2 * summary[f"fd_{space}_floor"])
    assert lo <= summary[f"fd_{space}"] <= hi
  assert summary["copy_fraction"] == 1.0
  # Held-out images against a threshold from other held-out images: 5% by construction, give or
  # take the binomial spread of 50 images (sqrt(0.05 * 0.95 / 50) = 0.03) over 4 splits.
  assert abs(summary["copy_fraction_floor"] - 0.05) < 0.06
  for key in ("confident_fraction", "class_entropy_bits", "classifier_score"):
    assert summary[f"{key}_floor_std"] >= 0 and np.isfinite(summary[f"{key}_floor"])
  assert summary["class_entropy_bits_floor"] <= np.log2(10)
  assert summary["precision"] == pytest.approx(summary["precision_features"])
  np.testing.assert_array_equal(plot["samples"], x)


def test_evaluate_noise_nonfinite_and_conditional(trained, data):
  clf, _ = trained
  train_set, test_set = data
  calls = []

  def noise(num, cond):
    calls.append(cond)
    x = np.random.default_rng(0).uniform(-1, 1, (num, 8, 8, 1)).astype(np.float32)
    x[:3] = np.nan
    return {"x": x, "nfe": np.arange(num)}

  class FakeInception:  # the inception strategy's interface: features, and logits for the IS
    projection = np.random.default_rng(1).normal(size=(64, 6))
    def __call__(self, x):
      return x.reshape(x.shape[0], -1) @ self.projection
    def logits(self, x):
      return self(x)[:, :4]

  fns = {**images_eval.feature_strategies(clf), "inception": FakeInception()}
  summary, plot = images_eval.evaluate(noise, train_set, test_set, feature_fns=fns,
                                       classifier=clf, num_samples=40, num_floor_splits=3,
                                       num_classes=10, kid_subsets=3)
  np.testing.assert_array_equal(calls[0], np.arange(40) % 10)  # labels 0..K-1 in turn
  assert summary["num_nonfinite"] == 3 and summary["num_scored"] == 37
  np.testing.assert_array_equal(plot["labels"], (np.arange(40) % 10)[3:])
  # Uniform noise is far from digits in pixels: many floors away, and nothing is a copy.
  assert summary["fd_pixels"] > summary["fd_pixels_floor"] + 10 * summary["fd_pixels_floor_std"]
  assert summary["fd_pixels_ratio"] > 2 and summary["copy_fraction"] == 0.0
  assert 0.0 <= summary["label_accuracy"] <= 1.0
  assert summary["primary_features"] == "inception" and summary["kid"] == summary["kid_inception"]
  assert 1.0 <= summary["inception_score"] <= 4.0  # IS lies in [1, K] for K = 4 logits
  with pytest.raises(ValueError, match="draw must return x of shape"):
    images_eval.evaluate(lambda n, c: {"x": np.zeros((n, 4, 4, 1)), "nfe": 1}, train_set,
                         test_set, feature_fns={"pixels": images_eval.pixel_features},
                         num_samples=10)
  with pytest.raises(ValueError, match="feature_fns"):
    images_eval.evaluate(noise, train_set, test_set, feature_fns={}, num_samples=10)


def test_cell_centres():
  x = np.array([-1.5, -1.0, -0.99, 0.0, 0.999, 1.0, 2.0])
  levels = np.clip(np.floor((x + 1) / 2 * 17), 0, 16)
  np.testing.assert_allclose(images_eval.to_cell_centres(x, 17), -1 + 2 * (levels + 0.5) / 17,
                             rtol=1e-6)  # float32 output


def test_grids(tmp_path, data):
  x = data[0].to_model()[:23]
  images_eval.save_grid(tmp_path / "g.png", x, title="samples")
  assert matplotlib.image.imread(tmp_path / "g.png").ndim == 3
  images_eval.save_class_grid(tmp_path / "c.png", x, data[0].labels[:23], title="per class",
                              per_class=4)
  assert (tmp_path / "c.png").stat().st_size > 0
  rgb = np.random.default_rng(0).uniform(-1, 1, (5, 16, 16, 3))
  images_eval.save_grid(tmp_path / "rgb.png", rgb, title="rgb", ncols=5)
  with pytest.raises(ValueError, match="NHWC"):
    images_eval.save_grid(tmp_path / "bad.png", x[0], title="bad")


# --- the shapes' factor readers ------------------------------------------------------------------

class _OracleReader:
  """A reader that knows every image of the data: one-hot probabilities of its true label."""

  def __init__(self, images, labels, num_classes):
    self.test_accuracy = 1.0
    self._num_classes = num_classes
    self._labels = {}
    for image, label in zip(images, labels):
      self._labels.setdefault(image.tobytes(), label)

  def probs(self, x):
    from diffusion_jax.data import model_to_levels

    levels = np.asarray(model_to_levels(np.asarray(x), 256), np.uint8)
    out = np.zeros((len(levels), self._num_classes))
    for i, image in enumerate(levels):
      out[i, self._labels[image.tobytes()]] = 1.0
    return out


def test_factor_scores_read_what_oracle_readers_know(tmp_path):
  """With readers that know the data, the scores of chosen test images are exact counts: the red
  images read as all red (TV to the data = 1 - the data's red share), their shapes and positions
  as counted, rotation only where the shape is no circle, every one valid."""
  from diffusion_jax.data import shapes
  from experiments.evaluate import factors

  train, test = shapes(400, split="train"), shapes(300, split="test")
  images = np.concatenate([train.images, test.images])
  truth = {k: np.concatenate([train.factors[k], test.factors[k]]) for k in train.factors}
  truth["rotation"] = np.maximum(shapes_lib.visible_rotation(truth["shape"], truth["rotation"]), 0)
  readers = {f: _OracleReader(images, truth[f], len(factors.reader_dataset(test, f).class_names))
             for f in factors.FACTORS}
  red = np.flatnonzero(test.factors["colour"] == 0)
  scores = factors.factor_scores(test.to_model()[red], train, test, readers, num_floor_splits=3)
  colour = scores["factors"]["colour"]
  np.testing.assert_allclose(colour["histogram"], np.eye(6)[0])
  data_share = np.bincount(test.factors["colour"], minlength=6) / len(test)
  np.testing.assert_allclose(colour["data_histogram"], data_share)
  np.testing.assert_allclose(colour["true_histogram"], data_share)
  assert colour["tv"] == pytest.approx(1 - data_share[0])
  for f in ("shape", "scale", "x", "y"):
    k = len(scores["factors"][f]["classes"])
    np.testing.assert_allclose(scores["factors"][f]["histogram"],
                               np.bincount(test.factors[f][red], minlength=k) / len(red))
  visible = shapes_lib.visible_rotation(test.factors["shape"][red], test.factors["rotation"][red])
  np.testing.assert_allclose(scores["factors"]["rotation"]["histogram"],
                             np.bincount(visible[visible >= 0], minlength=13) / (visible >= 0).sum())
  assert scores["valid_fraction"] == 1.0 and scores["valid_fraction_floor"] == 1.0
  # The floor compares training subsets with the same test set: near zero, never negative.
  assert 0 < colour["tv_floor"] < colour["tv"]
  # The figure script draws them from the summary JSON, and refuses a summary without factors.
  summary = tmp_path / "summary.json"
  summary.write_text(json.dumps({"num_scored": len(red), **scores}))
  script = [sys.executable, str(REPO / "experiments" / "figures" / "shape_factors.py")]
  proc = subprocess.run([*script, f"--summary={summary}", f"--out={tmp_path}"], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "shape_factors.png").stat().st_size > 1000
  drawn = json.loads((tmp_path / "shape_factors.json").read_text())
  assert drawn["factors"]["colour"]["tv"] == colour["tv"]
  summary.write_text(json.dumps({"num_scored": 3}))
  proc = subprocess.run([*script, f"--summary={summary}", f"--out={tmp_path}"], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "has no 'factors' entry" in proc.stderr
  with pytest.raises(ValueError, match="factor_readers must hold a reader for each"):
    factors.factor_scores(test.to_model()[red], train, test, {"shape": readers["shape"]})
  with pytest.raises(ValueError, match="must be a shapes ImageDataset with factors"):
    factors.factor_scores(test.to_model()[red], _digits()[0], test, readers)


def test_shapes_evaluation_trains_a_reader_per_factor(tmp_path, monkeypatch):
  """The shapes evaluation end to end on real (tiny) readers: one cached classifier per factor,
  colour on RGB, the rest on the coverage, x and y without shifts; the test set scored as if it
  were a model's samples lies at its own level."""
  from experiments import build_images
  from experiments.configs import shapes16
  from experiments.evaluate import factors

  config = shapes16.get_config()
  config.data.num_train, config.data.num_test = 300, 100
  config.sampling.num_samples, config.eval.floor_repeats = 100, 2
  config.eval.classifier_dir = str(tmp_path)
  tiny = dataclasses.replace(_TINY, num_steps=60)
  monkeypatch.setattr(build_images, "_classifier_config", lambda config: tiny)
  train, test = build_images.build_image_data(config)
  draw = lambda num, cond: {"x": test.to_model()[:num], "nfe": np.zeros(num)}
  summary, _ = build_images.evaluate_samples(config, draw, train, test, 0)
  cached = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.glob("*.json"))
  assert cached == sorted(f"shapes-{f}" for f in factors.FACTORS)  # the shape reader: one entry
  readers = factors.readers("shapes", train, test, tiny, cache_dir=tmp_path)
  for f, reader in readers.items():
    assert reader.info["cache"] == "hit"
    assert reader.info["input"] == ("rgb" if f == "colour" else "coverage")
    assert reader.info["config"]["max_shift"] == (0 if f in ("x", "y") else tiny.max_shift)
  # The colour is a linear read of the channel means: even 60 tiny steps learn it.
  assert summary["factors"]["colour"]["reader_test_accuracy"] >= 0.9
  assert summary["classifier_test_accuracy"] == readers["shape"].test_accuracy
  for f in factors.FACTORS:
    entry = summary["factors"][f]
    np.testing.assert_allclose(entry["histogram"], entry["data_histogram"])  # the same images
    # (a 60-step reader may read one class for every image, so its floor can be zero)
    assert entry["tv"] == 0.0 and entry["tv_floor"] >= 0.0
  assert 0.0 <= summary["valid_fraction"] <= 1.0
