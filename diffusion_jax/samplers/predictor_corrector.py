"""Predictor-corrector sampling (Song et al. 2021, Alg. 2) as a wrapper around any two samplers."""

from __future__ import annotations

import jax.random as jr

from diffusion_jax.samplers import base


class PredictorCorrector(base.AbstractSampler):
  """One predictor step from t to t_next, then the corrector's step at t_next (Song et al. 2021, Alg. 2).

  Any sampler can predict and any can correct; the usual pair is ``ReverseDiffusion`` with
  ``Langevin``. The two draw their noise from independent keys split from the step key.
  """

  predictor: base.AbstractSampler
  corrector: base.AbstractSampler

  stochastic = True

  @property
  def denoise_final_default(self) -> bool:  # follow the predictor
    return type(self.predictor).denoise_final_default

  def init(self, sde, score_fn, ts, x):
    return (self.predictor.init(sde, score_fn, ts, x), self.corrector.init(sde, score_fn, ts, x))

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    predictor_key, corrector_key = jr.split(key)
    predictor_state, corrector_state = state
    x, aux_p, predictor_state = self.predictor.step(sde, score_fn, t, t_next, x, predictor_state,
                                                    key=predictor_key)
    x, aux_c, corrector_state = self.corrector.step(sde, score_fn, t, t_next, x, corrector_state,
                                                    key=corrector_key)
    aux = base.StepAux(mean=aux_c.mean, denoised=aux_c.denoised, nfe=aux_p.nfe + aux_c.nfe)
    return x, aux, (predictor_state, corrector_state)
