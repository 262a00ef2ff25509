"""The main image job: a DDPM++-style U-Net on scikit-learn's 8x8 handwritten digits (embedded in the
scikit-learn wheel: works offline), VP SDE, sampled with DPM-Solver++(2M), evaluated against the
train-vs-test floor with the repo's digits classifier.

  python -m experiments.main --config=experiments/configs/digits.py --workdir=workdirs/digits
"""

from experiments.configs import image_base


def get_config():
  return image_base.get_config()  # image_base holds the digits values
