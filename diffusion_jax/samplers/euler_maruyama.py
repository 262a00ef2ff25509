"""Euler-Maruyama on the reverse-time SDE (Song et al. 2021, Sec. 4.1; score_sde's EulerMaruyamaPredictor)."""

from __future__ import annotations

import jax.numpy as jnp
import jax.random as jr

from diffusion_jax.samplers import base


class EulerMaruyama(base.AbstractSampler):
  """x_next = x - [f(t) x - g(t)^2 score(x, t)] dt + g(t) sqrt(dt) noise, dt = t - t_next > 0.

  The reverse SDE dx = [f - g^2 score] dt + g dw̄ (Anderson 1982) stepped with its left-point drift.
  """

  denoise_final_default = True  # score_sde returns the noiseless mean of the last step
  stochastic = True

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    dt = t - t_next
    ev = base.evaluate(sde, score_fn, x, t)
    reverse_drift = sde.drift_coef(t) * x - sde.diffusion_squared(t) * ev.score
    mean = x - reverse_drift * dt
    noise = jr.normal(key, x.shape, x.dtype)
    x_next = mean + jnp.sqrt(sde.diffusion_squared(t) * dt) * noise
    return x_next, base.StepAux(mean=mean, denoised=ev.denoised, nfe=base.nfe(1)), state
