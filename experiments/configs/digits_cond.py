"""The digits U-Net of ``digits.py``, class-conditional: one network for p(x | y) and p(x), trained
with label dropout (Ho & Salimans 2022: the label is replaced by the learned null label 10 on 10% of
the examples), for classifier-free guidance and autoguidance.

  python -m experiments.main --config=experiments/configs/digits_cond.py --workdir=workdirs/digits_cond

The end-of-training evaluation samples the conditional model unguided (gamma = 1), ten classes in
turn, and reports the classifier's ``label_accuracy`` next to the usual scores. Guided sampling is
``--mode=sample`` with ``--config.sampling.guidance.kind=cfg --config.sampling.guidance.gamma=...``
(or ``experiments/figures/guidance_sweep.py``, the Ho & Salimans sweep). Four checkpoints are kept
(steps 400-1,600): the step-400 EMA is the shorter-trained guide of autoguidance.
"""

from experiments.configs import digits


def get_config():
  config = digits.get_config()
  config.model.num_classes = 10
  config.model.label_dropout = 0.1
  config.training.keep_checkpoints = 4
  return config
