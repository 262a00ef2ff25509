"""Time embeddings: maps a batch of diffusion times t (B,) to features (B, features).

Both embeddings are fixed functions of t (no trainable parameters); the network learns on top.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _check_time_batch(t: jax.Array) -> None:
  if t.ndim != 1:
    raise ValueError(f"t must have shape (B,), got {t.shape}.")


def _check_even(name: str, value: int) -> None:
  if value <= 0 or value % 2:
    raise ValueError(f"{name} must be a positive even integer, got {value!r}.")


class GaussianFourierEmbedding(nn.Module):
  """Random Fourier features of time: [sin(2 pi w t), cos(2 pi w t)] with fixed w ~ N(0, scale^2).

  Tancik et al. 2020 ("Fourier features let networks learn high frequency functions"), used for
  continuous time by Song et al. 2021. The frequencies are drawn once from ``seed`` with NumPy's
  stable generator and baked in as constants: they are hyperparameters, not state, so they never
  enter the optimiser (weight decay cannot drift them) or the checkpoint.
  """

  features: int = 64
  scale: float = 16.0
  seed: int = 0

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    _check_even("features", self.features)
    _check_time_batch(t)
    w = self.scale * np.random.default_rng(self.seed).standard_normal(self.features // 2)
    angles = 2.0 * math.pi * t[:, None] * jnp.asarray(w, t.dtype)[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class SinusoidalEmbedding(nn.Module):
  """Transformer position encoding of time (Vaswani et al. 2017; Ho et al. 2020):

  [sin(s t / P^(k/K)), cos(s t / P^(k/K))], k = 0..K-1, K = features / 2, P = max_period.
  ``time_scale`` s = 1000 maps t in [0, 1] to the step index range of a 1000-step DDPM.
  """

  features: int = 64
  max_period: float = 10_000.0
  time_scale: float = 1000.0

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    _check_even("features", self.features)
    _check_time_batch(t)
    half = self.features // 2
    freqs = np.exp(-math.log(self.max_period) * np.arange(half) / half)
    angles = self.time_scale * t[:, None] * jnp.asarray(freqs, t.dtype)[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
