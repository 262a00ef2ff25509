"""--mode=sample: experiments/sampling.py restores a checkpoint and writes samples with any sampler."""

import json
import pathlib

import numpy as np
import pytest

from diffusion_jax import samplers
from experiments import build, sampling
from experiments import run as run_lib
from experiments.configs import toy2d_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tiny")
  run_lib.train_and_evaluate(toy2d_tiny.get_config(), workdir)
  return workdir


def sample_config(**overrides):
  config = toy2d_tiny.get_config()
  config.sampling.num_samples = 40
  for k, v in overrides.items():
    setattr(config.sampling, k, v)
  return config


def test_sample_mode_writes_npz_png_and_json(trained, capsys):
  config = sample_config(sampler="dpm_solver_2m", grid="log_snr", num_steps=6, batch_size=16)
  summary = sampling.run(config, trained)
  stem = trained / "samples" / "dpm_solver_2m_log_snr_6steps_tmin0.001_n40_step6"
  drawn = np.load(f"{stem}.npz")
  assert drawn["x"].shape == (40, 2) and np.all(np.isfinite(drawn["x"]))
  assert np.all(drawn["nfe"] == 6)
  assert pathlib.Path(f"{stem}.png").stat().st_size > 0
  written = json.loads(pathlib.Path(f"{stem}.json").read_text())
  assert written["sampler"]["nfe_mean"] == summary["sampler"]["nfe_mean"] == 6
  assert set(written["model_vs_data"]) == {"energy_distance", "mmd", "sliced_w1"}
  assert f"{stem}.npz" in capsys.readouterr().out  # says where it wrote, with the numbers
  # Chunks of 16 (the last padded) give the same examples as one chunk of 40, bitwise: every
  # example's computation is its own (same key, same program per example).
  sampling.run(sample_config(sampler="dpm_solver_2m", grid="log_snr", num_steps=6,
                             batch_size=40), trained)
  np.testing.assert_array_equal(np.load(f"{stem}.npz")["x"], drawn["x"])


def test_the_same_evaluation_as_the_end_of_training(trained):
  """--mode=sample with the training config reproduces eval/summary.json's numbers: one
  evaluation, one reference convention (same keys for the samples and the exact draws)."""
  config = toy2d_tiny.get_config()
  end_of_training = json.loads((trained / "eval" / "summary.json").read_text())
  again = sampling.run(config, trained)
  for group in ("model_vs_data", "data_vs_data", "floor_band_hi"):
    # Same samples and reference; the sampler program is another compilation of the same
    # per-example computation, so allow float32 rounding of the distances.
    np.testing.assert_allclose([again[group][k] for k in end_of_training[group]],
                               list(end_of_training[group].values()), rtol=1e-4, atol=1e-6)


def test_output_names_encode_what_changes_the_samples():
  base = sampling.output_stem(sample_config(), 6)
  variants = [dict(sampler="ddim", eta=0.5), dict(sampler="ddim", eta=1.0), dict(grid="log_snr"),
              dict(num_steps=7), dict(t_min=1e-4), dict(corrector="langevin"),
              dict(corrector="langevin", snr=0.2), dict(ancestral_start_steps=2),
              dict(denoise_final="false"), dict(num_samples=41), dict(sampler="unipc", order=3),
              dict(grid="edm", rho=5.0)]
  stems = [sampling.output_stem(sample_config(**v), 6) for v in variants]
  assert len(set(stems + [base])) == len(variants) + 1, stems
  assert sampling.output_stem(sample_config(), 7) != base  # the checkpoint step


def test_predictor_corrector_from_the_config(trained):
  config = sample_config(sampler="reverse_diffusion", corrector="langevin", num_steps=5)
  summary = sampling.run(config, trained)
  assert summary["nfe_mean"] == 5 * 2 + 1  # predictor + corrector per step, then Tweedie
  assert (trained / "samples" / "reverse_diffusion_time_uniform_5steps_tmin0.001_"
          "pc-langevin-snr0.16x1_n40_step6.npz").exists()


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


def test_step_bar_counts_sampler_steps_per_chunk_and_keeps_the_furthest():
  """Three chunks of a 4-step sampler: 12 ticks; a step heard twice (two devices) counts once, and
  a chunk whose steps were not heard still completes at its end."""
  from experiments import progress

  with progress.StepBar(num=10, batch_size=4, num_steps=4) as bar:
    for i in (0, 0, 1, 2, 3, 3):
      progress.report_step(i)
    assert bar.bar.n == 4
    bar.update(4)  # first chunk done
    progress.report_step(1)
    assert bar.bar.n == 6
    bar.update(4)
    bar.update(2)  # last chunk: no step heard
    assert bar.bar.n == bar.bar.total == 12
  progress.report_step(0)  # outside a bar: ignored
