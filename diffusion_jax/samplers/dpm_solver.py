"""Multistep DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", Sec. 4 / Alg. 2), orders 1 to 3, for any linear SDE."""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax import _checks
from diffusion_jax.samplers import base, history


def _dpm_update(k, x, denoised, past_lambdas, past_values, lam, lam_next, sigma, sigma_next,
                alpha_next):
  """The order-k DPM-Solver++ update from the current point (lam, denoised) to lam_next."""
  h = lam_next - lam
  phi_1 = jnp.expm1(-h)  # e^{-h} - 1
  x_next = (sigma_next / sigma) * x - alpha_next * phi_1 * denoised
  if k == 1:  # DDIM
    return x_next
  r0 = (lam - past_lambdas[0]) / h
  d1_0 = (denoised - past_values[0]) / r0
  if k == 2:
    # DPM-Solver++(2M): D = (1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1} (Lu et al. 2022b, Alg. 2).
    return x_next - 0.5 * alpha_next * phi_1 * d1_0
  # Third order: a Taylor expansion of the data prediction in lambda around the current point,
  # integrated exactly against e^lambda (the exponential integrator of Lu et al. 2022a, eq. 3.6):
  #   x' = (sigma'/sigma) x + alpha' [-phi_1 D + phi_2 (h D') - phi_3 (h^2 D'')],
  #   phi_2 = phi_1/h + 1 = h^-1 int_0^h e^{-u}(h-u) du,  phi_3 = phi_2/h - 1/2,
  # with h D' ~ d1 and h^2 D'' ~ 2 d2 from divided differences over the last three points.
  r1 = (past_lambdas[0] - past_lambdas[1]) / h
  d1_1 = (past_values[0] - past_values[1]) / r1
  d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
  d2 = (d1_0 - d1_1) / (r0 + r1)
  phi_2 = phi_1 / h + 1.0
  phi_3 = phi_2 / h - 0.5
  return x_next + alpha_next * phi_2 * d1 - 2.0 * alpha_next * phi_3 * d2


class DPMSolverPP(base.AbstractSampler):
  """Multistep DPM-Solver++: x' = (sigma'/sigma) x - alpha' (e^{-h} - 1) D_eff, h = lambda' - lambda, lambda = log(alpha/sigma).

  D_eff extrapolates the data predictions of the last ``order`` evaluations (Lu et al. 2022b,
  "DPM-Solver++(2M)" for order 2; order 3 is the 3M variant). One evaluation per step; the first
  steps warm up at lower order.
  """

  order: int = flax.struct.field(pytree_node=False, default=2)
  lower_order_final: bool = flax.struct.field(pytree_node=False, default=True)

  def __post_init__(self):
    _checks.check_choice("order", self.order, {1, 2, 3})
    _checks.check_bool("lower_order_final", self.lower_order_final)

  def init(self, sde, score_fn, ts, x):
    return history.start(ts, x, self.order - 1)

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    del key
    ev = base.evaluate(sde, score_fn, x, t)
    lam, lam_next = base.half_log_snr(sde, t), base.half_log_snr(sde, t_next)
    args = (x, ev.denoised, state.lambdas, state.values, lam, lam_next, sde.sigma(t),
            sde.sigma(t_next), sde.alpha(t_next))
    k = history.effective_order(state.counter, self.order, self.lower_order_final)
    branches = [functools.partial(_dpm_update, j) for j in range(1, self.order + 1)]
    x_next = jax.lax.switch(k - 1, branches, *args)
    aux = base.StepAux(mean=x_next, denoised=ev.denoised, nfe=base.nfe(1))
    return x_next, aux, history.push(state, lam, ev.denoised)
