"""The class-conditional digits U-Net of ``digits_cond.py`` trained on the digits 0-8 only: the
frozen model of the tuning protocol (``experiments/tune.py``,
``experiments/configs/tune_digits.py``).
Its label table keeps a row for 9 that training never reads (a label the model never saw), and
the null label 10 is trained by label dropout as before.

  python -m experiments.main --config=experiments/configs/digits_holdout.py \
      --workdir=workdirs/digits_holdout

The end-of-training evaluation draws the classes 0-8 in turn and scores them against the test
images of 0-8.
"""

from experiments.configs import digits_cond


def get_config():
  config = digits_cond.get_config()
  config.data.holdout_classes = (9,)
  config.training.keep_checkpoints = 2
  return config
