"""A class-conditional MLP on a labelled 2-D mixture of three unequal, overlapping classes.

  python -m experiments.main --config=experiments/configs/toy2d_conditional.py \
      --workdir=workdirs/toy2d_conditional

Trained with label dropout (the null label 3 stands for "unconditional"). eval/summary.json
reports, per class, the energy distance between the model's samples of that class and exact
draws of it, next to the floor band (mean + 3 std of exact-vs-exact distances at the same size),
and the same for the null label against the whole mixture; all classes are drawn in one sharded
batch with a different label per example.
"""

from experiments.configs import toy2d


def get_config():
  config = toy2d.get_config()
  config.data.name = "labelled_mixture"
  # Three classes of weights 0.5 / 0.3 / 0.2 whose 2-std ellipses overlap.
  config.data.mixture_weights = (0.5, 0.3, 0.2)
  config.data.mixture_means = ((-0.8, 0.0), (0.4, 0.6), (0.6, -0.6))
  config.data.mixture_variances = ((0.25, 0.15), (0.1, 0.2), (0.08, 0.08))
  config.model.num_classes = 3
  config.model.label_dropout = 0.1
  config.model.hidden_sizes = (128, 128, 128)
  config.training.num_steps = 6_000
  config.training.checkpoint_every = 2_000
  config.sampling.num_samples = 2_000  # per class, and for the null label
  config.eval.floor_repeats = 10
  return config
