"""Euler's method on the probability-flow ODE in the SDE's own time (Song et al. 2021, eq. 13)."""

from __future__ import annotations

from diffusion_jax.samplers import base


class Euler(base.AbstractSampler):
  """x_next = x + (t_next - t) [f(t) x - 1/2 g(t)^2 score(x, t)]: first order in the step.

  Song et al.'s ODE in t. (Euler in EDM's variables x/alpha, sigma/alpha is ``DDIM(eta=0)``.)
  """

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    del key
    ev = base.evaluate(sde, score_fn, x, t)
    # The SDE's own PF-ODE velocity, fed the score just evaluated (one evaluation, not two).
    velocity = sde.probability_flow(lambda x_, t_: ev.score).velocity(x, t)
    x_next = x + (t_next - t) * velocity
    return x_next, base.StepAux(mean=x_next, denoised=ev.denoised, nfe=base.nfe(1)), state
