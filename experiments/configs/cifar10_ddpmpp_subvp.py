"""CIFAR-10, DDPM++ cont. (sub-VP) of Song et al. 2021 (score_sde configs/subvp/
cifar10_ddpmpp_continuous.py): the DDPM++ cont. (VP) recipe on the sub-VP SDE, sampled with the
Euler-Maruyama predictor and no corrector as in the paper's sub-VP rows.

  python -m experiments.main --config=experiments/configs/cifar10_ddpmpp_subvp.py --workdir=DIR
"""

from experiments.configs import cifar10_ddpmpp_vp


def get_config():
  config = cifar10_ddpmpp_vp.get_config()
  config.sde.name = "subvp"
  config.sampling.sampler, config.sampling.corrector = "euler_maruyama", "none"
  return config
