"""Batch sources: the grain source reads each process's rows of a per-epoch shuffled dataset, its
iterator state restores exactly, and a run killed with SIGKILL mid-epoch and restarted ends with
the same parameters and metrics as an uninterrupted one (bitwise on CPU)."""

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from diffusion_jax import data
from experiments import input_pipeline, run
from experiments.configs import toy2d_tiny
from experiment_helpers import REPO, assert_trees_equal, subprocess_env


def _ids(n):
  return input_pipeline.ArraySource({"x0": np.arange(n, dtype=np.float32)[:, None],
                                     "label": np.arange(n, dtype=np.int32)})


def test_local_batches_are_rows_of_a_reshuffled_epoch_and_split_by_process():
  n, batch = 12, 4  # an epoch is 3 steps
  whole = input_pipeline.local_batches(_ids(n), batch_size=batch, seed=3, start=0, stop=batch)
  epochs = [np.concatenate([whole[s]["label"] for s in range(3 * e, 3 * e + 3)]) for e in range(3)]
  for labels in epochs:  # every example exactly once per epoch
    np.testing.assert_array_equal(np.sort(labels), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
  # Two "processes" holding rows [0, 1) and [1, 4) see exactly their rows of the same batches.
  lo = input_pipeline.local_batches(_ids(n), batch_size=batch, seed=3, start=0, stop=1)
  hi = input_pipeline.local_batches(_ids(n), batch_size=batch, seed=3, start=1, stop=4)
  for s in range(7):
    np.testing.assert_array_equal(np.concatenate([lo[s]["label"], hi[s]["label"]]),
                                  whole[s]["label"])
  # Another seed, another order.
  other = input_pipeline.local_batches(_ids(n), batch_size=batch, seed=4, start=0, stop=batch)
  assert not np.array_equal(other[0]["label"], whole[0]["label"])


def test_grain_source_state_restores_to_the_same_next_batches():
  mesh = run.make_mesh()
  source = input_pipeline.GrainSource(_ids(40), batch_size=16, seed=0, mesh=mesh)
  for step in range(3):
    source.batch(step)
  state = source.checkpoint_item.get_state()
  want = [np.asarray(source.batch(s)["label"]) for s in (3, 4)]
  fresh = input_pipeline.GrainSource(_ids(40), batch_size=16, seed=0, mesh=mesh)
  fresh.checkpoint_item.set_state(state)
  fresh.resume(3)
  for s, w in zip((3, 4), want):
    np.testing.assert_array_equal(fresh.batch(s)["label"], w)
  with pytest.raises(RuntimeError, match="in order: asked for step 9"):
    fresh.batch(9)


OVERRIDES = ["--config.data.source=array", "--config.data.num_examples=40",
             "--config.training.num_steps=8"]

# Runs experiments.main, but SIGKILLs itself when asked for the batch of step 5: after checkpoint
# 4 has been committed (40 examples, batches of 64 rows: step 4 ends inside the seventh epoch).
KILLED_AT_STEP_5 = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    from absl import app
    from experiments import input_pipeline, main

    workdir = pathlib.Path(sys.argv[2].split("=", 1)[1])
    batch = input_pipeline.GrainSource.batch

    def batch_or_die(self, step):
      if step == 5:
        for _ in range(600):  # the save is asynchronous: wait until 4 is committed
          if (workdir / "checkpoints" / "4").is_dir():
            break
          time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)
      return batch(self, step)

    input_pipeline.GrainSource.batch = batch_or_die
    app.run(main.main, argv=["main", *sys.argv[1:]])
""")


def _records(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(ln).items() if k != "steps_per_sec"} for ln in lines]


def test_sigkilled_grain_run_restarts_to_the_same_result(tmp_path):
  config = toy2d_tiny.get_config()
  config.data.source, config.data.num_examples, config.training.num_steps = "array", 40, 8
  config.training.batch_size = 64
  flags = ["--config=experiments/configs/toy2d_tiny.py", f"--workdir={tmp_path / 'killed'}",
           *OVERRIDES, "--config.training.batch_size=64"]
  killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP_5, *flags], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL
  steps = sorted(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps[-1] == 4, steps
  # The restart reads only what the killed process left on disk (checkpoint 4 with its grain
  # iterator state, metrics.jsonl), so it runs in this process: a second child would compile
  # and evaluate the same programs again (tests/test_experiment.py runs experiments.main).
  run.train(config, tmp_path / "killed")

  reference = run.train(config, tmp_path / "uninterrupted")
  _, _, final = run.restore_model(config, tmp_path / "killed")
  assert int(final.step) == 8
  assert_trees_equal(final, jax.device_get(reference))  # bitwise, optimiser state included
  # The same metrics at every logged step (the records the killed run wrote past its checkpoint
  # were dropped on restart), so the resumed run saw exactly the batches it would have seen.
  assert _records(tmp_path / "killed") == _records(tmp_path / "uninterrupted")


def test_tfds_source_through_grain_without_network():
  """A TFDS data source (mocked: tests never reach the network) served by the grain source:
  uint8 pixels k at the cell centres -1 + (2k + 1)/256, labels int32, one epoch holds every
  record once."""
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    records = input_pipeline.tfds_source("mnist", split="train")
    raw = tfds.data_source("mnist", split="train")
    pixels = np.stack([np.asarray(raw[i]["image"]) for i in range(16)])
    source = input_pipeline.GrainSource(records, batch_size=8, seed=0, mesh=run.make_mesh())
    batches = [source.batch(s) for s in range(2)]
  x0 = np.concatenate([np.asarray(b["x0"]) for b in batches])
  assert x0.shape == (16, 28, 28, 1) and x0.dtype == np.float32
  # The epoch is a permutation of the records: compare the sorted pixel sums, mapped by hand.
  np.testing.assert_allclose(np.sort(x0.reshape(16, -1).sum(1)),
                             np.sort(((2 * pixels.astype(np.float64) + 1) / 256 - 1).reshape(16, -1).sum(1)),
                             rtol=1e-5)  # float32 sums of 784 values
  assert batches[0]["label"].dtype == np.int32


def _levels_dataset(n=24, h=3, w=4):
  """Each image is a distinct ramp of levels: rows of width w, offset by the example index."""
  levels = (np.arange(n)[:, None, None, None] * 5 + np.arange(w)[None, None, :, None]
            + np.zeros((1, h, 1, 2), np.int64)) % 256
  return data.ImageDataset(images=levels.astype(np.uint8), num_levels=256,
                           labels=np.arange(n) % 3, class_names=("a", "b", "c"))


def test_image_source_serves_cell_centres_with_flips_from_seed_and_example():
  dataset = _levels_dataset()
  source = input_pipeline.image_source(dataset)
  element = source[5]
  assert element["x0"].dtype == np.float32 and element["x0"].shape == (3, 4, 2)
  np.testing.assert_array_equal(element["x0"], data.levels_to_model(dataset.images[5], 256))
  assert element["label"] == 2 and element["label"].dtype == np.int32
  assert "label" not in input_pipeline.image_source(dataset, labels=False)[0]
  tagged = input_pipeline.image_source(dataset, extra={"tag": np.arange(24) * 10})[5]
  assert tagged["tag"] == 50 and tagged["label"] == 2
  with pytest.raises(ValueError, match="reserved names"):
    input_pipeline.image_source(dataset, extra={"x0": np.zeros(24)})

  batch, rows = 8, 40
  plain = input_pipeline.local_batches(source, batch_size=batch, seed=7, start=0, stop=batch)
  flipped = input_pipeline.local_batches(source, batch_size=batch, seed=7, start=0, stop=batch,
                                         random_flip=True)
  num_flipped = 0
  for s in range(rows // batch):
    a, b = plain[s], flipped[s]
    np.testing.assert_array_equal(a["label"], b["label"])  # same examples in the same order
    for r in range(batch):
      want = input_pipeline.flip_bit(7, s * batch + r)
      np.testing.assert_array_equal(b["x0"][r], a["x0"][r][:, ::-1] if want else a["x0"][r])
      num_flipped += want
  assert 10 <= num_flipped <= 30  # Binomial(40, 1/2): mean 20, sd 3.2, so +-3 sd
  # The flips of a process holding rows [3, 8) are those rows of the whole batch.
  part = input_pipeline.local_batches(source, batch_size=batch, seed=7, start=3, stop=8,
                                      random_flip=True)
  for s in range(3):
    np.testing.assert_array_equal(part[s]["x0"], flipped[s]["x0"][3:])
  # The coin is fair over many examples and seeds decorrelate it.
  bits = np.array([input_pipeline.flip_bit(0, g) for g in range(4000)])
  assert abs(bits.mean() - 0.5) < 0.04  # sd 0.008: 5 sd
  other = np.array([input_pipeline.flip_bit(1, g) for g in range(4000)])
  assert abs((bits == other).mean() - 0.5) < 0.04  # independent coins agree half the time


def test_image_grain_source_with_flips_resumes_to_the_same_batches():
  mesh = run.make_mesh()
  make = lambda: input_pipeline.GrainSource(input_pipeline.image_source(_levels_dataset()),
                                            batch_size=8, seed=1, mesh=mesh, random_flip=True)
  source = make()
  for step in range(4):  # 32 examples: into the second epoch of 24
    source.batch(step)
  state = source.checkpoint_item.get_state()
  want = [source.batch(s) for s in (4, 5, 6)]
  fresh = make()
  fresh.checkpoint_item.set_state(state)
  fresh.resume(4)
  for s, w in zip((4, 5, 6), want):
    got = fresh.batch(s)
    for k in ("x0", "label"):
      np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(w[k]))
  assert want[0]["x0"].shape == (8, 3, 4, 2)


@pytest.mark.parametrize("name", sorted(input_pipeline.TFDS_IMAGES))
def test_tfds_image_sources_without_network(name):
  """Each named TFDS image dataset (mocked records) arrives in the shape its spec states, at the
  cell centres of its processed uint8 pixels; celeb_a is centre-cropped and resized as score_sde."""
  tfds = pytest.importorskip("tensorflow_datasets")
  spec = input_pipeline.TFDS_IMAGES[name]
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    source = input_pipeline.tfds_image_source(name, split="train")
    raw = tfds.data_source(name, split="train")
    examples = [source[i] for i in range(2)]
    pixels = [np.asarray(raw[i]["image"]) for i in range(2)]
  for example, image in zip(examples, pixels):
    assert example["x0"].shape == spec.shape and example["x0"].dtype == np.float32
    if spec.crop is not None:
      image = data.center_crop(image, spec.crop)
      image = np.clip(np.round(data.resize(image, spec.resolution)), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(example["x0"], (2 * image.astype(np.float64) + 1) / 256 - 1,
                               atol=1e-6)  # float32 rounding
    if spec.num_classes:
      assert example["label"].dtype == np.int32 and 0 <= example["label"] < spec.num_classes
    else:
      assert "label" not in example


def test_tfds_not_prepared_is_a_clear_error_and_never_downloads(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError, match=r"'mnist'.*not prepared in .*empty.*tfds build mnist "
                     r"--file_format=array_record.*download=True"):
    input_pipeline.tfds_image_source("mnist", split="train", data_dir=str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="name must be one of"):
    input_pipeline.tfds_image_source("imagenet2012", split="train")


def test_digits_through_the_grain_source_are_cell_centres_of_17_levels():
  digits = data.digits("train")
  source = input_pipeline.GrainSource(input_pipeline.image_source(digits), batch_size=8, seed=0,
                                      mesh=run.make_mesh(), random_flip=True)
  x0 = np.asarray(source.batch(0)["x0"])
  assert x0.shape == (8, 8, 8, 1) and x0.dtype == np.float32
  levels = data.model_to_levels(x0, 17)
  np.testing.assert_allclose(x0, data.levels_to_model(levels, 17), rtol=0, atol=0)  # centres only
  # Each served image is a training image or its mirror.
  pool = {im.tobytes() for im in digits.images.astype(np.int32)}
  pool |= {im[:, ::-1].tobytes() for im in digits.images.astype(np.int32)}
  assert all(np.ascontiguousarray(im).tobytes() in pool for im in levels)


def _local_builder_class():
  """A TFDS builder of 10 constant 4x4 images (Tensor features: array_record, no TensorFlow),
  registered once under the name "diffusion_jax_test_images"."""
  tfds = pytest.importorskip("tensorflow_datasets")
  if hasattr(_local_builder_class, "cls"):
    return _local_builder_class.cls

  class DiffusionJaxTestImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(4, 4, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(10)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"image": np.full((4, 4, 1), 20 * i, np.uint8), "label": i % 3}

  _local_builder_class.cls = DiffusionJaxTestImages
  return DiffusionJaxTestImages


def test_tfds_source_reads_a_prepared_data_dir_and_prepares_only_when_asked(tmp_path):
  """Real files, no mock: a data_dir without the dataset is a clear error with download=False,
  download=True prepares it (a local builder: nothing leaves the machine), then it reads."""
  _local_builder_class()
  name, data_dir = "diffusion_jax_test_images", str(tmp_path)
  with pytest.raises(FileNotFoundError, match=f"'{name}'.*not prepared in {data_dir}"):
    input_pipeline.tfds_source(name, split="train", data_dir=data_dir)
  records = input_pipeline.tfds_source(name, split="train", data_dir=data_dir, download=True)
  examples = [records[i] for i in range(len(records))]
  assert len(examples) == 10
  levels = [int(round((e["x0"][0, 0, 0] + 1) * 128 - 0.5)) for e in examples]  # invert the centres
  assert sorted(levels) == [20 * i for i in range(10)]
  for e, k in zip(examples, levels):
    np.testing.assert_array_equal(e["x0"], np.full((4, 4, 1), (2 * k + 1) / 256 - 1, np.float32))
    assert e["label"] == (k // 20) % 3 and e["label"].dtype == np.int32
  again = input_pipeline.tfds_source(name, split="train", data_dir=data_dir)  # prepared: reads
  np.testing.assert_array_equal(again[0]["x0"], examples[0]["x0"])
