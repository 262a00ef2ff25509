"""EDM's stochastic sampler (Karras et al. 2022, Alg. 2): churn noise in, then a Heun step."""

from __future__ import annotations

import math

import flax.struct
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import _checks
from diffusion_jax.samplers import base
from diffusion_jax.samplers.heun import heun_step


class EDMStochastic(base.AbstractSampler):
  """sigma^ = sigma~ (1 + gamma), x^ = x~ + sqrt(sigma^2 - sigma~^2) S_noise z, then Heun from sigma^ to sigma~_next.

  gamma = min(S_churn / N, sqrt(2) - 1) for sigma~ in [S_tmin, S_tmax], else 0 (Karras et al.
  2022, Alg. 2), in the scaled variables x~ = x/alpha, sigma~ = sigma/alpha of any linear SDE.
  sigma^ is capped at sigma~(T), the largest level the SDE defines. With s_churn = 0 this is Heun.
  """

  s_churn: float = flax.struct.field(pytree_node=False, default=40.0)
  s_tmin: float = flax.struct.field(pytree_node=False, default=0.05)
  s_tmax: float = flax.struct.field(pytree_node=False, default=50.0)
  s_noise: float = flax.struct.field(pytree_node=False, default=1.003)

  denoise_final_default = True
  stochastic = True

  def __post_init__(self):
    _checks.check_nonnegative("s_churn", self.s_churn)
    _checks.check_nonnegative("s_tmin", self.s_tmin)
    _checks.check_nonnegative("s_noise", self.s_noise)
    if not self.s_tmax >= self.s_tmin:
      raise ValueError(f"s_tmax must be >= s_tmin, got s_tmin={self.s_tmin}, s_tmax={self.s_tmax}.")

  def init(self, sde, score_fn, ts, x):
    return base.start_counter(ts)

  def step(self, sde, score_fn, t, t_next, x, counter, *, key):
    sigma, sigma_next = sde.edm_sigma(t), sde.edm_sigma(t_next)
    gamma = jnp.minimum(self.s_churn / counter.num_steps, math.sqrt(2.0) - 1.0)
    gamma = jnp.where((sigma >= self.s_tmin) & (sigma <= self.s_tmax), gamma, 0.0)
    sigma_hat = jnp.minimum(sigma * (1.0 + gamma), sde.edm_sigma(sde.T))
    t_hat = sde.time_at_edm_sigma(sigma_hat)
    # Alg. 2, lines 5-6: raise the noise level from sigma~ to sigma^ with fresh noise.
    noise = jr.normal(key, x.shape, x.dtype)
    x_scaled = x / sde.alpha(t)
    x_hat = x_scaled + jnp.sqrt(jnp.maximum(sigma_hat**2 - sigma**2, 0.0)) * self.s_noise * noise
    # Lines 7-10: a Heun step from sigma^ to sigma~_next.
    x_scaled_next, denoised = heun_step(sde, score_fn, x_hat, sigma_hat, t_hat, sigma_next, t_next)
    x_next = x_scaled_next * sde.alpha(t_next)
    aux = base.StepAux(mean=x_next, denoised=denoised, nfe=base.nfe(2))
    return x_next, aux, base.advance(counter)
