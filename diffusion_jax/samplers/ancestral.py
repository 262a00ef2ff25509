"""Ancestral sampling: DDPM for VP (Ho et al. 2020, Alg. 2) and its NCSN form for VE (Song et al. 2021, App. F)."""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import _checks, schedules
from diffusion_jax.samplers import base


class Ancestral(base.AbstractSampler):
  """x_next = (x + s^2 score(x, t)) / a + std noise, with the exact forward kernel (a, s^2) from t_next to t.

  The mean is the posterior mean of q(x_{t_next} | x_t, x0) at Tweedie's x0: DDPM's
  (x - beta_i/sqrt(1 - alpha-bar_i) eps)/sqrt(1 - beta_i) for VP, x + (sigma_i^2 - sigma_{i-1}^2) score
  for VE. ``posterior_variance=True`` draws std^2 = s^2 sigma_{t_next}^2 / sigma_t^2 (DDPM's beta~,
  and the NCSN ancestral variance); False draws std^2 = s^2 (DDPM's sigma^2 = beta choice).
  """

  posterior_variance: bool = flax.struct.field(pytree_node=False, default=True)

  denoise_final_default = True
  stochastic = True

  def __post_init__(self):
    _checks.check_bool("posterior_variance", self.posterior_variance)

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    a, s2 = schedules.transition(sde, t, t_next)
    ev = base.evaluate(sde, score_fn, x, t)
    mean = (x + s2 * ev.score) / a
    var = s2 * (sde.sigma(t_next) / sde.sigma(t)) ** 2 if self.posterior_variance else s2
    x_next = mean + jnp.sqrt(var) * jr.normal(key, x.shape, x.dtype)
    return x_next, base.StepAux(mean=mean, denoised=ev.denoised, nfe=base.nfe(1)), state
