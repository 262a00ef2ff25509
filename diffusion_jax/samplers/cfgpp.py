"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained classifier free guidance", Alg. 1).

A sampler wrapper around DDIM or DPM-Solver++.

Classifier-free guidance moves both readings of the step with the guided score: DDIM's next point
alpha' D + sigma' eps is built from the guided data prediction D and the guided noise eps. CFG++
keeps the guided data prediction, D_lam = D_u + lam (D_c - D_u) (c: the condition, u: the null
one), but renoises with the unconditional noise eps_u:

    x' = alpha' D_lam + sigma' eps_u.

Rewritten, that is the unconditional step plus the guidance's change of the data prediction carried
to the next noise level:

    x' = [alpha' D_u + sigma' eps_u] + alpha' lam (D_c - D_u),

whereas CFG with gamma adds alpha' gamma (1 - e^{-h}) (D_c - D_u), h = lambda' - lambda the step in
half log-SNR. So on one step CFG++ at lam equals CFG at gamma = lam / (1 - e^{-h}): CFG++'s
strength depends on the grid and on the number of steps (on 50 uniform VP steps, gamma is 1.1 to
10.6 times lam, 8 at the median step), and at lam = 0 it is the unconditional sampler.

``CFGPlusPlus(inner)`` writes the step in that second form, so that it wraps
- ``DDIM`` (any eta: the stochastic mean uses eps_u, the fresh noise is unchanged), where it is the
  paper's Algorithm 1 exactly;
- ``DPMSolverPP`` (orders 1-3): the multistep solver extrapolates the unconditional data
  predictions and the guidance term alpha' lam (D_c - D_u) is added to each step. Order 1 is DDIM.
  This extension of the paper's DDIM form to the multistep orders is ours; it keeps the property
  that defines CFG++, the renoising with the unconditional model.

The score is a ``guidance.ClassifierFreeGuidance`` whose ``gamma`` is CFG++'s lam: both readings
come from one call of the network on the pair (condition, null). The sampler's final output (and a
final denoising step, if asked) is the guided data prediction D_lam, as in the paper. A noise
interval is not defined for CFG++ and is refused.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp

from diffusion_jax import _checks, guidance
from diffusion_jax.samplers import base
from diffusion_jax.samplers.ddim import DDIM
from diffusion_jax.samplers.dpm_solver import DPMSolverPP


# The samplers CFG++ is defined for (their steps are affine in the data prediction).
INNER_SAMPLERS = (DDIM, DPMSolverPP)


def _check_guider(score_fn) -> None:
  if not isinstance(score_fn, guidance.ClassifierFreeGuidance):
    raise TypeError("CFGPlusPlus samples a guidance.ClassifierFreeGuidance score (its gamma is "
                    f"CFG++'s lambda), got {type(score_fn).__name__}.")
  if score_fn.interval is not None:
    raise ValueError("CFGPlusPlus has no noise interval: pass a ClassifierFreeGuidance with "
                     "interval=None.")


class CFGPlusPlus(base.AbstractSampler):
  """One step of ``inner`` on the unconditional score, plus alpha(t_next) lam (D_c - D_u).

  See the module docstring for the rule and where it comes from.
  """

  inner: base.AbstractSampler = flax.struct.field(default_factory=DDIM)

  def __post_init__(self):
    _checks.check_instance("inner", self.inner, INNER_SAMPLERS,
                           "DDIM() or DPMSolverPP(order=2)")

  @property
  def denoise_final_default(self) -> bool:
    return self.inner.denoise_final_default

  @property
  def stochastic(self) -> bool:
    return self.inner.stochastic

  def init(self, sde, score_fn, ts, x):
    _check_guider(score_fn)
    return self.inner.init(sde, score_fn, ts, x)

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    # score_fn was checked by init (the sampler contract runs it first).
    cond_score, uncond_score = score_fn.parts(x, t)
    # The inner rule sees the unconditional model; its one evaluation is the pair call above.
    x_next, aux, state = self.inner.step(sde, lambda x_, t_: uncond_score, t, t_next, x, state,
                                         key=key)
    lam = jnp.asarray(score_fn.gamma, x.dtype)
    # D = (x + sigma^2 s) / alpha, so D_c - D_u = (sigma^2 / alpha)(s_c - s_u).
    guidance_change = lam * (sde.sigma(t) ** 2 / sde.alpha(t)) * (cond_score - uncond_score)
    shift = sde.alpha(t_next) * guidance_change
    aux = aux.replace(mean=aux.mean + shift, denoised=aux.denoised + guidance_change)
    return x_next + shift, aux, state

  def finalize(self, sde, score_fn, x, t_last, state):
    # The guider's Tweedie step: lam s_c + (1 - lam) s_u gives D_lam.
    return self.inner.finalize(sde, score_fn, x, t_last, state)
