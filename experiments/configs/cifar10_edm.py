"""CIFAR-10 unconditional, EDM (Karras et al. 2022, config F "VP"; NVlabs/edm train.py
--cond=0 --arch=ddpmpp --precond=edm): the DDPM++ U-Net of EDM (128 channels, multipliers (2, 2, 2),
4 residual blocks per level, attention at 16x16, dropout 0.13) inside the EDM preconditioning,
trained with EDM's log-normal noise levels (P_mean -1.2, P_std 1.2) and weighting; batch 512, Adam
1e-3 with a 10M-image warm-up, EMA (half-life 0.5M images ~ decay 0.99929 per step of 512), 200M
images; sampled with EDM's deterministic Heun sampler, 18 steps on the rho=7 grid (35 NFE).

  python -m experiments.main --config=experiments/configs/cifar10_edm.py --workdir=DIR
"""

from experiments.configs import cifar10_ddpmpp_vp


def get_config():
  config = cifar10_ddpmpp_vp.get_config()
  config.sde.name = "ve"  # EDM's sigma(t) = t path: the VE SDE with sigma_max 80
  config.sde.sigma_min, config.sde.sigma_max = 0.002, 80.0
  m = config.model
  m.channel_mult, m.dropout, m.resblock = (2, 2, 2), 0.13, "biggan"
  m.time_embedding, m.noise_scale, m.channel_mult_noise = "positional", 1.0, 1
  m.attn_resolutions = (16,)
  t = config.training
  t.loss, t.sigma_data, t.p_mean, t.p_std = "edm", 0.5, -1.2, 1.2
  t.batch_size, t.learning_rate, t.num_steps = 512, 1e-3, 390_625  # 200M images
  t.warmup_steps, t.ema_decay, t.grad_clip_norm = 19_531, 0.99929, 0.0  # 10M images of warm-up
  s = config.sampling
  s.sampler, s.grid, s.num_steps, s.rho, s.corrector = "heun", "edm", 18, 7.0, "none"
  s.t_min = 1e-5  # sigma(t_min) = 0.002 (1 + 1e-4): EDM's sigma_min
  return config
