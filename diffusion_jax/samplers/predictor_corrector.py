"""Predictor-corrector sampling (Song et al. 2021, Alg. 2) as a wrapper around any two samplers."""

from __future__ import annotations

import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import _checks
from diffusion_jax.samplers import base


class PredictorCorrector(base.AbstractSampler):
  """One predictor step from t to t_next, then the corrector's step at t_next (Song et al. 2021, Alg. 2).

  Any sampler can predict and any can correct; the usual pair is ``ReverseDiffusion`` with
  ``Langevin``. The two draw their noise from independent keys split from the step key.
  """

  predictor: base.AbstractSampler
  corrector: base.AbstractSampler

  def __post_init__(self):
    for name in ("predictor", "corrector"):
      _checks.check_instance(name, getattr(self, name), base.AbstractSampler, "ReverseDiffusion()")

  @property
  def stochastic(self) -> bool:
    return self.predictor.stochastic or self.corrector.stochastic

  @property
  def denoise_final_default(self) -> bool:
    # Follow the predictor, read on the instance: a wrapper's flag is a property, and the class
    # attribute of a property is the (always truthy) property object.
    return self.predictor.denoise_final_default

  def finalize(self, sde, score_fn, x, t_last, state):
    return self.corrector.finalize(sde, score_fn, x, t_last, state[1])

  def init(self, sde, score_fn, ts, x):
    return (self.predictor.init(sde, score_fn, ts, x), self.corrector.init(sde, score_fn, ts, x))

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    predictor_key, corrector_key = jr.split(key)
    predictor_state, corrector_state = state
    x, aux_p, predictor_state = self.predictor.step(sde, score_fn, t, t_next, x, predictor_state,
                                                    key=predictor_key)
    x, aux_c, corrector_state = self.corrector.step(sde, score_fn, t, t_next, x, corrector_state,
                                                    key=corrector_key)
    aux = base.StepAux(mean=aux_c.mean, denoised=aux_c.denoised, nfe=aux_p.nfe + aux_c.nfe,
                       success=jnp.logical_and(aux_p.success, aux_c.success))
    return x, aux, (predictor_state, corrector_state)
