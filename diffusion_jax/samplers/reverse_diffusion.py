"""The reverse-diffusion predictor of Song et al. 2021, App. E (score_sde's ReverseDiffusionPredictor)."""

from __future__ import annotations

import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import schedules
from diffusion_jax.samplers import base


class ReverseDiffusion(base.AbstractSampler):
  """x_next = x - (a - 1) x + s^2 score(x, t) + s noise, with the exact forward kernel (a, s^2) from t_next to t.

  Song et al. discretise the forward SDE as x_i = x_{i-1} + f_i + G_i z and reverse it as
  x_{i-1} = x_i - f_i + G_i^2 score + G_i z. Here f_i = (a - 1) x and G_i = s come from
  ``schedules.transition``: sqrt(1 - beta_i) and sqrt(beta_i) for VP, 1 and
  sqrt(sigma_i^2 - sigma_{i-1}^2) for VE, on any grid (stable: 0 < a <= 1).
  """

  denoise_final_default = True
  stochastic = True

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    a, s2 = schedules.transition(sde, t, t_next)
    ev = base.evaluate(sde, score_fn, x, t)
    mean = (2.0 - a) * x + s2 * ev.score
    x_next = mean + jnp.sqrt(s2) * jr.normal(key, x.shape, x.dtype)
    return x_next, base.StepAux(mean=mean, denoised=ev.denoised, nfe=base.nfe(1)), state
