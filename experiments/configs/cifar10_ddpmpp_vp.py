"""CIFAR-10, DDPM++ cont. (VP) of Song et al. 2021 (score_sde configs/vp/cifar10_ddpmpp_continuous.py):
128 base channels, multipliers (1, 2, 2, 2), 4 BigGAN residual blocks per level, attention at 16x16,
dropout 0.1, positional embedding of 999 t, skip rescaling; batch 128, Adam 2e-4 with 5,000 warm-up
steps, gradient clipping 1, EMA 0.9999, 1.3M steps; random flips. Sampled as the paper's PC sampler
(reverse diffusion + Langevin corrector, snr 0.16, 1,000 steps). For a GPU/TPU machine; it needs the
prepared TFDS cifar10 (``tfds build cifar10`` or --config.data.tfds_download=True once).

  python -m experiments.main --config=experiments/configs/cifar10_ddpmpp_vp.py --workdir=DIR \
      --config.data.tfds_data_dir=~/tensorflow_datasets
"""

from experiments.configs import image_base


def get_config():
  config = image_base.get_config()
  d = config.data
  d.name, d.source, d.tfds_name, d.random_flip = "cifar10", "tfds", "cifar10", True
  d.num_test = 10_000
  m = config.model
  m.model_channels, m.channel_mult, m.num_res_blocks = 128, (1, 2, 2, 2), 4
  m.attn_resolutions, m.dropout, m.resblock = (16,), 0.1, "biggan"
  m.time_embedding, m.noise_scale, m.skip_rescale = "positional", 999.0, True
  t = config.training
  t.num_steps, t.batch_size, t.learning_rate = 1_300_000, 128, 2e-4
  t.lr_schedule, t.warmup_steps, t.grad_clip_norm, t.ema_decay = "constant", 5_000, 1.0, 0.9999
  t.log_every, t.checkpoint_every, t.keep_checkpoints, t.sample_every = 1_000, 50_000, 3, 50_000
  s = config.sampling
  s.sampler, s.grid, s.num_steps, s.t_min = "reverse_diffusion", "time_uniform", 1_000, 1e-3
  s.corrector, s.snr, s.corrector_steps = "langevin", 0.16, 1
  s.num_samples, s.batch_size = 50_000, 1_000
  config.eval.features = "inception"  # FID: point config.eval.inception_weights at the file
  lc = config.likelihood
  lc.num_levels, lc.num_samples, lc.batch_size, lc.rtol, lc.atol = 256, 10_000, 500, 1e-5, 1e-5
  return config
