"""Annealed Langevin dynamics on the digits (Song & Ermon 2019): a noise-conditional score network
(NCSN, conditioned on log sigma) trained by denoising score matching over the VE SDE's noise
levels sigma_min..sigma_max, sampled by annealed Langevin over a geometric ladder of them.

  python -m experiments.main --config=experiments/configs/digits_ncsn.py --workdir=workdirs/digits_ncsn

The digits job's data, batch, schedule and EMA (digits.py); the DSM loss with eps-prediction,
which on the VE SDE is Song & Ermon's sigma^2-weighted score matching. Sampling follows NCSNv2's
choices (Song & Ermon 2020): many levels, few steps per level (50 x 5 = 250 network calls), and
the final denoising step. At 250 calls a sample, 500 samples are scored (the floors at n = 500).
"""

from experiments.configs import digits


def get_config():
  config = digits.get_config()
  config.sde.name = "ve"
  config.sde.sigma_min, config.sde.sigma_max = 0.01, 10.0  # ~ the digits' largest pixel distance
  config.model.name = "ncsn"
  config.model.time_embedding = "fourier"
  config.model.noise_scale = 1.0  # the network sees log sigma
  config.training.loss = "dsm"  # with image_base's eps-prediction
  s = config.sampling
  s.sampler = "annealed_langevin"
  s.grid = "log_snr"  # geometric in sigma for VE
  s.num_steps = 50  # noise levels
  s.langevin_steps = 5
  s.langevin_step_lr = 2e-5  # eps_i = 2e-5 sigma_i^2 / sigma_min^2: 0.2 sigma_i^2 at every level
  s.denoise_final = "true"  # the last Tweedie step (Jolicoeur-Martineau et al. 2021)
  s.num_samples = 500
  return config
