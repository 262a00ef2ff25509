"""Langevin dynamics at a fixed noise level: the corrector of Song et al. 2021 (Alg. 4)."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import _checks
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


def langevin_step_size(score: jax.Array, noise: jax.Array, snr: float,
                       axis_name: str | None = None) -> jax.Array:
  """eps = 2 (snr |noise| / |score|)^2: the signal-to-noise rule of Song et al. 2021, Alg. 4.

  With ``axis_name`` None the norms are per example, so each sample is independent of its batch.
  Song et al.'s code averages the norms over the batch; pass the name of the ``vmap`` axis to do
  the same (that couples the examples of a batch: samples then depend on chunking and padding).
  Per-example norms are what the rule means in high dimension, where they concentrate; in 2-D
  |score| is near 0 close to every mode and the step explodes there (``Langevin(expected_norms=True)``
  is the per-example rule that works in low dimension).
  """
  score_norm = jnp.sqrt(jnp.sum(score**2))
  noise_norm = jnp.sqrt(jnp.sum(noise**2))
  if axis_name is not None:
    score_norm = jax.lax.pmean(score_norm, axis_name)
    noise_norm = jax.lax.pmean(noise_norm, axis_name)
  # A zero score (exactly at a mode) would give an infinite step; use the tiniest positive norm.
  score_norm = jnp.maximum(score_norm, jnp.finfo(score_norm.dtype).tiny)
  return 2.0 * (snr * noise_norm / score_norm) ** 2


def expected_norms_step_size(sigma: jax.Array, snr: float) -> jax.Array:
  """eps = 2 snr^2 sigma_t^2: the SNR rule with both norms at their high-dimensional values.

  |noise|^2 = d and, for x_t = alpha x0 + sigma noise, E|score|^2 = E|E[noise | x_t]|^2 / sigma^2,
  which is d / sigma^2 while the noise dominates; the rule's ratio is then 2 snr^2 sigma^2 in any
  dimension, per example, with nothing estimated from one noisy draw. It stays inside the
  stability region of the stiffest direction (eps < 2 sigma^2 for this x + eps score +
  sqrt(2 eps) z form) for every snr < 1.
  """
  return 2.0 * snr**2 * sigma**2


class Langevin(base.AbstractSampler):
  """Langevin corrector at t_next: x <- x + eps score + sqrt(2 eps) noise, eps = 2 (snr |noise|/|score|)^2.

  Used inside ``PredictorCorrector`` (Song et al. 2021, Alg. 2: predictor to t_next, then
  ``num_steps`` corrector steps there) or alone. score_sde also multiplies eps by DDPM's
  1 - beta_i for VP (within 2% of 1 on its 1000-level ladder); that factor belongs to a grid this
  sampler does not assume, so it is left out. Three step rules:
    - default: per-example norms (``langevin_step_size``); ``axis_name`` averages them over a
      named ``vmap`` axis as score_sde does, which couples the examples of a batch;
    - ``expected_norms=True``: eps = 2 snr^2 sigma(t)^2 (``expected_norms_step_size``), per
      example and right in low dimension: with the exact score of a 2-D mixture, predictor-corrector
      at 250 steps reaches the two-sample floor (energy -8.8e-4 VP, 1.6e-3 VE against a floor band
      of -2.5e-4 +- 1.4e-3), where per-example norms give 0.22 and 0.26;
    - a fixed ``step_size``: plain (unadjusted) Langevin dynamics (Roberts & Tweedie 1996), the
      baseline of Song & Ermon 2019, Sec. 3.
  """

  snr: float = flax.struct.field(pytree_node=False, default=0.16)
  num_steps: int = flax.struct.field(pytree_node=False, default=1)
  step_size: float | None = flax.struct.field(pytree_node=False, default=None)
  axis_name: str | None = flax.struct.field(pytree_node=False, default=None)
  expected_norms: bool = flax.struct.field(pytree_node=False, default=False)

  denoise_final_default = True
  stochastic = True

  def __post_init__(self):
    _checks.check_positive("snr", self.snr)
    _checks.check_count("num_steps", self.num_steps)
    _checks.check_bool("expected_norms", self.expected_norms)
    if self.step_size is not None:
      _checks.check_positive("step_size", self.step_size)
    if sum([self.step_size is not None, self.axis_name is not None, self.expected_norms]) > 1:
      raise ValueError("Langevin takes one step rule: step_size, axis_name or expected_norms, got "
                       f"step_size={self.step_size}, axis_name={self.axis_name}, "
                       f"expected_norms={self.expected_norms}.")

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    if self.step_size is not None:
      step_size_fn = lambda score, noise: jnp.asarray(self.step_size, x.dtype)
    elif self.expected_norms:
      eps = expected_norms_step_size(sde.sigma(t_next), self.snr)
      step_size_fn = lambda score, noise: eps
    else:
      step_size_fn = lambda score, noise: langevin_step_size(score, noise, self.snr, self.axis_name)
    x_next, mean, denoised = langevin_chain(sde, score_fn, x, t_next, key, self.num_steps, step_size_fn)
    return x_next, base.StepAux(mean=mean, denoised=denoised, nfe=base.nfe(self.num_steps)), state
