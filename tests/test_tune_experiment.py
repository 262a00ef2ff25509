"""--mode=tune end to end, CPU-sized: a tiny digits model trained without the 9s, tuned by prompt
tuning, DreamBooth with prior preservation and a ControlNet for a few steps; the summary's
protocol numbers, the bitwise claims, a checkpoint holding the trainable part alone, --mode=sample
on a tuned workdir, and the config errors that stop a tuning run before any work.
"""

import json

import numpy as np
import pytest

from experiments import build_images, tune, validate
from experiments import train as train_loop


def _tiny(config, classifier_dir):
  m = config.model
  # One level, no attention (tests/test_tuning.py covers the tuners on two levels with attention).
  m.model_channels, m.channel_mult, m.num_res_blocks, m.attn_resolutions = 8, (1,), 1, ()
  s = config.sampling
  s.num_steps, s.num_samples, s.batch_size = 3, 32, 32
  e = config.eval
  e.floor_repeats, e.classifier_steps, e.classifier_dir = 2, 60, str(classifier_dir)
  e.bits_per_dim = False
  return config


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  from experiments.configs import digits_holdout

  classifiers = tmp_path_factory.mktemp("classifiers")
  workdir = tmp_path_factory.mktemp("holdout")
  config = _tiny(digits_holdout.get_config(), classifiers)
  t = config.training
  t.num_steps, t.batch_size, t.warmup_steps = 4, 16, 1
  t.log_every = t.checkpoint_every = 4
  t.sample_every = 0
  validate.validate(config, "train")
  summary = train_loop.train_and_evaluate(config, workdir)
  return workdir, classifiers, summary


def tune_config(method, base_run, **tune_fields):
  from experiments.configs import tune_digits

  workdir, classifiers, _ = base_run
  config = _tiny(tune_digits.get_config(method), classifiers)
  config.tune.base_workdir = str(workdir)
  config.tune.num_prior = 18
  for k, v in tune_fields.items():
    config.tune[k] = v
  t = config.training
  t.num_steps, t.batch_size, t.warmup_steps, t.log_every = 3, 8, 1, 3
  t.checkpoint_every = 3
  config.eval.tune_num_samples, config.eval.tune_num_forgetting = 16, 18
  return config


def test_the_base_run_never_saw_the_held_out_class(base_run):
  workdir, _, summary = base_run
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["holdout_classes"] == [9]
  # Its evaluation drew the classes 0-8 in turn and scored them against the test images of 0-8.
  with np.load(next((workdir / "samples").glob("*.npz"))) as f:
    assert f["labels"].max() == 8
  assert summary["reference_size"] == int(np.sum(
      build_images.build_image_data(tune_config("prompt", base_run))[1].labels != 9))


def _checkpoint_bytes(workdir):
  return sum(p.stat().st_size for p in (workdir / "checkpoints").rglob("*") if p.is_file())


def test_prompt_tuning_forgets_nothing_and_its_checkpoint_holds_the_vectors(base_run, tmp_path):
  from experiments import sampling

  root = tmp_path
  tmp_path = root / "prompt_k5"  # where the figure script looks for it
  config = tune_config("prompt", base_run)
  validate.validate(config, "tune")
  summary = tune.run(config, tmp_path)
  on_disk = json.loads((tmp_path / "eval" / "summary.json").read_text())
  assert on_disk == json.loads(json.dumps(summary))
  # One embedding row per residual block (P+): the one-level U-Net's stem block, middle pair and
  # two decoder blocks.
  assert summary["trainable_params"] == 5 * config.model.model_channels
  assert summary["init_bitwise_equal_other_classes"] is True
  # The classes 0-8: the tuned model's draws are the frozen model's, bit for bit.
  assert summary["other_bitwise_equal_fraction"] == 1.0
  assert summary["forgetting_fd"] == 0.0 and summary["forgetting_accuracy"] == 0.0
  for key in ("heldout_confident_fraction", "heldout_label_accuracy"):
    assert 0.0 <= summary[key] <= 1.0
  assert summary["heldout_fd"] > 0 and summary["heldout_fd_floor"] > 0
  # The frozen tree is not in the checkpoint: all of it (the vectors, their Adam moments and EMA,
  # orbax's metadata) is smaller than one float32 copy of the tiny base's weights (43 kB).
  frozen_bytes = 4 * summary["frozen_params"]
  assert _checkpoint_bytes(tmp_path) < frozen_bytes
  # --mode=sample on the tuned workdir: another sampler over the frozen base + the vector.
  config.sampling.sampler, config.sampling.num_steps = "ddim", 2
  sampled = sampling.run(config, tmp_path)
  assert 0.0 <= sampled["heldout_confident_fraction"] <= 1.0
  assert (tmp_path / "samples" / f"{sampling.output_stem(config, 3)}.png").is_file()
  # The figure reads the run back (it tunes only what is missing).
  proc = _figure(f"--root={root}", f"--base_workdir={base_run[0]}", "--methods=prompt",
                 "--shots=5", f"--out={root}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Tuning" not in proc.stdout and "prompt, K=5: label 9:" in proc.stdout
  payload = json.loads((root / "tuning_methods.json").read_text())
  assert payload["runs"][0]["heldout_confident_fraction"] == summary["heldout_confident_fraction"]
  assert (root / "tuning_methods.png").stat().st_size > 1000


def _figure(*args):
  from experiment_helpers import run_figure

  return run_figure("tuning_methods", *args)


def test_figure_help_lists_its_flags_and_refuses_a_missing_base(tmp_path):
  proc = _figure("--help")
  assert proc.returncode == 0
  for flag in ("--base_workdir", "--root", "--methods", "--shots", "--out"):
    assert f"  {flag}:" in proc.stdout, flag
  proc = _figure(f"--base_workdir={tmp_path / 'none'}", f"--out={tmp_path}")
  assert proc.returncode != 0 and "--base_workdir" in proc.stderr
  proc = _figure("--methods=prompt,nope", f"--out={tmp_path}")
  assert proc.returncode != 0 and "nope" in proc.stderr


def test_dreambooth_trains_every_weight_on_shots_and_the_frozen_models_prior(base_run, tmp_path):
  config = tune_config("dreambooth", base_run)
  summary = tune.run(config, tmp_path)
  assert summary["trainable_params"] == summary["frozen_params"]
  assert summary["init_bitwise_equal_other_classes"] is True
  workdir = base_run[0]
  assert len(list((workdir / tune.CACHE_DIR).glob("prior_*.npz"))) == 1
  # Fine-tuning moved the other classes' draws (a learning rate of 1e-4 for 3 steps still moves
  # every float).
  assert summary["other_bitwise_equal_fraction"] < 1.0
  for key in ("forgetting_fd", "forgetting_accuracy"):
    assert np.isfinite(summary[key])


def test_controlnet_starts_at_the_frozen_model_and_reports_control_matches(base_run, tmp_path):
  config = tune_config("controlnet", base_run)
  summary = tune.run(config, tmp_path)
  assert summary["init_bitwise_equal_other_classes"] is True
  assert 0.0 <= summary["match_fraction"] <= 1.0 and 0.0 <= summary["frozen_match_fraction"] <= 1.0
  assert summary["match_radius"] > 0
  assert summary["num_controls"] == 297  # one per test image
  with np.load(next((tmp_path / "samples").glob("*.npz"))) as f:
    assert f["cond_control"].shape == (297, 4, 4, 1)


def test_match_radius_is_the_percentile_of_nearest_pooled_distances():
  rng = np.random.default_rng(0)
  train_x = rng.uniform(-1, 1, (40, 8, 8, 1)).astype(np.float32)
  test_x = rng.uniform(-1, 1, (30, 8, 8, 1)).astype(np.float32)

  def pool(x):  # 2x2 block means, written as a reshape
    return x.reshape(len(x), 4, 2, 4, 2, 1).mean(axis=(2, 4)).reshape(len(x), -1)

  nearest = [min(np.sqrt(np.mean((pool(test_x)[i] - pool(train_x)[j]) ** 2)) for j in range(40))
             for i in range(30)]
  # float32 pooling in two orders
  expected = np.percentile(nearest, 95)
  assert tune.match_radius(train_x, test_x, 4) == pytest.approx(expected, rel=1e-5)


def test_tune_config_errors_name_the_field(base_run, tmp_path):
  config = tune_config("prompt", base_run, label=3)
  with pytest.raises(validate.ConfigError, match=r"config\.tune\.label"):
    validate.validate(config, "tune")
  config = tune_config("lora", base_run, base_workdir=str(tmp_path / "none"))
  with pytest.raises(validate.ConfigError, match=r"config\.tune\.base_workdir"):
    validate.validate(config, "tune")
  config = tune_config("film", base_run)
  config.model.model_channels = 16
  with pytest.raises(validate.ConfigError, match=r"config\.model\.model_channels differs"):
    validate.validate(config, "tune")
  with pytest.raises(validate.ConfigError, match="--mode=tune"):
    validate.validate(tune_config("film", base_run), "train")
  from experiments.configs import digits_holdout

  with pytest.raises(validate.ConfigError, match="tune section"):
    validate.validate(digits_holdout.get_config(), "tune")
  config = tune_config("prompt", base_run, num_shots=1000)
  # the digits' training split holds 149 nines
  with pytest.raises(validate.ConfigError, match=r"config\.tune\.num_shots must lie in \[1, 149"):
    validate.validate(config, "tune")
