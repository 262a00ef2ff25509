"""MNIST (28x28x1, prepared TFDS data): a DDPM++-style U-Net (64 channels, levels 28, 14, 7,
attention at 7x7) on the VP SDE; a GPU-sized run (20k steps), on CPU about 1 s per step.

  python -m experiments.main --config=experiments/configs/mnist.py --workdir=DIR \
      --config.data.tfds_data_dir=~/tensorflow_datasets
"""

from experiments.configs import image_base


def get_config():
  config = image_base.get_config()
  d = config.data
  d.name, d.source, d.tfds_name, d.num_test = "mnist", "tfds", "mnist", 10_000
  m = config.model
  m.model_channels, m.channel_mult, m.num_res_blocks, m.attn_resolutions = 64, (1, 2, 2), 2, (7,)
  m.dropout = 0.1
  t = config.training
  t.num_steps, t.batch_size, t.learning_rate, t.warmup_steps = 20_000, 128, 1e-3, 500
  t.ema_decay, t.checkpoint_every, t.sample_every = 0.9999, 2_000, 2_000
  config.sampling.num_samples = 10_000
  lc = config.likelihood
  lc.num_levels, lc.num_samples = 256, 1_000
  return config
