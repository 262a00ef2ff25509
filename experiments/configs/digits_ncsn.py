"""Annealed Langevin dynamics on the digits (Song & Ermon 2019): a noise-conditional score network
(NCSN) trained by denoising score matching over a geometric ladder of noise levels (the VE SDE's
sigma_min..sigma_max), sampled by annealed Langevin over that ladder.

  python -m experiments.main --config=experiments/configs/digits_ncsn.py --workdir=workdirs/digits_ncsn
"""

from experiments.configs import image_base


def get_config():
  config = image_base.get_config()
  config.sde.name = "ve"
  config.sde.sigma_min, config.sde.sigma_max = 0.01, 10.0
  config.model.name = "ncsn"
  config.model.time_embedding = "fourier"
  config.model.noise_scale = 1.0  # the network sees log sigma
  config.sampling.sampler = "annealed_langevin"
  config.sampling.grid = "log_snr"  # geometric in sigma for VE
  config.sampling.num_steps = 100  # noise levels
  config.sampling.langevin_steps = 5
  config.sampling.langevin_step_lr = 2e-5
  config.sampling.denoise_final = "true"  # the last Tweedie step (Jolicoeur-Martineau et al. 2021)
  return config
