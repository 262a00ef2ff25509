"""Heun's second-order method on the PF-ODE in EDM's variables (Karras et al. 2022, Alg. 1)."""

from __future__ import annotations

from diffusion_jax.samplers import base


def heun_step(sde, score_fn, x_scaled, sigma, t, sigma_next, t_next):
  """One Heun step of dx~/dsigma~ = (x~ - denoised)/sigma~ from sigma to sigma_next (scaled x~ = x/alpha).

  Two evaluations; returns (x~_next, denoised at the second evaluation).
  """
  ev = base.evaluate(sde, score_fn, x_scaled * sde.alpha(t), t)
  # Euler predictor (Alg. 1, lines 4-5).
  d = (x_scaled - ev.denoised) / sigma
  x_euler = x_scaled + (sigma_next - sigma) * d
  # Trapezoidal corrector (lines 7-8); the grid never reaches sigma~ = 0, where EDM skips it.
  ev_next = base.evaluate(sde, score_fn, x_euler * sde.alpha(t_next), t_next)
  d_next = (x_euler - ev_next.denoised) / sigma_next
  x_heun = x_scaled + (sigma_next - sigma) * 0.5 * (d + d_next)
  return x_heun, ev_next.denoised


class Heun(base.AbstractSampler):
  """x~_next = x~ + (sigma~_next - sigma~) (d + d')/2 with d = (x~ - D)/sigma~ (Karras et al. 2022, Alg. 1).

  x~ = x/alpha and sigma~ = sigma/alpha, so one implementation covers VP, sub-VP and VE. Two score
  evaluations per step; EDM's final step to sigma = 0 is ``sample``'s Tweedie step, on by default.
  """

  denoise_final_default = True

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    del key
    sigma, sigma_next = sde.edm_sigma(t), sde.edm_sigma(t_next)
    x_scaled, denoised = heun_step(sde, score_fn, x / sde.alpha(t), sigma, t, sigma_next, t_next)
    x_next = x_scaled * sde.alpha(t_next)
    return x_next, base.StepAux(mean=x_next, denoised=denoised, nfe=base.nfe(2)), state
