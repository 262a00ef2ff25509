"""Independent key streams of a run, derived from config.seed, one per purpose.

Training and --mode=sample / --mode=eval_likelihood share them, so the end-of-training evaluation
and a later sampling run draw the same examples and compare them with the same reference.
"""

import jax
import jax.random as jr
import ml_collections

INIT, TRAIN, DATA, SAMPLE, EVAL, LIKELIHOOD = range(6)


def key(config: ml_collections.ConfigDict, purpose: int) -> jax.Array:
  return jr.fold_in(jr.key(config.seed), purpose)


def sampling_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The key of the model's samples (example n: fold_in(key, n)), at the end of training and in --mode=sample."""
  return key(config, SAMPLE)


def eval_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The key of the evaluation's exact reference and floor draws."""
  return key(config, EVAL)


def likelihood_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The key of --mode=eval_likelihood (its test examples and estimator noise)."""
  return key(config, LIKELIHOOD)
