"""DDIM (Song, Meng & Ermon 2021, eq. 12) for any linear SDE."""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import _checks, schedules
from diffusion_jax.samplers import base


class DDIM(base.AbstractSampler):
  """x_next = alpha' D + sqrt(sigma'^2 - c^2) eps + c z, c = eta sigma' s / sigma (primes at t_next).

  D and eps are the denoised and noise predictions at (x, t); s^2 = sigma^2 - (alpha/alpha')^2 sigma'^2
  is the variance of the forward kernel from t_next to t. eta = 0 is the deterministic DDIM, the
  Euler method of the PF-ODE in x/alpha and sigma/alpha (Karras et al. 2022); eta = 1 is ancestral
  sampling with the DDPM posterior variance. eta must lie in [0, 1]: beyond 1, c can exceed sigma' and
  the clipped sqrt(sigma'^2 - c^2) leaves DDIM's family of marginal-preserving samplers.
  """

  eta: float = flax.struct.field(pytree_node=False, default=0.0)

  def __post_init__(self):
    _checks.check_unit_interval("eta", self.eta)

  @property
  def stochastic(self) -> bool:
    return self.eta > 0

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    ev = base.evaluate(sde, score_fn, x, t)
    sigma, sigma_next, alpha_next = sde.sigma(t), sde.sigma(t_next), sde.alpha(t_next)
    if self.eta > 0:
      _, s2 = schedules.transition(sde, t, t_next)
      c = self.eta * sigma_next * jnp.sqrt(s2) / sigma
      mean = alpha_next * ev.denoised + jnp.sqrt(jnp.maximum(sigma_next**2 - c**2, 0.0)) * ev.eps
      x_next = mean + c * jr.normal(key, x.shape, x.dtype)
    else:
      mean = x_next = alpha_next * ev.denoised + sigma_next * ev.eps
    return x_next, base.StepAux(mean=mean, denoised=ev.denoised, nfe=base.nfe(1)), state
