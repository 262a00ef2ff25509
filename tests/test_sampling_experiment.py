"""--mode=sample: experiments/sampling.py restores a checkpoint and writes samples with any sampler."""

import json

import numpy as np
import pytest

from diffusion_jax import samplers
from experiments import build, sampling
from experiments import run as run_lib
from experiments.configs import toy2d_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tiny")
  run_lib.train(toy2d_tiny.get_config(), workdir)
  return workdir


def sample_config(**overrides):
  config = toy2d_tiny.get_config()
  config.sampling.num_samples = 40
  for k, v in overrides.items():
    setattr(config.sampling, k, v)
  return config


def test_sample_mode_writes_npz_png_and_json(trained):
  config = sample_config(sampler="dpm_solver_2m", grid="log_snr", num_steps=6, batch_size=16)
  summary = sampling.run(config, trained)
  stem = trained / "samples" / "dpm_solver_2m_6steps_step6"
  drawn = np.load(f"{stem}.npz")
  assert drawn["x"].shape == (40, 2) and np.all(np.isfinite(drawn["x"]))
  assert np.all(drawn["nfe"] == 6)
  assert (trained / "samples" / "dpm_solver_2m_6steps_step6.png").stat().st_size > 0
  assert json.loads(pathlib_read(f"{stem}.json"))["nfe_mean"] == summary["nfe_mean"] == 6
  # Chunks of 16 (the last padded) give the same examples as one chunk of 40.
  whole = sampling.run(sample_config(sampler="dpm_solver_2m", grid="log_snr", num_steps=6,
                                     batch_size=40), trained)
  np.testing.assert_allclose(np.load(f"{stem}.npz")["x"], drawn["x"], rtol=1e-5, atol=1e-6)
  assert whole["nfe_mean"] == 6


def pathlib_read(path):
  with open(path) as f:
    return f.read()


def test_predictor_corrector_from_the_config(trained):
  config = sample_config(sampler="reverse_diffusion", corrector="langevin", num_steps=5)
  summary = sampling.run(config, trained)
  assert summary["nfe_mean"] == 5 * 2 + 1  # predictor + corrector per step, then Tweedie
  assert (trained / "samples" / "reverse_diffusion_pc_5steps_step6.npz").exists()


@pytest.mark.parametrize("key,value", [("sampler", "dpm_solver_9m"), ("grid", "cubic"),
                                       ("corrector", "metropolis"), ("denoise_final", "maybe")])
def test_unknown_sampling_names_raise_naming_the_key(key, value):
  config = sample_config(**{key: value})
  with pytest.raises(ValueError, match=f"config.sampling.{key}"):
    build.build_sampler(config)
    build.build_time_grid(config, build.build_sde(config))
    build.build_denoise_final(config)


def test_ancestral_start_from_the_config():
  sampler = build.build_sampler(sample_config(sampler="ipndm", ancestral_start_steps=1))
  assert sampler == samplers.Chain(samplers.DDIM(eta=1.0), samplers.IPNDM(), steps=1)
  with pytest.raises(ValueError, match="config.sampling.ancestral_start_steps"):
    build.build_sampler(sample_config(sampler="ipndm", ancestral_start_steps=-1))
