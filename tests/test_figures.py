"""The figure scripts: --help lists every flag, and each runs end to end on tiny settings."""

import json

import pytest

from experiment_helpers import run_figure
from experiments import run as run_lib
from experiments import workdir as workdir_lib
from experiments.configs import toy2d_tiny

# script -> (flags it must list in --help, tiny flags, the files it writes)
SCRIPTS = {
    "sde_trajectories": (["--sde", "--paths", "--steps", "--num", "--grid", "--out"],
                         ["--steps=10", "--paths=3", "--num=50", "--grid=10", "--sde=ve"],
                         "sde_trajectories_ve"),
    "langevin_vs_annealed": (["--num", "--langevin_steps", "--steps_per_level", "--out"],
                             ["--num=16", "--langevin_steps=5", "--steps_per_level=2"],
                             "langevin_vs_annealed"),
    "guidance_toy": (["--num", "--steps", "--gammas", "--cfgpp_lambdas", "--cfgpp_steps", "--blur",
                      "--dps_zeta", "--out"],
                     ["--num=64", "--steps=20", "--gammas=1,2", "--cfgpp_lambdas=0,0.2",
                      "--cfgpp_steps=5"], "guidance_toy"),
    "likelihood_density": (["--grid", "--extent", "--tol", "--workdir", "--config",
                            "--checkpoint_step", "--out"],
                           ["--grid=4", "--tol=1e-3"], "likelihood_density"),
    "likelihood_tolerance": (["--num", "--dims", "--tols", "--out"],
                             ["--num=4", "--dims=2", "--tols=1e-2,1e-3"], "likelihood_tolerance"),
    "quality_vs_nfe": (["--sde", "--num", "--nfes", "--samplers", "--out"],
                       ["--num=64", "--nfes=4,8", "--samplers=ddim,ancestral"], "quality_vs_nfe_vp"),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_lists_every_flag_with_its_default(name):
  proc = run_figure(name, "--help", timeout=60)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for flag in SCRIPTS[name][0]:
    assert f"  {flag}:" in proc.stdout, (flag, proc.stdout)
  assert proc.stdout.count("(default:") >= len(SCRIPTS[name][0])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_runs_end_to_end_writing_png_and_json(name, tmp_path):
  proc = run_figure(name, f"--out={tmp_path}", *SCRIPTS[name][1])
  assert proc.returncode == 0, proc.stderr[-3000:]
  stem = tmp_path / SCRIPTS[name][2]
  assert stem.with_suffix(".png").stat().st_size > 1000
  payload = json.loads(stem.with_suffix(".json").read_text())
  assert payload and str(stem) in proc.stdout


def test_bad_flags_are_usage_errors(tmp_path):
  proc = run_figure("quality_vs_nfe", f"--out={tmp_path}", "--samplers=ddim,nope", timeout=120)
  assert proc.returncode != 0 and "--samplers" in proc.stderr and "nope" in proc.stderr
  proc = run_figure("sde_trajectories", "--paths=0", timeout=60)
  assert proc.returncode != 0 and "--paths" in proc.stderr
  assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_likelihood_density_reads_the_workdir_config(tmp_path):
  """A VE run, plotted without --config: the figure uses the saved config (VE, in sigma)."""
  config = toy2d_tiny.get_config()
  config.sde.name, config.data.name = "ve", "eight_gaussians"
  config.training.num_steps, config.training.checkpoint_every, config.training.warmup_steps = 2, 2, 1
  run_lib.train(config, tmp_path / "run")
  workdir_lib.save_config(tmp_path / "run", config)
  proc = run_figure("likelihood_density", f"--workdir={tmp_path / 'run'}", f"--out={tmp_path}",
                 "--grid=3", "--tol=1e-3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  payload = json.loads((tmp_path / "likelihood_density.json").read_text())
  assert payload["sde"] == "VESDE" and payload["variable"] == "InSigma"
  assert "step 2" in payload["source"]
  # A trained field changed on the command line is refused, naming it.
  proc = run_figure("likelihood_density", f"--workdir={tmp_path / 'run'}", f"--out={tmp_path}",
                 "--config.sde.name=vp", timeout=120)
  assert proc.returncode != 0 and "config.sde.name" in proc.stderr
