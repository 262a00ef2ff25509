"""Metrics over a classifier's probabilities p(y | x): Inception Score, class balance, confidence.

    IS = exp(E_x KL(p(y | x) || p(y))),  p(y) = E_x p(y | x)

computed on each of ``num_splits`` consecutive splits; the mean and std over splits are reported
(Salimans et al. 2016, Sec. 4; the split convention of their code). It is 1 when every sample
gets the same distribution and K when the samples are confidently and evenly spread over K classes.
"""

from __future__ import annotations

import numpy as np

from diffusion_jax.metrics._host import as_features, check_int


def _check_probs(probs) -> np.ndarray:
  p = as_features("probs", probs, min_rows=1)
  # Softmax outputs sum to 1 up to float32 rounding over K terms.
  if (p < 0).any() or np.abs(p.sum(axis=1) - 1.0).max() > 1e-3:
    raise ValueError("probs must be class probabilities: entries >= 0 and each row summing to 1 "
                     "(apply a softmax to logits first).")
  return p


def inception_score(probs, num_splits: int = 10) -> tuple[float, float]:
  """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016); probs (N, K)."""
  p = _check_probs(probs)
  num_splits = check_int("num_splits", num_splits)
  if num_splits > p.shape[0]:
    raise ValueError(f"num_splits must be <= the number of samples {p.shape[0]}, got {num_splits}.")
  scores = []
  for part in np.array_split(p, num_splits):
    marginal = part.mean(axis=0, keepdims=True)
    # 0 log 0 = 0: entries with p = 0 contribute nothing to the KL.
    logs = np.where(part > 0, np.log(np.where(part > 0, part, 1.0)) - np.log(
        np.where(part > 0, marginal, 1.0)), 0.0)
    scores.append(np.exp(np.mean(np.sum(part * logs, axis=1))))
  scores = np.asarray(scores)
  return float(scores.mean()), float(scores.std(ddof=1)) if num_splits > 1 else 0.0


def class_histogram(probs) -> np.ndarray:
  """Counts of argmax_y p(y | x_i) per class, (K,) int."""
  p = _check_probs(probs)
  return np.bincount(p.argmax(axis=1), minlength=p.shape[1])


def class_entropy_bits(probs) -> float:
  """H = -sum_y q_y log2 q_y of the predicted-class frequencies q (argmax of each row), in bits.

  log2 K for perfectly balanced predictions over K classes (3.32 bits for 10 digits), 0 when every
  sample is read as the same class (mode collapse).
  """
  counts = class_histogram(probs)
  q = counts[counts > 0] / counts.sum()
  return float(-np.sum(q * np.log2(q)))


def confident_fraction(probs, threshold: float = 0.9) -> float:
  """Share of samples with max_y p(y | x) > threshold: those the classifier reads as one class."""
  if not 0.0 <= threshold < 1.0:
    raise ValueError(f"threshold must lie in [0, 1), got {threshold!r}.")
  return float(np.mean(_check_probs(probs).max(axis=1) > threshold))
