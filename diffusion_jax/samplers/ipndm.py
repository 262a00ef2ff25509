"""iPNDM (Zhang & Chen 2023, "DEIS", Sec. 4 / App.): Adams-Bashforth on eps in EDM's variables."""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import numpy as np

from diffusion_jax import _checks
from diffusion_jax.samplers import base, history

# Adams-Bashforth weights of orders 1-4 for equal steps, most recent evaluation first; the first
# steps fall back to the lower orders (the "improved" warm start of iPNDM).
_AB_WEIGHTS = np.array([
    [1.0, 0.0, 0.0, 0.0],
    [3.0 / 2, -1.0 / 2, 0.0, 0.0],
    [23.0 / 12, -16.0 / 12, 5.0 / 12, 0.0],
    [55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24],
])


class IPNDM(base.AbstractSampler):
  """x~' = x~ + (sigma~' - sigma~) sum_j w_j eps_{i-j}: dx~/dsigma~ = eps with x~ = x/alpha, sigma~ = sigma/alpha.

  The weights w are the Adams-Bashforth ones of order min(order, i + 1) (Zhang & Chen 2023).
  One evaluation per step.
  """

  order: int = flax.struct.field(pytree_node=False, default=4)

  def __post_init__(self):
    _checks.check_choice("order", self.order, {1, 2, 3, 4})

  def init(self, sde, score_fn, ts, x):
    return history.start(ts, x, self.order - 1)

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    del key
    ev = base.evaluate(sde, score_fn, x, t)
    k = jnp.minimum(self.order, state.counter.index + 1)
    weights = jnp.asarray(_AB_WEIGHTS[: self.order, : self.order], x.dtype)[k - 1]
    eps_all = jnp.concatenate([ev.eps[None], state.values[: self.order - 1]])
    eps_eff = jnp.tensordot(weights, eps_all, axes=1)
    sigma, sigma_next = sde.edm_sigma(t), sde.edm_sigma(t_next)
    x_next = (x / sde.alpha(t) + (sigma_next - sigma) * eps_eff) * sde.alpha(t_next)
    aux = base.StepAux(mean=x_next, denoised=ev.denoised, nfe=base.nfe(1))
    return x_next, aux, history.push(state, base.half_log_snr(sde, t), ev.eps)
