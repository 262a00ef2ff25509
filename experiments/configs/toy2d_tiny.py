"""The default 2-D experiment shrunk to seconds: for smoke tests, not for results."""

from experiments.configs import toy2d


def get_config():
  config = toy2d.get_config()
  config.model.hidden_sizes = (32, 32)
  config.model.embed_dim = 16
  config.training.num_steps = 6
  config.training.batch_size = 64
  config.training.warmup_steps = 2
  config.training.log_every = 2
  config.training.checkpoint_every = 2
  config.training.keep_checkpoints = 2
  config.sampling.num_samples = 256
  config.sampling.num_steps = 20
  config.eval.num_projections = 32
  config.eval.floor_repeats = 2
  config.likelihood.num_samples = 64
  return config
