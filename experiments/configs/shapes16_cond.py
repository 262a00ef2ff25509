"""The shapes U-Net of ``shapes16.py``, conditioned on the shape (circle, square, triangle, heart)
with 10% label dropout (the null label 4 is the unconditional model): for classifier-free
guidance and autoguidance on the shapes, and colorization through the null label.

  python -m experiments.main --config=experiments/configs/shapes16_cond.py --workdir=workdirs/shapes16_cond

The end-of-training evaluation draws the four shapes in turn and reports ``label_accuracy`` (the
shape reader's agreement with the requested shape) next to the factor readers' scores.
"""

from experiments.configs import shapes16


def get_config():
  config = shapes16.get_config()
  config.model.num_classes = 4
  config.model.label_dropout = 0.1
  config.training.keep_checkpoints = 4
  return config
