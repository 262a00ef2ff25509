"""CIFAR-10, NCSN++ cont. (VE) of Song et al. 2021 (score_sde configs/ve/cifar10_ncsnpp_continuous.py):
VE SDE with sigma in [0.01, 50]; 128 base channels, multipliers (1, 2, 2, 2), 4 BigGAN residual
blocks per level, attention at 16x16, FIR resampling (1, 3, 3, 1), progressive output skip and
residual input, Gaussian Fourier embedding (scale 16) of log sigma; EMA 0.999; sampled with the PC
sampler (reverse diffusion + Langevin corrector, snr 0.16, 1,000 steps).

  python -m experiments.main --config=experiments/configs/cifar10_ncsnpp_ve.py --workdir=DIR
"""

from experiments.configs import cifar10_ddpmpp_vp


def get_config():
  config = cifar10_ddpmpp_vp.get_config()
  config.sde.name = "ve"
  config.sde.sigma_min, config.sde.sigma_max = 0.01, 50.0
  m = config.model
  m.time_embedding, m.fourier_scale, m.noise_scale = "fourier", 16.0, 1.0
  m.encoder, m.decoder, m.resample_filter = "residual", "skip", (1, 3, 3, 1)
  config.training.ema_decay = 0.999
  return config
