"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and a free corrector (UniC) in log-SNR."""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax import _checks
from diffusion_jax.samplers import base, history


class UniPCState(flax.struct.PyTreeNode):
  history: history.History  # data predictions at the previous points, most recent first
  x_prev: jax.Array  # the (corrected) sample at the previous point
  t_prev: jax.Array
  prev_order: jax.Array  # int32: order of the predictor that produced the current x (0 before the first step)


def _b_vector(h, order: int, bh2: bool):
  """b_j = (j-1)! h phi_{j+1}(h) / B(h), j = 1..order (Zhao et al. 2023, Thm. 3.1), data prediction (hh = -h)."""
  hh = -h
  h_phi_1 = jnp.expm1(hh)
  b_h = jnp.expm1(hh) if bh2 else hh
  h_phi_k = h_phi_1 / hh - 1.0
  factorial = 1
  b = []
  for j in range(1, order + 1):
    b.append(h_phi_k * factorial / b_h)
    factorial *= j + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  return jnp.stack(b), h_phi_1, b_h


def _unipc_update(k, corrector, bh2, x, lam, lam_next, sigma, sigma_next, alpha_next, denoised,
                  past_lambdas, past_values, new_value):
  """Order-k UniP (corrector=False) or UniC (corrector=True) from (lam, x, denoised) to lam_next.

  UniP-k uses the k-1 past points; UniC-k also the new data prediction ``new_value`` at lam_next.
  """
  h = lam_next - lam
  b, h_phi_1, b_h = _b_vector(h, k, bh2)
  x_next = (sigma_next / sigma) * x - alpha_next * h_phi_1 * denoised
  rks, diffs = [], []
  for m in range(k - 1):
    r = (past_lambdas[m] - lam) / h
    rks.append(r)
    diffs.append((past_values[m] - denoised) / r)
  if corrector:
    rks.append(jnp.ones_like(h))
    diffs.append(new_value - denoised)
  if not diffs:
    return x_next
  if len(diffs) == 1:
    # Zhao et al. fix rho = 1/2 for a single difference; with B(h) = e^{-h} - 1 this predictor is
    # exactly DPM-Solver++(2M).
    rhos = jnp.full((1,), 0.5, x.dtype)
  else:
    powers = jnp.stack([jnp.stack(rks) ** j for j in range(len(rks))])  # R[j, m] = r_m^j
    rhos = jnp.linalg.solve(powers, b[: len(rks)])
  correction = sum(rho * d for rho, d in zip(jnp.unstack(rhos), diffs))
  return x_next - alpha_next * b_h * correction


class UniPC(base.AbstractSampler):
  """UniPC with data prediction: UniP-p predicts x_{i+1}, UniC corrects x_i with the evaluation there.

  x' = (sigma'/sigma) x - alpha' (e^{-h} - 1) D - alpha' B(h) sum_m rho_m (D_m - D)/r_m
  (Zhao et al. 2023, Alg. 2 and 3). The corrector reuses the evaluation that the next step needs
  anyway, so the cost stays one evaluation per step; the last step is left uncorrected.
  ``bh2=True`` takes B(h) = e^h - 1 (their "bh2"), False B(h) = h ("bh1").
  """

  order: int = flax.struct.field(pytree_node=False, default=2)
  bh2: bool = flax.struct.field(pytree_node=False, default=True)
  use_corrector: bool = flax.struct.field(pytree_node=False, default=True)
  lower_order_final: bool = flax.struct.field(pytree_node=False, default=True)

  def __post_init__(self):
    _checks.check_choice("order", self.order, {1, 2, 3})
    for name in ("bh2", "use_corrector", "lower_order_final"):
      _checks.check_bool(name, getattr(self, name))

  def init(self, sde, score_fn, ts, x):
    return UniPCState(history=history.start(ts, x, self.order), x_prev=jnp.zeros_like(x),
                      t_prev=jnp.zeros((), ts.dtype), prev_order=jnp.zeros((), jnp.int32))

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    del key
    ev = base.evaluate(sde, score_fn, x, t)
    lam, lam_next = base.half_log_snr(sde, t), base.half_log_snr(sde, t_next)
    hist = state.history

    if self.use_corrector:
      # UniC at the current point: from the previous point, with the evaluation just made.
      lam_prev = hist.lambdas[0]
      args = (state.x_prev, lam_prev, lam, sde.sigma(state.t_prev), sde.sigma(t), sde.alpha(t),
              hist.values[0], hist.lambdas[1:], hist.values[1:], ev.denoised)
      no_correction = lambda *_: x
      branches = [no_correction] + [functools.partial(_unipc_update, j, True, self.bh2)
                                    for j in range(1, self.order + 1)]
      x = jax.lax.switch(state.prev_order, branches, *args)

    # UniP from the (corrected) current point.
    k = history.effective_order(hist.counter, self.order, self.lower_order_final)
    args = (x, lam, lam_next, sde.sigma(t), sde.sigma(t_next), sde.alpha(t_next), ev.denoised,
            hist.lambdas, hist.values, None)
    branches = [functools.partial(_unipc_update, j, False, self.bh2) for j in range(1, self.order + 1)]
    x_next = jax.lax.switch(k - 1, branches, *args)

    new_state = UniPCState(history=history.push(hist, lam, ev.denoised), x_prev=x, t_prev=jnp.asarray(t, state.t_prev.dtype),
                           prev_order=k.astype(jnp.int32))
    return x_next, base.StepAux(mean=x_next, denoised=ev.denoised, nfe=base.nfe(1)), new_state
