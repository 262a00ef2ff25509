"""Tuning the frozen digits model of ``digits_holdout.py`` (trained on 0-8) to the held-out 9, one
config per method (``experiments/tune.py``):

  python -m experiments.main --mode=tune --config=experiments/configs/tune_digits.py:prompt \
      --workdir=workdirs/tune/prompt_k5 [--config.tune.num_shots=10]

  prompt       the label 9's embedding row (textual inversion)
  dreambooth   every weight, with the prior preservation loss
               (--config.tune.prior_preservation=False without it)
  lora         rank-2 updates of the attention and embedding kernels (0.86% of the weights)
  film         per-channel scale and shift of each residual block for label 9
  controlnet   a ControlNet for the 4x4 average pooling of the image

The network, SDE and data sections are the base run's (a tuning run checks them against
config.tune.base_workdir's saved config); the training section is the tuning's own.
"""

import ml_collections

from experiments.configs import digits_holdout

# Per method: (steps, batch size, learning rate), each chosen to tune in a few minutes on this
# project's 2-core CPU.
_RECIPES = {
    "prompt": (2_000, 32, 3e-2),
    "dreambooth": (400, 32, 1e-4),
    "lora": (400, 32, 2e-3),
    "film": (400, 32, 1e-2),
    "controlnet": (1_200, 64, 1e-3),
}


def get_config(method: str = "prompt"):
  if method not in _RECIPES:
    raise ValueError(f"tune_digits.py:<method> takes one of {sorted(_RECIPES)}, got {method!r}.")
  config = digits_holdout.get_config()
  t = config.tune = ml_collections.ConfigDict()
  t.method = method
  t.base_workdir = "workdirs/digits_holdout"
  t.base_step = 0  # 0: the base run's newest checkpoint
  t.label = 9  # the held-out class (config.data.holdout_classes)
  t.num_shots = 5  # K: the training images of the label a method sees
  t.shot_seed = 0
  t.prompt_per_block = True  # prompt: one vector per residual block (P+); False: one vector
  t.prompt_init = "mean"  # prompt: start from the mean of the trained labels' rows ("row": row 9)
  t.prior_preservation = True  # dreambooth: half of each batch the frozen model's other classes
  t.num_prior = 450  # dreambooth: the frozen model's samples of 0-8 (50 per class)
  t.lora_rank = 2  # 8,896 parameters: 0.86% of the 1.03M
  t.lora_alpha = 0.0  # 0: alpha = rank (a scale of 1)
  t.lora_targets = r"(^|/)(qkv|proj|emb_dense\d|emb_proj)/kernel$"  # attention, embeddings
  t.control_size = 4  # controlnet: the 4x4 average pooling of the 8x8 image
  t.hint_channels = 16

  tc = config.training
  tc.num_steps, tc.batch_size, tc.learning_rate = _RECIPES[method]
  tc.warmup_steps = 20
  tc.lr_schedule = "constant"
  tc.ema_power, tc.ema_decay = 0.0, 0.0  # no averaging: the tuned part as trained
  tc.log_every = 50
  tc.checkpoint_every = tc.num_steps
  tc.keep_checkpoints = 1
  tc.sample_every = 0
  config.eval.bits_per_dim = False
  config.eval.tune_num_samples = 200  # draws of the held-out label
  config.eval.tune_num_forgetting = 450  # draws of the other classes (50 per class)
  config.sampling.lora_merged = True  # lora: sample the merged kernels
  return config
