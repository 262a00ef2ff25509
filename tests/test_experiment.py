"""The experiment runner: config errors, exact resumption, atomic checkpoints, the Langevin
corrector independent of chunking, conditional training on labels, and an end-to-end smoke test
of ``python -m experiments.main`` on the tiny config."""

import functools
import json
import pathlib
import struct
import subprocess
import sys
import textwrap

import jax
import jax.random as jr
import matplotlib.image
import numpy as np
import pytest

from diffusion_jax import analytic, samplers, sampling, schedules, sdes, train
from experiments import build, input_pipeline, keys, run, sharding
from experiments import train as train_loop
from experiments.configs import toy2d_tiny
from experiment_helpers import REPO, assert_trees_equal, subprocess_env, tiny_config

# ---------------------------------------------------------------------------------------------
# Clear errors.


@pytest.mark.parametrize("key, value, builder", [
    ("data.name", "mnist", build.build_dataset),
    ("sde.name", "vpp", build.build_sde),
    ("model.name", "unet9000", build.build_model),
    ("model.time_embedding", "learned", build.build_model),
    ("model.prediction", "noise", build.build_prediction),
    ("training.weighting", "uniform", build.build_weighting),
    ("training.lr_schedule", "linear", build.build_optimizer),
])
def test_unknown_names_raise_naming_the_config_key(key, value, builder):
  config = toy2d_tiny.get_config()
  section, field = key.split(".")
  config[section][field] = value
  with pytest.raises(ValueError, match=rf"config\.{key}='{value}'.*expected one of"):
    builder(config)


@pytest.mark.parametrize("name", build.DATASETS)
def test_every_dataset_name_builds_a_sharded_global_batch(name):
  config = toy2d_tiny.get_config()
  config.data.name = name
  dataset = build.build_dataset(config)
  mesh = run.make_mesh()
  data_key = keys.key(config, keys.DATA)
  batch = input_pipeline.GeneratedSource(dataset, data_key, 16, mesh).batch(3)
  assert batch["x0"].shape == (16, 2) and len(batch["x0"].sharding.device_set) == 8
  # The sharded batch holds exactly the rows of the unsharded one (both compiled: eager code may
  # round differently).
  whole = jax.jit(dataset.batch, static_argnums=2)(data_key, 3, 16)
  jax.tree.map(np.testing.assert_array_equal, batch, whole)
  assert ("label" in batch) == (name == "labelled_mixture")


@pytest.mark.parametrize("name, cls", [("vp", "VPSDE"), ("subvp", "SubVPSDE"), ("ve", "VESDE"),
                                       ("cosine_vp", "CosineVPSDE")])
def test_every_sde_name_builds(name, cls):
  config = toy2d_tiny.get_config()
  config.sde.name = name
  assert type(build.build_sde(config)).__name__ == cls


def test_mismatched_data_shapes_raise():
  config = toy2d_tiny.get_config()
  config.data.name = "gaussian_mixture"
  config.data.mixture_variances = ((0.1, 0.1, 0.1),) * 3  # 3-D variances for 2-D means
  with pytest.raises(ValueError, match="config.data.mixture_variances"):
    build.build_dataset(config)
  config = toy2d_tiny.get_config()
  config.training.batch_size = 12  # not divisible by the 8 test devices
  with pytest.raises(ValueError, match="batch_size=12 must be divisible"):
    sharding.local_rows(run.make_mesh(), config.training.batch_size)


# ---------------------------------------------------------------------------------------------
# Resumption and atomic checkpoints.


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The reference: the tiny config trained to the end in one go (checkpoints at 2, 4, 6)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  return workdir, run.train(tiny_config(), workdir)


def test_interrupted_and_resumed_run_is_exact(uninterrupted, tmp_path):
  _, reference = uninterrupted
  # Stop after step 5, like a preemption: the last checkpoint is at 4, step 5 is lost.
  partial = run.train(tiny_config(), tmp_path, stop_at_step=5)
  assert int(partial.step) == 5
  resumed = run.train(tiny_config(), tmp_path)
  assert int(resumed.step) == 6
  # Bitwise: the same compiled step replays the same batches and keys from step 4 on.
  assert_trees_equal(resumed.params, reference.params)
  assert_trees_equal(resumed.ema_params, reference.ema_params)
  assert_trees_equal(resumed.opt_state, reference.opt_state)
  # Records of the lost step 5 are dropped on resume; none is duplicated.
  steps = [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == [2, 4, 6]


CRASH_DURING_SAVE = textwrap.dedent("""
    import os, sys
    import orbax.checkpoint as ocp
    from experiments import run
    from experiments.configs import toy2d_tiny

    # Simulate the process dying while checkpoint 4 is written: its files are in the tmp
    # directory, but the final rename that commits it never happens.
    atomic = ocp.path.atomicity.AtomicRenameTemporaryPath
    finalize = atomic.finalize

    async def crash_before_commit(self):
      if self.get_final().name == "4":
        os._exit(17)
      return await finalize(self)

    atomic.finalize = crash_before_commit
    config = toy2d_tiny.get_config()
    config.training.keep_checkpoints = 3
    run.train(config, sys.argv[1])
""")


def test_crash_during_save_keeps_good_checkpoints(uninterrupted, tmp_path):
  ref_dir, reference = uninterrupted
  proc = subprocess.run([sys.executable, "-c", CRASH_DURING_SAVE, str(tmp_path)], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 17, proc.stderr[-3000:]
  names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  assert "2" in names and "4" not in names, names
  assert any(n.startswith("4.orbax-checkpoint-tmp") for n in names), names  # the partial write
  config = tiny_config()
  # The committed checkpoint is intact: identical to the uninterrupted run's checkpoint 2.
  _, _, good = run.restore_model(config, tmp_path)
  _, _, ref_good = run.restore_model(config, ref_dir, step=2)
  assert int(good.step) == 2
  assert_trees_equal(good, ref_good)
  # Resuming ignores (and removes) the partial directory, and ends exactly where the
  # uninterrupted run ended.
  resumed = run.train(config, tmp_path)
  assert_trees_equal(resumed.params, reference.params)
  assert_trees_equal(resumed.ema_params, reference.ema_params)
  assert not any(".orbax-checkpoint-tmp" in p.name for p in (tmp_path / "checkpoints").iterdir())


def test_restore_model_without_checkpoint_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    run.restore_model(tiny_config(), tmp_path)


# ---------------------------------------------------------------------------------------------
# End to end.


def read_scalar_events(directory: pathlib.Path) -> dict:
  """{tag: [steps]} from TensorBoard event files (TFRecord framing of Event protos)."""
  from tensorboardX.proto import event_pb2

  tags = {}
  for path in directory.glob("events.out.tfevents.*"):
    data, i = path.read_bytes(), 0
    while i < len(data):
      (length,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])  # skip the length's CRC
      i += 12 + length + 4  # and the data's CRC
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  return tags


def test_main_end_to_end_on_the_tiny_config(tmp_path):
  cmd = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/toy2d_tiny.py",
         f"--workdir={tmp_path}", "--config.training.num_steps=4"]  # an override, as users do
  proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                        timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]

  records = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [2, 4]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
  assert set(read_scalar_events(tmp_path / "tensorboard")["train/loss"]) == {2, 4}

  checkpoints = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
  assert checkpoints == [2, 4]  # keep_checkpoints = 2 of the tiny config
  score_fn, sde, state = run.restore_model(toy2d_tiny.get_config(), tmp_path)
  assert int(state.step) == 4
  assert np.all(np.isfinite(jax.vmap(score_fn)(np.zeros((3, 2)), np.full((3,), 0.5))))

  image = matplotlib.image.imread(tmp_path / "samples.png")
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

  summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
  assert summary["step"] == 4 and summary["num_samples"] == 256
  assert "floor band" in proc.stdout and "summary.json" in proc.stdout  # says what it wrote
  for group in ("model_vs_data", "data_vs_data", "data_vs_data_std", "floor_band_hi"):
    assert set(summary[group]) == {"energy_distance", "mmd", "sliced_w1"}
    assert all(np.isfinite(v) for v in summary[group].values())
  assert summary["data_vs_data"]["sliced_w1"] > 0
  assert json.loads((tmp_path / "config.json").read_text())["training"]["num_steps"] == 4


def test_draw_samples_with_the_exact_score_recovers_the_data():
  """The end-of-training sampler, driven by the analytic GMM score, samples the GMM; the samples
  do not depend on the number of devices."""
  mixture = analytic.eight_gaussians()
  sde = sdes.VPSDE()
  exact = analytic.DiffusedMixture(mixture, sde)
  sampler = samplers.EulerMaruyama()
  ts = schedules.uniform_time(sde, 200, 1e-3)
  draw = functools.partial(run.draw_samples, exact, sde, sampler, ts, jr.key(0), num=2000,
                           shape=(2,))
  samples = draw(mesh=run.make_mesh())["x"]
  # The sharded program draws exactly the examples of the library's sample_batch (same keys).
  reference = sampling.sample_batch(sde, exact, sampler, ts, key=jr.key(0), num=2000, shape=(2,))
  np.testing.assert_allclose(samples, reference.x, rtol=0, atol=1e-3)  # rounding, as below
  # Same per-sample keys, so the same samples up to rounding: the partitioned program rounds
  # differently (~1e-7), and 200 steps of the reverse drift, which pushes points between modes
  # apart, amplify that for a few samples (measured up to 5e-5).
  np.testing.assert_allclose(samples, draw(mesh=run.make_mesh(jax.devices()[:1]))["x"], rtol=0,
                             atol=1e-3)
  # Assign each sample to its nearest mode: equal mode weights, offsets N(0, 0.1^2 I).
  nearest = np.argmin(np.linalg.norm(samples[:, None] - np.asarray(mixture.means)[None], axis=-1),
                      axis=1)
  offsets = samples - np.asarray(mixture.means)[nearest]
  np.testing.assert_allclose(np.bincount(nearest, minlength=8), 250, atol=75)  # 5 std of Bin(2000, 1/8)
  np.testing.assert_allclose(offsets.mean(axis=0), 0.0, atol=0.02)  # MC std 0.0022
  # MC error of a std is 1.6% per axis here; Euler-Maruyama's bias at 200 steps measured 3-4%
  # (at 20 steps the spread is 25% too wide, which this catches).
  np.testing.assert_allclose(offsets.std(axis=0), 0.1, rtol=0.08)


def test_the_langevin_corrector_from_the_config_never_couples_examples():
  """Examples drawn in chunks of 5 (the last one padded) and in one chunk of 12 are bitwise the
  same with the corrector on: its step size is per example, not a batch average (it was, through
  axis_name, so an example's samples depended on its chunk and on the padding)."""
  config = toy2d_tiny.get_config()
  config.sampling.sampler, config.sampling.corrector = "reverse_diffusion", "langevin"
  sampler = build.build_sampler(config)
  assert sampler.corrector == samplers.Langevin(snr=config.sampling.snr,
                                                num_steps=config.sampling.corrector_steps,
                                                expected_norms=True)
  sde = sdes.VPSDE()
  exact = analytic.DiffusedMixture(analytic.eight_gaussians(), sde)
  ts = schedules.uniform_time(sde, 10, 1e-3)
  draw = functools.partial(run.draw_samples, exact, sde, sampler, ts, jr.key(0), num=12,
                           shape=(2,), mesh=run.make_mesh(jax.devices()[:1]))
  np.testing.assert_array_equal(draw(batch_size=5)["x"], draw(batch_size=12)["x"])


def test_num_classes_needs_labels_and_trains_on_them():
  config = toy2d_tiny.get_config()
  config.model.num_classes = 3  # checkerboard has no labels
  with pytest.raises(ValueError, match=r"config.model.num_classes=3.*no 'label'"):
    build.build_method(config)
  config.data.name = "labelled_mixture"
  config.model.num_classes = 2  # the mixture has 3 components
  with pytest.raises(ValueError, match=r"num_classes=2 must equal .* 3 mixture components"):
    build.build_method(config)
  config.model.num_classes, config.model.label_dropout = 3, 0.0
  method = build.build_method(config)
  assert method.cond_key == "label"
  params = method.init(jr.key(0)).params
  x0 = np.array([0.3, -0.2], np.float32)

  def loss(label):
    record = method.loss_fn(params, None, {"x0": x0, "label": np.int32(label)}, jr.key(1))
    return float(train.record_fields(record)["loss"])

  # Same key, same x0: only the label differs, and the loss sees it (it saw only the null label).
  assert loss(0) != loss(1) and loss(1) != loss(3)


def test_sharded_sampling_with_a_condition_per_example_matches_one_batch_per_condition():
  """One draw mixing labels 0..3 (3: the null label) gives, example by example, bitwise the same
  samples as a draw with that example's label everywhere (same keys): conditions travel with
  their example through the sharded program and never mix."""
  config = toy2d_tiny.get_config()
  config.data.name, config.model.num_classes = "labelled_mixture", 3
  config.sampling.num_steps = 5
  method = build.build_method(config)
  mesh = run.make_mesh()
  params = train_loop.create_state(method, config, mesh).params
  program = sharding.make_sharded_sampler(method.sample, mesh)
  labels = np.arange(16, dtype=np.int32) % 4
  draw = lambda cond: sharding.draw(program, params, jr.key(3), num=16, mesh=mesh, cond=cond)["x"]
  mixed = draw(labels)
  for k in range(4):
    alone = draw(np.full(16, k, np.int32))
    np.testing.assert_array_equal(mixed[labels == k], alone[labels == k])
  # Same keys, another label: other samples (the label reaches the network).
  assert not np.array_equal(draw(np.zeros(16, np.int32)), draw(np.ones(16, np.int32)))


def test_configured_guidance_wraps_the_sampler_of_a_conditional_model():
  """config.sampling.guidance: cfg at gamma = 1 is the unguided conditional model and cfgpp (CFG++)
  at lambda = 0 the unconditional one; other strengths, the noise interval and autoguidance (params
  {"main", "guide"}) change the samples; configs that cannot be guided are refused before any
  work."""
  from experiments import sampling as sampling_lib
  from experiments import validate

  config = toy2d_tiny.get_config()
  config.data.name, config.model.num_classes = "labelled_mixture", 3
  config.sampling.num_steps = 5
  mesh = run.make_mesh()
  method = build.build_method(config)
  params = train_loop.create_state(method, config, mesh).params
  other = jax.tree.map(lambda p: 0.9 * p, params)  # a different network as the guide
  labels = np.arange(16, dtype=np.int32) % 3

  def draw(kind="none", gamma=1.0, params=params, sampler=None, cond=labels, **fields):
    c = config.copy_and_resolve_references()
    c.sampling.guidance.kind, c.sampling.guidance.gamma = kind, gamma
    c.sampling.guidance.update(fields)
    c.sampling.sampler = sampler or c.sampling.sampler
    validate.validate(c, "sample")
    m = build.build_method(c)
    program = sharding.make_sharded_sampler(m.sample, mesh)
    return sharding.draw(program, params, jr.key(3), num=16, mesh=mesh, cond=cond)["x"], c

  plain, _ = draw()
  unit, _ = draw("cfg", 1.0)
  # The pair (label, null) runs as one network call on a batch of two: the conditional half can
  # differ from the unguided call by float32 rounding of a differently batched matmul, no more.
  np.testing.assert_allclose(unit, plain, rtol=1e-5, atol=1e-6)
  strong, c = draw("cfg", 3.0)
  assert not np.allclose(strong, plain, atol=1e-3)
  assert "cfg-gamma3" in sampling_lib.output_stem(c, 100)
  gated, c = draw("cfg", 3.0, sigma_lo=0.5, sigma_hi=5.0)
  assert not np.allclose(gated, strong, atol=1e-3)
  assert "cfg-gamma3-sigma0.5-5" in sampling_lib.output_stem(c, 100)
  auto, c = draw("autoguidance", 2.0, params={"main": params, "guide": other}, guide_step=50)
  assert not np.allclose(auto, plain, atol=1e-3) and np.all(np.isfinite(auto))
  assert "autoguidance-gamma2-guide50" in sampling_lib.output_stem(c, 100)
  unconditional, _ = draw(sampler="ddim", cond=np.full(16, 3, np.int32))  # 3: the null label
  cfgpp0, c = draw("cfgpp", 0.0, sampler="ddim")
  assert "CFGPlusPlus(inner=DDIM" in repr(build.build_sampler(c))
  # The same pair-batched call as above: float32 rounding of a differently batched matmul.
  np.testing.assert_allclose(cfgpp0, unconditional, rtol=1e-5, atol=1e-6)
  cfgpp, c = draw("cfgpp", 0.5, sampler="dpm_solver_2m")
  assert not np.allclose(cfgpp, unconditional, atol=1e-3) and np.all(np.isfinite(cfgpp))
  assert "cfgpp-lambda0.5" in sampling_lib.output_stem(c, 100)

  bad = config.copy_and_resolve_references()
  bad.sampling.guidance.kind = "autoguidance"
  with pytest.raises(validate.ConfigError, match="guide_step"):
    validate.validate(bad, "sample")
  bad.sampling.guidance.guide_step = 10
  with pytest.raises(validate.ConfigError, match="for --mode=sample"):
    validate.validate(bad, "train")
  bad.sampling.guidance.kind, bad.model.label_dropout = "cfg", 0.0
  with pytest.raises(validate.ConfigError, match="label_dropout > 0"):
    validate.validate(bad, "sample")
  bad.model.label_dropout, bad.sampling.guidance.kind = 0.1, "cfgpp"
  with pytest.raises(validate.ConfigError, match="needs config.sampling.sampler ddim"):
    validate.validate(bad, "sample")  # the toy's default sampler is Euler-Maruyama
  bad.sampling.sampler, bad.sampling.guidance.sigma_lo = "ddim", 0.5
  with pytest.raises(validate.ConfigError, match="'cfgpp' has no noise interval"):
    validate.validate(bad, "sample")
  bad.sampling.guidance.kind = "clf"
  with pytest.raises(validate.ConfigError, match="guidance.kind must be one of"):
    validate.validate(bad, "sample")
