"""Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1): NCSN's sampler, usable on its own."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax import _checks
from diffusion_jax.samplers import base
from diffusion_jax.samplers.langevin import langevin_chain


def annealed_step_size(sigma: jax.Array, sigma_last: jax.Array, step_lr: float) -> jax.Array:
  """eps_i = min(step_lr sigma_i^2 / sigma_L^2, 2 sigma_i^2) (Song & Ermon 2019, Alg. 1, with a cap).

  Alg. 1 moves x by eps/2 score + sqrt(eps) z. The score of p_t is (1/sigma_t^2)-Lipschitz
  (-hess log p_t <= I/sigma_t^2 for x_t = alpha x0 + sigma_t noise), and on its stiffest
  direction, a Gaussian of variance sigma^2, the step is the linear map
      x <- (1 - eps/(2 sigma^2)) x + sqrt(eps) z,
  which contracts for 0 < eps < 4 sigma^2 (the stability boundary) with stationary variance
      v = eps / (1 - (1 - eps/(2 sigma^2))^2) = sigma^2 / (1 - eps/(4 sigma^2)).
  The cap at 2 sigma^2, half-way to the boundary, is where the factor 1 - eps/(2 sigma^2) is zero:
  one step forgets x entirely; beyond it the chain overshoots (a negative factor) and v grows
  without bound towards 4 sigma^2. The cap is inactive for the paper's setting
  (step_lr / sigma_L^2 = 0.2) and keeps a step_lr tuned for one ladder from diverging on another
  (e.g. sub-VP, whose sigma(t_min) is the square of VP's).
  """
  return jnp.minimum(step_lr * (sigma / sigma_last) ** 2, 2.0 * sigma**2)


class AnnealedLangevin(base.AbstractSampler):
  """At each level t_next: ``num_steps`` of x <- x + eps/2 score + sqrt(eps) noise, eps = step_lr sigma^2/sigma_L^2.

  sigma = sigma(t_next) and sigma_L = sigma(t_N) at the end of the grid, so step sizes shrink
  with the noise level as in Song & Ermon 2019, Alg. 1 (their alpha_i is our eps; their
  x + alpha/2 score + sqrt(alpha) z is ``langevin_chain`` with step eps/2). eps is capped at
  2 sigma^2 (``annealed_step_size``: the chain is stable below 4 sigma^2; the cap is where one step
  on the stiffest direction forgets its start). On a grid from T to t_min the chain visits the
  levels t_1, ..., t_N, starting from a prior draw at t_0 = T.
  """

  step_lr: float = flax.struct.field(pytree_node=False, default=2e-5)
  num_steps: int = flax.struct.field(pytree_node=False, default=100)

  denoise_final_default = True  # the denoising step of Jolicoeur-Martineau et al. 2021 / NCSNv2
  stochastic = True

  def __post_init__(self):
    _checks.check_positive("step_lr", self.step_lr)
    _checks.check_count("num_steps", self.num_steps)

  def init(self, sde, score_fn, ts, x):
    return sde.sigma(ts[-1])

  def step(self, sde, score_fn, t, t_next, x, sigma_last, *, key):
    eps = annealed_step_size(sde.sigma(t_next), sigma_last, self.step_lr)
    # langevin_chain steps with x + e score + sqrt(2 e) noise; Alg. 1 uses e = eps / 2.
    step_size_fn = lambda score, noise: 0.5 * eps
    x_next, mean, denoised = langevin_chain(sde, score_fn, x, t_next, key, self.num_steps, step_size_fn)
    return x_next, base.StepAux(mean=mean, denoised=denoised, nfe=base.nfe(self.num_steps)), sigma_last
