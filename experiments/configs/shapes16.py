"""Procedural shapes at 16x16 (colour; factors shape, colour, scale, rotation, x, y), VP SDE U-Net.

  python -m experiments.main --config=experiments/configs/shapes16.py --workdir=workdirs/shapes16
"""

from experiments.configs import image_base


def get_config():
  config = image_base.get_config()
  config.data.name = "shapes"
  config.data.resolution = 16
  config.model.model_channels = 32
  config.model.channel_mult = (1, 2, 2)  # 16, 8, 4
  config.model.attn_resolutions = (4,)
  config.training.num_steps = 6_000
  config.likelihood.num_levels = 256
  config.likelihood.num_samples = 500
  return config
