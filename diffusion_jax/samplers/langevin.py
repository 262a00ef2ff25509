"""Langevin dynamics at a fixed noise level: the corrector of Song et al. 2021 (Alg. 4)."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import _checks, schedules
from diffusion_jax.samplers import base


def langevin_chain(sde, score_fn, x, t, key, num_steps, step_size_fn):
  """``num_steps`` of x <- x + eps score(x, t) + sqrt(2 eps) noise at a fixed t.

  ``step_size_fn(score, noise)`` gives eps for one step; step j draws its noise from
  fold_in(key, j). Returns (x, mean of the last step, denoised estimate at the last evaluation).
  """

  def body(j, carry):
    x, _, _ = carry
    noise = jr.normal(jr.fold_in(key, j), x.shape, x.dtype)
    ev = base.evaluate(sde, score_fn, x, t)
    eps = step_size_fn(ev.score, noise)
    mean = x + eps * ev.score
    return mean + jnp.sqrt(2.0 * eps) * noise, mean, ev.denoised

  return jax.lax.fori_loop(0, num_steps, body, (x, x, jnp.zeros_like(x)))


class Langevin(base.AbstractSampler):
  """Langevin corrector at t_next: x <- x + eps score + sqrt(2 eps) noise, eps = 2 (snr |noise|/|score|)^2.

  Used inside ``PredictorCorrector`` (Song et al. 2021, Alg. 2: predictor to t_next, then
  ``num_steps`` corrector steps there) or alone. score_sde also multiplies eps by DDPM's
  1 - beta_i for VP (within 2% of 1 on its 1000-level ladder); that factor belongs to a grid this
  sampler does not assume, so it is left out. ``axis_name`` averages the norms over a named
  ``vmap`` axis as score_sde does (see ``schedules.langevin_step_size``). A fixed ``step_size``
  gives plain (unadjusted) Langevin dynamics, x <- x + eps score + sqrt(2 eps) noise
  (Roberts & Tweedie 1996), the baseline of Song & Ermon 2019, Sec. 3.
  """

  snr: float = flax.struct.field(pytree_node=False, default=0.16)
  num_steps: int = flax.struct.field(pytree_node=False, default=1)
  step_size: float | None = flax.struct.field(pytree_node=False, default=None)
  axis_name: str | None = flax.struct.field(pytree_node=False, default=None)

  denoise_final_default = True
  stochastic = True

  def __post_init__(self):
    _checks.check_positive("snr", self.snr)
    _checks.check_count("num_steps", self.num_steps)
    if self.step_size is not None:
      _checks.check_positive("step_size", self.step_size)

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    if self.step_size is not None:
      step_size_fn = lambda score, noise: jnp.asarray(self.step_size, x.dtype)
    else:
      step_size_fn = lambda score, noise: schedules.langevin_step_size(score, noise, self.snr,
                                                                      self.axis_name)
    x_next, mean, denoised = langevin_chain(sde, score_fn, x, t_next, key, self.num_steps, step_size_fn)
    return x_next, base.StepAux(mean=mean, denoised=denoised, nfe=base.nfe(self.num_steps)), state
