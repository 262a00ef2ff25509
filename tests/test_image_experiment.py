"""The image runner end to end, CPU-sized: digits train -> grids -> evaluate (files and summary),
--mode=sample on the workdir, and one DDPM++ CIFAR-10 training step at batch 1 on mocked TFDS data.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import build, build_images, keys, sharding, validate
from experiments import train as train_loop

REQUIRED = ("fd_pixels", "fd_pixels_floor", "fd_features", "fd_features_floor",
            "confident_fraction", "class_entropy_bits", "bits_per_dim")


def tiny_digits_config(classifier_dir):
  # The class-conditional digits model (digits_cond.py: digits.py with labels and label dropout),
  # so one trained fixture serves the runner's tests and the guided sampling of the guidance sweep.
  from experiments.configs import digits_cond

  c = digits_cond.get_config()
  m = c.model
  # One level, no attention: the runner's test, not the network's (tests/test_unet.py covers
  # levels and attention); every level and attention block adds to each of the five programs
  # compiled here (train step, sampler, ODE likelihood, DDPM bound, classifier).
  m.model_channels, m.channel_mult, m.num_res_blocks, m.attn_resolutions = 8, (1,), 1, ()
  t = c.training
  t.num_steps, t.batch_size, t.warmup_steps = 4, 16, 1
  t.log_every = t.checkpoint_every = t.sample_every = 2  # checkpoints 2 and 4: 2 is a guide
  t.sample_grid_size = 32  # = sampling.batch_size: the grids and the evaluation share one program
  s = c.sampling
  s.num_steps, s.num_samples, s.batch_size = 3, 32, 32
  e = c.eval
  e.floor_repeats, e.classifier_steps, e.classifier_dir = 2, 60, str(classifier_dir)
  lc = c.likelihood
  lc.num_samples, lc.batch_size, lc.elbo_steps, lc.rtol, lc.atol = 8, 8, 4, 1e-2, 1e-2
  return c


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("digits")
  config = tiny_digits_config(tmp_path_factory.mktemp("classifiers"))
  validate.validate(config, "train")
  summary = train_loop.train_and_evaluate(config, workdir)
  return config, workdir, summary


def test_digits_run_writes_grids_samples_and_a_summary_with_floors(digits_run):
  config, workdir, summary = digits_run
  assert (workdir / "samples.png").is_file()
  # a grid every sample_every steps, and at the end
  assert sorted(p.name for p in (workdir / "samples").glob("train_*.png")) == [
      "train_0000002.png", "train_0000004.png"]
  on_disk = json.loads((workdir / "eval" / "summary.json").read_text())
  for key in REQUIRED:
    assert np.isfinite(on_disk[key]), key
  assert on_disk["fd_pixels_floor"] > 0 and on_disk["fd_features_floor"] > 0
  assert 0.0 <= on_disk["confident_fraction"] <= 1.0
  assert 0.0 <= on_disk["label_accuracy"] <= 1.0  # class-conditional: drawn ten classes in turn
  assert 0.0 <= on_disk["class_entropy_bits"] <= np.log2(10) + 1e-9  # 10 classes at most
  # the DDPM bound is reported for the VP SDE next to the ODE estimate
  assert np.isfinite(on_disk["bits_per_dim_ddpm_bound"])
  npz = list((workdir / "samples").glob("*.npz"))
  assert len(npz) == 1
  with np.load(npz[0]) as f:
    levels, x = f["data"], f["x"]
  assert levels.shape == (config.sampling.num_samples, 8, 8, 1)
  assert levels.dtype.kind == "i" and levels.min() >= 0 and levels.max() <= 16  # digits: 17 levels
  # the levels are the cells holding the model's samples (clipped at the ends)
  np.testing.assert_array_equal(levels, np.clip(np.floor((x + 1) * 17 / 2), 0, 16))


def test_sample_mode_reads_the_workdir_and_names_its_files(digits_run):
  from experiments import sampling

  config, workdir, _ = digits_run
  config = build.ml_collections.ConfigDict(config.to_dict())
  config.sampling.sampler, config.sampling.num_steps = "ddim", 2
  summary = sampling.run(config, workdir)
  stem = sampling.output_stem(config, 4)
  for suffix in (".npz", ".json", ".png"):
    assert (workdir / "samples" / f"{stem}{suffix}").is_file()
  assert np.isfinite(summary["fd_pixels"])
  assert "bits_per_dim" not in summary  # --mode=sample scores samples only


def test_image_config_errors_name_the_field():
  from experiments.configs import digits

  c = digits.get_config()
  c.model.attn_resolutions = (16,)
  with pytest.raises(validate.ConfigError, match=r"config\.model\.attn_resolutions"):
    validate.validate(c, "train")
  c = digits.get_config()
  c.training.loss = "l2"
  with pytest.raises(validate.ConfigError, match=r"config\.training\.loss"):
    validate.validate(c, "train")
  c = digits.get_config()
  c.eval.features = "inception"
  with pytest.raises(validate.ConfigError, match=r"config\.eval\.inception_weights"):
    validate.validate(c, "train")


def test_cifar10_ddpmpp_config_builds_and_traces_its_train_step_at_batch_1():
  """The paper configuration as it is (61.8M parameters), on two mocked CIFAR-10 records: the
  whole train step traced at batch 1 (its shapes and dtypes; compiling it for XLA:CPU took 70 s
  of CI's time and checks nothing a tiny config's step does not)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from experiments.configs import cifar10_ddpmpp_vp

  config = cifar10_ddpmpp_vp.get_config()
  config.training.batch_size = 1
  config.data.num_test = 2
  config.eval.features = "classifier"  # the FID weights file is the user's; not needed to train
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    validate.validate(config, "sample")  # every check but the batch's split over 8 test devices
    method = build.build_method(config)
    mesh = sharding.make_mesh(jax.devices()[:1])
    source = build.build_batch_source(config, mesh, keys.key(config, keys.DATA))
    batch = source.batch(0)
  assert batch["x0"].shape == (1, 32, 32, 3)
  state = train_loop.abstract_state(method, config, sharding.replicated(mesh))
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  # score_sde's DDPM++ cont. (VP) CIFAR-10 network, counted layer by layer from its code
  # (tests/test_unet.py pins the paper configurations' counts).
  assert num_params == 61_804_419
  new_state, metrics = jax.eval_shape(method.train_step, state, batch,
                                      keys.key(config, keys.TRAIN))
  assert jax.tree.map(lambda s: (s.shape, s.dtype), new_state.params) == jax.tree.map(
      lambda s: (s.shape, s.dtype), state.params)
  assert metrics["loss"].shape == () and metrics["loss"].dtype == jnp.float32


def test_image_figures_sample_the_workdir_and_reuse_its_points(digits_run, tmp_path):
  from experiment_helpers import run_figure

  config, workdir, _ = digits_run

  def script(name, *args):
    proc = run_figure(name, f"--out={tmp_path}", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout

  script("image_quality_vs_nfe", f"--workdir={workdir}", "--samplers=ddim", "--nfes=2,3",
         "--num=32")
  payload = json.loads((tmp_path / "image_quality_vs_nfe_digits.json").read_text())
  rows = payload["samplers"]["ddim"]["rows"]
  assert [r["nfe"] for r in rows] == [2, 3]  # DDIM: one evaluation per step
  # each point is the --mode=sample file of its settings, read back by the grid figure
  for r in rows:
    on_disk = json.loads((workdir / "samples" / (
        f"ddim-eta0_time_quadratic_{r['num_steps']}steps_tmin0.001_n32_step4.json")).read_text())
    assert on_disk["fd_pixels"] == r["fd_pixels"]
  out = script("image_sample_grids", f"--workdirs={workdir}", "--samplers=ddim", "--nfe=3",
               "--num=32", "--shown=16")
  # The guidance sweep on the same workdir: CFG, CFG in a noise interval and autoguidance by the
  # step-2 checkpoint, at w = 0 (the run's own sampler, read back from its file) and w = 1.
  workdir_config = build.guidance_config(config)
  assert workdir_config.kind == "none"
  out_sweep = script("guidance_sweep", f"--workdir={workdir}", "--weights=0,1", "--num=32",
                     "--cfgpp_lambdas=0,0.5")
  sweep = json.loads((tmp_path / "guidance_sweep.json").read_text())
  assert sweep["guide_step"] == 2 and len(sweep["results"]) == 3
  for variant in sweep["results"].values():
    assert [r["w"] for r in variant] == [0, 1]
    assert all(r["label_accuracy"] is not None for r in variant)
  # w = 0 is one point for all three variants; w = 1 gives each its own file (its stem).
  assert len({json.dumps(variant[0]) for variant in sweep["results"].values()}) == 1
  stems = sorted(p.name for p in (workdir / "samples").glob("*gamma2*_n32_step4.json"))
  assert stems == ["ancestral_time_uniform_3steps_tmin0.001_autoguidance-gamma2-guide2_n32_step4.json",
                   "ancestral_time_uniform_3steps_tmin0.001_cfg-gamma2-sigma0.3-5_n32_step4.json",
                   "ancestral_time_uniform_3steps_tmin0.001_cfg-gamma2_n32_step4.json"], stems
  # CFG++ on DDIM at the run's grid: its lambdas, and the unguided DDIM reference.
  assert [r["lambda"] for r in sweep["cfgpp"]["rows"]] == [0, 0.5]
  assert sweep["cfgpp"]["unguided"]["label_accuracy"] is not None
  assert (workdir / "samples" /
          "ddim-eta0_time_uniform_3steps_tmin0.001_cfgpp-lambda0.5_n32_step4.json").exists()
  assert "guidance_sweep.png" in out_sweep
  assert "ddim at 3 NFE: read" in out
  assert (tmp_path / "image_sample_grids_digits.png").stat().st_size > 1000
  grids = json.loads((tmp_path / "image_sample_grids_digits.json").read_text())
  assert grids["runs"][0]["samplers"]["ddim"]["fd_pixels_ratio"] == pytest.approx(
      rows[1]["fd_pixels"] / rows[1]["fd_pixels_floor"])


def test_eval_likelihood_mode_scores_an_image_checkpoint_as_training_did(digits_run, capsys):
  """--mode=eval_likelihood on an image run gives the end-of-training bits/dim: same checkpoint,
  same test images, same settings, so the same numbers (the ODE's Hutchinson probes and the
  bound's noise come from fixed keys)."""
  from experiments import likelihood_eval

  config, workdir, summary = digits_run
  out = likelihood_eval.run(config, workdir)
  for key in ("bits_per_dim", "bits_per_dim_ddpm_bound"):
    assert out[key] == pytest.approx(summary[key], rel=1e-6), key  # (one program, same inputs)
  written = list((workdir / "likelihood").glob("image-*.json"))
  assert len(written) == 1 and json.loads(written[0].read_text())["checkpoint_step"] == 4
  assert "test bits/dim of 8 images" in capsys.readouterr().out


def test_noisy_classifier_trains_on_the_run_and_guides_its_sampler(digits_run, tmp_path):
  """--mode=train_classifier writes the run's noise-conditional classifier; --mode=sample with
  guidance.kind=classifier draws the ten classes in turn through it and reports label accuracy
  (a few training steps: the plumbing, not the quality)."""
  import shutil

  from experiments import noisy_classifier
  from experiments import sampling as sampling_lib

  config, workdir, _ = digits_run
  run_dir = tmp_path / "run"
  shutil.copytree(workdir, run_dir)
  config = config.copy_and_resolve_references()
  nc = config.noisy_classifier
  nc.num_steps, nc.batch_size, nc.warmup_steps = 4, 16, 1
  validate.validate(config, "train_classifier")
  info = noisy_classifier.train(config, run_dir, log=lambda *_: None)
  accuracy = info["test_accuracy_by_t"]
  assert len(accuracy) == 5 and all(0.0 <= a <= 1.0 for a in accuracy.values())
  assert (run_dir / "noisy_classifier" / "params.msgpack").is_file()
  classifier, _ = noisy_classifier.load(config, run_dir, (8, 8, 1))
  x = jnp.zeros((8, 8, 1))
  log_p = classifier(x, jnp.asarray(0.5))
  assert log_p.shape == (10,) and float(jnp.abs(jax.nn.logsumexp(log_p))) < 1e-5  # log-probabilities
  config.sampling.guidance.kind, config.sampling.guidance.scale = "classifier", 2.0
  with pytest.raises(validate.ConfigError, match="for --mode=sample"):
    validate.validate(config, "train")
  validate.validate(config, "sample")
  summary = sampling_lib.run(config, run_dir)
  assert 0.0 <= summary["label_accuracy"] <= 1.0 and summary["num_scored"] == 32
  assert summary["sampler"]["guidance"]["kind"] == "classifier"
  assert list((run_dir / "samples").glob("*classifier-scale2_n32_step4.json"))

  # The figure: scale 2 is read back from the file above, scale 0 drawn (the unguided model).
  def figure():
    import subprocess
    import sys

    from experiment_helpers import REPO, subprocess_env

    return subprocess.run([sys.executable, str(REPO / "experiments" / "figures" /
                                                "classifier_guidance_sweep.py"),
                           f"--workdir={run_dir}", "--scales=0,2", "--num=32", f"--out={tmp_path}"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)

  proc = figure()
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "classifier-scale2_n32_step4.json" in proc.stdout  # read back, not drawn again
  rows = json.loads((tmp_path / "classifier_guidance_sweep.json").read_text())["rows"]
  assert [r["scale"] for r in rows] == [0, 2]
  assert rows[1]["label_accuracy"] == summary["label_accuracy"]
  assert (tmp_path / "classifier_guidance_sweep.png").stat().st_size > 1000
  shutil.rmtree(run_dir / "noisy_classifier")
  with pytest.raises(FileNotFoundError, match="--mode=train_classifier"):
    sampling_lib.run(config, run_dir)
  proc = figure()
  assert proc.returncode != 0 and "--mode=train_classifier" in proc.stderr
