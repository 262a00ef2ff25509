"""The baseline families through the runner (experiments/build_baselines.py): the time budget, a
resumed and a reloaded run, --mode=sample, each family's train step and sampler, its bits/dim
against the library's, and the lecture table's command (experiments/figures/lecture_table.py) on
mocked MNIST, read back on a second run. Networks are the smallest of each kind:
tests/test_baselines.py checks the families' mathematics against exact answers.
"""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from experiment_helpers import REPO, assert_trees_equal, subprocess_env

from experiments import build, build_images, sampling, sharding, validate
from experiments import train as train_loop
from experiments import workdir as workdir_lib
from experiments.configs import baselines

TINY = {
    "vae": {"model.latent_dim": 2, "model.encoder_features": (4, 4),
            "model.decoder_features": (4, 4), "model.iwae_samples": 4},
    "pixelcnn": {"model.features": 4, "model.num_blocks": 1, "model.num_mixtures": 2},
    "flow": {"model.flow_steps": 1, "model.hidden": 4, "model.eval_dequantizations": 2},
    "gan": {"model.latent_dim": 2, "model.generator_features": (4, 4),
            "model.discriminator_features": (4, 4)},
}
SMALL = {"training.batch_size": 8, "training.log_every": 2, "training.checkpoint_every": 2,
         "training.sample_every": 0, "sampling.num_samples": 16, "sampling.batch_size": 16,
         "eval.floor_repeats": 2, "eval.classifier_steps": 60, "likelihood.num_samples": 4,
         "likelihood.batch_size": 4}


def _set(config, path, value):
  *sections, field = path.split(".")
  target = config
  for s in sections:
    target = target[s]
  target[field] = value


def tiny_config(family, classifier_dir, data="digits"):
  config = baselines.get_config(f"{family},{data}")
  for path, value in {**SMALL, **TINY[family]}.items():
    _set(config, path, value)
  config.eval.classifier_dir = str(classifier_dir)
  return config


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("classifiers")


def test_a_time_budget_stops_the_run_a_rerun_loads_it_and_a_larger_one_resumes(tmp_path,
                                                                                classifier_dir):
  config = tiny_config("vae", classifier_dir)
  config.training.num_steps = 1_000
  config.training.time_budget_s = 1e-3  # used up by the first step (its compilation)
  validate.validate(config, "train")
  mesh, method = sharding.make_mesh(), build.build_method(config)
  state = train_loop.train(config, tmp_path, mesh=mesh, method=method)
  # Stopped after the first step (one process reads the clock every step), checkpointed there,
  # its time kept.
  assert int(state.step) == 1
  assert workdir_lib.checkpoint_steps(tmp_path) == [1]
  spent = train_loop.read_train_time(tmp_path)
  assert list(spent) == [1] and spent[1] > 1e-3
  # Started again with the same budget: read back, not trained further.
  again = train_loop.train(config, tmp_path, mesh=mesh, method=method)
  assert int(again.step) == 1
  assert_trees_equal(again.params, state.params)
  assert train_loop.read_train_time(tmp_path) == spent
  # A larger budget resumes from step 1, and the clock goes on from the time spent up to it.
  config.training.time_budget_s = spent[1] + 1e-3
  resumed = train_loop.train(config, tmp_path, mesh=mesh, method=method)
  assert int(resumed.step) == 2
  later = train_loop.read_train_time(tmp_path)
  assert later[1] == spent[1] and later[2] > spent[1]

  summary = train_loop.evaluate(config, tmp_path, resumed, mesh=mesh, method=method)
  assert summary["likelihood_kind"] == "upper bound (IWAE)"
  for key in ("bits_per_dim", "bits_per_dim_elbo", "fd_pixels", "fd_features",
              "confident_fraction", "class_entropy_bits"):
    assert np.isfinite(summary[key]), key
  assert summary["sampler"]["name"] == "vae sampler" and summary["nfe_mean"] == 1
  # --mode=sample on the workdir: the restored EMA model draws the same samples from the same keys.
  sampled = sampling.run(config, tmp_path)
  assert (tmp_path / "samples" / "vae_n16_step2.json").is_file()
  assert sampled["fd_pixels"] == summary["fd_pixels"]
  with np.load(tmp_path / "samples" / "vae_n16_step2.npz") as f:
    assert "ts" not in f  # no diffusion time grid
    assert f["data"].shape == (16, 8, 8, 1) and 0 <= f["data"].min() and f["data"].max() <= 16


@pytest.mark.parametrize("family", ["pixelcnn", "gan"])  # the flow: the table test below
def test_each_family_trains_and_samples_through_the_runner(family, tmp_path, classifier_dir):
  config = tiny_config(family, classifier_dir)
  config.training.num_steps = 2
  config.eval.bits_per_dim = family == "pixelcnn"
  validate.validate(config, "train")
  mesh, method = sharding.make_mesh(), build.build_method(config)
  initial = train_loop.create_state(method, config, mesh)
  state = train_loop.train(config, tmp_path, mesh=mesh, method=method)
  assert int(state.step) == 2
  players = ("generator", "discriminator") if family == "gan" else (None,)
  for p in players:  # every player's parameters moved
    before, after = (s.params if p is None else s.params[p] for s in (initial, state))
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), before, after)
    assert any(jax.tree.leaves(moved)), p
  drawn = train_loop.make_draw(method, state.ema_params, config, mesh)(4)
  assert drawn["x"].shape == (4, 8, 8, 1) and np.all(np.isfinite(drawn["x"]))
  assert np.all(drawn["nfe"] == (64 if family == "pixelcnn" else 1))
  if family == "pixelcnn":
    # The summary's bits/dim is -log2 P(x) / D of the library's exact log-likelihood on the first
    # config.likelihood.num_samples test images (float32 sums of 64 terms: rtol 1e-5).
    summary = train_loop.evaluate(config, tmp_path, state, mesh=mesh, method=method)
    from diffusion_jax.baselines import pixelcnn

    module = pixelcnn.PixelCNN(features=4, num_blocks=1, num_mixtures=2)
    _, test_set = build_images.build_image_data(config)
    x = jnp.asarray(test_set.to_model()[:4])
    expected = -pixelcnn.log_likelihood(module, jax.device_get(state.ema_params), x, 17) / (
        64 * math.log(2))
    np.testing.assert_allclose(summary["bits_per_dim"], float(np.mean(expected)), rtol=1e-5)
    assert summary["likelihood_kind"] == "exact"


def test_baseline_configs_fail_early_on_what_they_cannot_do(classifier_dir):
  config = tiny_config("vae", classifier_dir)
  config.model.num_classes = 10
  with pytest.raises(validate.ConfigError, match=r"config\.model\.num_classes must be 0"):
    validate.validate(config, "train")
  config = tiny_config("gan", classifier_dir)
  config.model.generator_features = (4, 0)
  with pytest.raises(validate.ConfigError, match=r"config\.model\.generator_features"):
    validate.validate(config, "train")
  config = tiny_config("flow", classifier_dir)
  with pytest.raises(validate.ConfigError, match="--mode=eval_likelihood is for diffusion"):
    validate.validate(config, "eval_likelihood")
  config.model.num_scales = 4  # 8x8 images cannot be squeezed four times
  with pytest.raises(validate.ConfigError, match="2\\^num_scales"):
    validate.validate(config, "train")
  with pytest.raises(ValueError, match="Unknown data 'cifar'"):
    baselines.get_config("vae,cifar")


# The lecture table's command on MNIST under tfds.testing.mock_data (random images, never a
# download), in a child Python: the mock replaces TFDS's reader for the whole process.
_MOCKED = ("import runpy, sys\n"
           "import tensorflow_datasets as tfds\n"
           "sys.argv = sys.argv[1:]\n"
           "with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):\n"
           "  runpy.run_path(sys.argv[0], run_name='__main__')\n")


def _lecture_table(tmp_path, classifier_dir, families):
  overrides = [f"--override={k}={v!r}" for k, v in SMALL.items()]
  overrides += [f"--override={f}:{k}={v!r}" for f in families for k, v in TINY[f].items()]
  overrides += [f"--override=eval.classifier_dir={classifier_dir}", "--override=data.num_test=16"]
  script = REPO / "experiments" / "figures" / "lecture_table.py"
  env = subprocess_env()
  env["PYTHONPATH"] += f":{script.parent}"
  return subprocess.run(
      [sys.executable, "-c", _MOCKED, str(script), "--data=mnist", f"--root={tmp_path / 'runs'}",
       f"--out={tmp_path / 'out'}", "--minutes=1e-5", "--timed_samples=8",
       f"--families={','.join(families)}", *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_the_lecture_table_runs_on_mocked_mnist_and_reads_finished_runs_back(tmp_path,
                                                                              classifier_dir):
  families = ["flow"]  # the VAE, the PixelCNN and the GAN run on the digits above
  proc = _lecture_table(tmp_path, classifier_dir, families)
  assert proc.returncode == 0, proc.stderr[-3000:]
  payload = json.loads((tmp_path / "out" / "lecture_table_mnist.json").read_text())
  rows = {r["family"]: r for r in payload["rows"]}
  assert list(rows) == families
  for family, r in rows.items():
    # stopped by the (tiny) budget after the first step
    assert r["step"] == 1 and r["train_seconds"] > 0
    assert np.isfinite(r["bits_per_dim"]) and np.isfinite(r["fd_features"]), family
    with np.load(r["samples_file"]) as f:
      assert f["data"].shape == (16, 28, 28, 1)
  assert rows["flow"]["likelihood_kind"] == "upper bound (uniform dequantisation)"
  text = (tmp_path / "out" / "lecture_table_mnist.md").read_text()
  table = [ln for ln in text.splitlines() if ln.startswith("|")]
  assert len(table) == 2 + len(families)  # header, rule, one row per family
  assert (tmp_path / "out" / "lecture_table_mnist.png").is_file()
  assert payload["claims"] == []  # each claim compares families; one was run

  again = _lecture_table(tmp_path, classifier_dir, families)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("reading the finished run") == len(families)
  assert json.loads((tmp_path / "out" / "lecture_table_mnist.json").read_text())["rows"] == \
      payload["rows"]


def _row(fd, *, std=0.1, seconds=1.0, steps=100, batch=64, bpd=None):
  return {"fd_pixels": fd, "fd_pixels_floor": 1.0, "fd_pixels_floor_std": std,
          "fd_features": fd, "fd_features_floor": 1.0, "fd_features_floor_std": std,
          "seconds_per_1000_samples": seconds, "step": steps, "batch_size": batch,
          "train_seconds": 10.0, "bits_per_dim": bpd}


def test_the_lecture_claims_are_read_off_the_rows():
  from experiments import lecture

  rows = {"diffusion": _row(1.35, seconds=20.0, bpd=2.1), "vae": _row(1.3, steps=1_000),
          "pixelcnn": _row(3.0, seconds=30.0, bpd=2.4), "gan": _row(5.0)}
  found = {c["claim"]: c["holds"] for c in lecture.claims(rows)}
  # diffusion's FD 0.05 above the VAE's, inside the floor's std 0.1: tied
  assert found["diffusion's sample quality is the best or tied (features FD)"]
  assert found["the autoregressive model is the slowest to sample"]
  assert found["the VAE is the fastest to train (images per training second)"]
  assert found["diffusion's PF-ODE bits/dim is at most the autoregressive model's"]
  rows["diffusion"] = _row(1.5, seconds=40.0, bpd=2.5)  # 0.2 worse: outside the std; slowest
  found = {c["claim"]: c["holds"] for c in lecture.claims(rows)}
  assert found == {
      "diffusion's sample quality is the best or tied (features FD)": False,
      "diffusion's sample quality is the best or tied (pixels FD)": False,
      "the autoregressive model is the slowest to sample": False,
      "the VAE is the fastest to train (images per training second)": True,
      "diffusion's PF-ODE bits/dim is at most the autoregressive model's": False}
  assert math.isnan(lecture.fd_ratio({"fd_pixels": 1.0, "fd_pixels_floor": 0.0}, "pixels"))
