"""The command line: a workdir remembers its config, bad values fail before training, clear errors."""

import json
import math
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from experiment_helpers import REPO, subprocess_env
from experiments import likelihood_eval, sampling, validate
from experiments import workdir as workdir_lib
from experiments.configs import toy2d, toy2d_tiny

TINY = "--config=experiments/configs/toy2d_tiny.py"
# What the trained run overrides: the SDE, the data and a tuple field (the model's widths).
TRAIN_OVERRIDES = ["--config.sde.name=ve", "--config.data.name=eight_gaussians",
                   "--config.model.hidden_sizes=(16,16)"]
# Evaluation settings, free to change after training: small, so the test is quick.
EVAL_SETTINGS = ["--config.sampling.num_samples=64", "--config.likelihood.num_samples=8",
                 "--config.likelihood.batch_size=8", "--config.likelihood.rtol=1e-3",
                 "--config.likelihood.atol=1e-3"]


def _main(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def _tiny(**sections):
  config = toy2d_tiny.get_config()
  for path, value in sections.items():
    section, field = path.split("__")
    del config[section][field]  # ConfigDict is type-safe: a config file could still say 64.0
    config[section][field] = value
  return config


# ---------------------------------------------------------------------------------------------
# Saving and loading the config.


def test_config_round_trip_is_exact(tmp_path):
  config = toy2d.get_config()
  config.model.hidden_sizes = (7,)  # a one-element tuple, nested tuples, floats that look like ints
  config.sampling.rho = 7.0
  workdir_lib.save_config(tmp_path, config)
  back = workdir_lib.load_config(tmp_path)
  assert back.to_dict() == config.to_dict()
  # Types too (== would accept [7] for (7,) and 7 for 7.0):
  assert type(back.model.hidden_sizes) is tuple and type(back.data.mixture_means[0]) is tuple
  assert type(back.sampling.rho) is float and type(back.training.num_steps) is int
  assert workdir_lib.first_difference(config, back) is None


def test_config_written_by_to_json_best_effort_loads_exactly(tmp_path):
  """The format train has written so far (ConfigDict.to_json_best_effort) reads back exactly."""
  config = toy2d_tiny.get_config()
  (tmp_path / "config.json").write_text(config.to_json_best_effort(indent=2))
  assert workdir_lib.first_difference(config, workdir_lib.load_config(tmp_path)) is None


def test_a_field_that_does_not_survive_json_is_named(tmp_path):
  config = toy2d_tiny.get_config()
  config.model.widths = [32, 32]  # a new list field would come back as a tuple
  with pytest.raises(workdir_lib.WorkdirError, match=r"config\.model\.widths"):
    workdir_lib.save_config(tmp_path, config)
  assert not (tmp_path / "config.json").exists()


def test_saved_config_becomes_the_config_flag(tmp_path):
  workdir_lib.save_config(tmp_path, toy2d_tiny.get_config())
  argv = ["main.py", f"--workdir={tmp_path}", "--mode=sample", "--config.sampling.num_steps=5"]
  injected = workdir_lib.with_saved_config(argv)
  assert injected[1] == f"--config={workdir_lib.saved_config_spec(tmp_path)}"
  assert injected[2:] == argv[1:]  # --config first: ml_collections needs it before its overrides
  assert workdir_lib.with_saved_config([*argv, TINY]) == [*argv, TINY]  # an explicit one wins
  assert workdir_lib.override_paths(argv) == ["sampling.num_steps"]


def test_resolve_config_names_the_changed_trained_field(tmp_path):
  trained = _tiny(sde__name="ve")
  workdir_lib.save_config(tmp_path, trained)
  changed = _tiny(sde__name="ve", sampling__num_steps=3)  # an evaluation setting: allowed
  assert workdir_lib.resolve_config(changed, tmp_path, from_file=True) is changed
  for path, value in [("sde.name", "vp"), ("model.hidden_sizes", (32, 16)),
                      ("data.name", "two_moons"), ("model.prediction", "x0"),
                      ("training.weighting", "likelihood")]:
    config = _tiny(sde__name="ve")
    section, field = path.split(".")
    config[section][field] = value
    with pytest.raises(workdir_lib.WorkdirError, match=rf"config\.{path} was .*the --config file"):
      workdir_lib.resolve_config(config, tmp_path, from_file=True)
    with pytest.raises(workdir_lib.WorkdirError, match=rf"config\.{path} was .*the command line"):
      workdir_lib.resolve_config(config, tmp_path, from_file=False, overrides=[path])
  with pytest.raises(workdir_lib.WorkdirError, match="--config is required"):
    workdir_lib.resolve_config(None, tmp_path / "empty", from_file=False)


# ---------------------------------------------------------------------------------------------
# Validation, through validate() (one case per class of bad value).


def test_the_tiny_and_default_configs_are_valid():
  validate.validate(toy2d_tiny.get_config(), "train")
  validate.validate(toy2d.get_config(), "sample")
  # Legitimate edge cases: no gradient clipping, no EMA, a VE run. (A constant-beta VP SDE passes
  # these checks; the library's VPSDE constructor, ode stream, decides whether it accepts it.)
  validate.validate(_tiny(training__grad_clip_norm=0.0, training__ema_decay=0.0, sde__name="ve"),
                    "train")


@pytest.mark.parametrize("path,value,expected", [
    # zero counts (today: ZeroDivisionError, "range() arg 3 must not be zero", `decay_steps`,
    # a clean exit with no checkpoint)
    ("training.checkpoint_every", 0, "integer >= 1"),
    ("training.log_every", 0, "integer >= 1"),
    ("sampling.num_samples", 0, "integer >= 1"),
    ("training.num_steps", 0, "integer >= 1"),
    ("training.keep_checkpoints", 0, "integer >= 1"),
    ("likelihood.batch_size", -3, "integer >= 1"),
    # integers given as floats or bools
    ("training.batch_size", 64.0, "integer"),
    ("sampling.num_steps", True, "integer"),
    # probabilities outside [0, 1]
    ("training.ema_decay", 1.5, r"\[0, 1\]"),
    ("sampling.eta", -0.1, r"\[0, 1\]"),
    # non-finite and non-positive reals
    ("training.learning_rate", math.nan, "finite"),
    ("eval.mmd_bandwidth", 0.0, r"\(0, inf\]"),
    ("sde.beta_max", math.inf, "finite"),
    # times outside (0, T)
    ("sampling.t_min", 1.5, r"\(0, T\)"),
    ("likelihood.t_min", 0.0, r"\(0, inf\]"),
    # unknown string choices (today the sampler name fails only after training)
    ("sampling.sampler", "dpm_solver_9m", "expected one of"),
    ("sde.name", "vpp", "expected one of"),
    ("likelihood.divergence", "hutch", "expected one of"),
    ("sampling.grid", "uniform", "expected one of"),
    # orders and levels
    ("sampling.order", 4, r"integer in \[1, 3\]"),
    ("likelihood.num_levels", 1, ">= 2"),
])
def test_bad_values_are_rejected_naming_the_field(path, value, expected):
  section, field = path.split(".")
  config = _tiny(**{f"{section}__{field}": value})
  with pytest.raises(validate.ConfigError, match=rf"config\.{path}.*{expected}"):
    validate.validate(config, "train")


def test_relations_between_fields_are_checked():
  with pytest.raises(validate.ConfigError, match=r"config\.sde\.sigma_min must be < config\.sde\.sigma_max"):
    validate.validate(_tiny(sde__name="ve", sde__sigma_min=9.0, sde__sigma_max=8.0))
  with pytest.raises(validate.ConfigError, match=r"config\.training\.warmup_steps must be <"):
    validate.validate(_tiny(training__warmup_steps=6))  # the cosine schedule decays at num_steps
  with pytest.raises(validate.ConfigError, match=r"ancestral_start_steps must be <"):
    validate.validate(_tiny(sampling__ancestral_start_steps=20))
  with pytest.raises(validate.ConfigError, match=r"config\.data\.mixture_variances"):
    validate.validate(_tiny(data__name="gaussian_mixture",
                            data__mixture_variances=((0.1, 0.3), (0.0, 0.05), (0.02, 0.02))))
  with pytest.raises(validate.ConfigError, match=r"config\.likelihood\.estimator"):
    validate.validate(_tiny(likelihood__estimator="ddpm_elbo"))  # continuous data


def test_batch_size_must_divide_over_the_devices():
  import jax

  assert jax.device_count() == 8  # tests/conftest.py forces 8 host devices
  with pytest.raises(validate.ConfigError, match=r"config\.training\.batch_size=12 .*devices \(8\)"):
    validate.validate(_tiny(training__batch_size=12))
  validate.validate(_tiny(training__batch_size=12), "sample")  # only training splits that batch


def test_unknown_override_keys_name_the_nearest_fields():
  config = toy2d_tiny.get_config()
  validate.check_override_keys(config, ["sampling.sampler", "sde.name"])
  with pytest.raises(validate.ConfigError, match=r"config\.training\.num_stpes.*config\.training\.num_steps"):
    validate.check_override_keys(config, ["training.num_stpes"])
  with pytest.raises(validate.ConfigError, match=r"unknown config key config\.foo; the config has the fields"):
    validate.check_override_keys(config, ["foo"])
  with pytest.raises(validate.ConfigError, match=r"config\.sde\.name is a str"):
    validate.check_override_keys(config, ["sde.name.x"])


# ---------------------------------------------------------------------------------------------
# The same through the command line: fail fast, before any training step.


@pytest.mark.parametrize("args,expected", [
    (["--config.training.checkpoint_every=0"], r"config\.training\.checkpoint_every must be an integer >= 1"),
    (["--config.sampling.sampler=nope"], r"config\.sampling\.sampler='nope'; expected one of"),
    (["--config.foo=1"], r"unknown config key config\.foo"),
    (["--config.training.num_stpes=3"], r"did you mean config\.training\.num_steps"),
    ([], r"needs --config"),  # training needs a config file
])
def test_command_line_fails_before_training(tmp_path, args, expected):
  config = [TINY] if args or expected != r"needs --config" else []
  proc = _main(*config, f"--workdir={tmp_path / 'run'}", *args, timeout=120)
  assert proc.returncode != 0
  assert __import__("re").search(expected, proc.stderr), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr  # a message, not a stack trace
  assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------
# Train with overrides; sample and score without repeating them.


@pytest.fixture(scope="module")
def trained_ve(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cli_ve")
  proc = _main(TINY, f"--workdir={workdir}", *TRAIN_OVERRIDES, "--config.sampling.num_samples=64")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _explicit_config():
  """The trained run's config written out by hand: the tiny config plus the training overrides."""
  config = toy2d_tiny.get_config()
  config.sde.name, config.data.name, config.model.hidden_sizes = "ve", "eight_gaussians", (16, 16)
  config.sampling.num_samples = 64
  config.likelihood.num_samples = config.likelihood.batch_size = 8
  config.likelihood.rtol = config.likelihood.atol = 1e-3
  return config


@pytest.mark.slow
def test_sample_and_likelihood_remember_the_trained_run(trained_ve):
  saved = workdir_lib.load_config(trained_ve)
  assert saved.sde.name == "ve" and saved.model.hidden_sizes == (16, 16)

  proc = _main(f"--workdir={trained_ve}", "--mode=sample", *EVAL_SETTINGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Wrote" in proc.stdout and "energy_distance" in proc.stdout
  stem = trained_ve / "samples" / sampling.output_stem(_explicit_config(), 6)
  remembered = dict(np.load(f"{stem}.npz"))
  remembered_summary = json.loads(open(f"{stem}.json").read())  # the stem holds dots (tmin0.001)

  proc = _main(f"--workdir={trained_ve}", "--mode=eval_likelihood", *EVAL_SETTINGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (json_path,) = (trained_ve / "likelihood").glob("*.json")
  assert str(json_path) in proc.stdout and "nats/dim" in proc.stdout
  assert "in-sigma" in json_path.name  # VE is integrated in sigma ("auto"): the VE run's setting
  remembered_ll = dict(np.load(json_path.with_suffix(".npz")))

  # The same with the overrides passed explicitly, in this process: identical outputs.
  config = _explicit_config()
  summary = sampling.run(config, trained_ve)
  explicit = dict(np.load(f"{stem}.npz"))
  for key in ("x", "denoised", "nfe", "ts"):
    np.testing.assert_array_equal(explicit[key], remembered[key])
  assert summary["model_vs_data"] == remembered_summary["model_vs_data"]
  likelihood_eval.run(config, trained_ve)
  explicit_ll = dict(np.load(json_path.with_suffix(".npz")))
  np.testing.assert_array_equal(explicit_ll["logp"], remembered_ll["logp"])
  np.testing.assert_array_equal(explicit_ll["x"], remembered_ll["x"])


@pytest.mark.slow
def test_changing_the_sde_on_sampling_is_an_error(trained_ve):
  before = sorted(p.name for p in trained_ve.rglob("*"))
  proc = _main(f"--workdir={trained_ve}", "--mode=sample", "--config.sde.name=vp", timeout=120)
  assert proc.returncode != 0
  assert "config.sde.name was 've'" in proc.stderr and "'vp'" in proc.stderr, proc.stderr[-2000:]
  # The config file without the training overrides says VP too: also refused, naming a field.
  proc = _main(TINY, f"--workdir={trained_ve}", "--mode=sample", timeout=120)
  assert proc.returncode != 0 and "the --config file sets it" in proc.stderr, proc.stderr[-2000:]
  assert sorted(p.name for p in trained_ve.rglob("*")) == before  # nothing written


@pytest.mark.slow
def test_checkpoint_step_picks_a_checkpoint(trained_ve):
  assert workdir_lib.checkpoint_steps(trained_ve) == [4, 6]  # keep_checkpoints = 2, every 2 steps
  assert workdir_lib.check_checkpoint_step(trained_ve, None) == 6
  assert workdir_lib.check_checkpoint_step(trained_ve, 4) == 4
  with pytest.raises(workdir_lib.WorkdirError, match="available steps: 4, 6"):
    workdir_lib.check_checkpoint_step(trained_ve, 5)
  summary = likelihood_eval.run(_explicit_config(), trained_ve, step=4)
  assert summary["checkpoint_step"] == 4
  assert list((trained_ve / "likelihood").glob("*_step4.json"))
