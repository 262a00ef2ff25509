"""One sampler for the first steps of the grid, another for the rest: e.g. an ancestral start before an ODE solver."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax import _checks
from diffusion_jax.samplers import base


class Chain(base.AbstractSampler):
  """``first`` over the first ``steps`` grid intervals, then ``then`` over the remaining ones.

  Each sampler sees its own part of the grid: ``then`` starts fresh where ``first`` stops (a
  multistep solver warms up again, as it must after a stochastic step leaves the ODE path).

  The use it was written for: ``Chain(DDIM(eta=1.0), IPNDM())``. x_T ~ N(0, I) is not exactly
  p_T (for VP, p_T's mean is alpha(T) times the data mean), and an ODE solver carries that error
  to t = 0 unchanged, mostly as wrong mixture weights, since the mode an ODE path ends in is fixed
  by x_T. One ancestral step from T to t_1 keeps only a fraction of x_T, about
  alpha(T) sigma(t_1) / (alpha(t_1) sigma(T)) for VP, and replaces the rest with fresh noise
  around the exact posterior mean; the mismatch shrinks by that factor for the cost of one
  evaluation.
  """

  first: base.AbstractSampler
  then: base.AbstractSampler
  steps: int = flax.struct.field(pytree_node=False, default=1)

  def __post_init__(self):
    for name in ("first", "then"):
      _checks.check_instance(name, getattr(self, name), base.AbstractSampler, "DDIM(eta=1.0)")
    _checks.check_count("steps", self.steps)

  @property
  def stochastic(self) -> bool:
    return self.first.stochastic or self.then.stochastic

  @property
  def denoise_final_default(self) -> bool:  # the last steps are ``then``'s
    return self.then.denoise_final_default

  def init(self, sde, score_fn, ts, x):
    if ts.shape[0] - 1 <= self.steps:
      raise ValueError(f"Chain needs a grid of more than steps={self.steps} intervals, "
                       f"got {ts.shape[0] - 1}.")
    return (jnp.zeros((), jnp.int32), self.first.init(sde, score_fn, ts[: self.steps + 1], x),
            self.then.init(sde, score_fn, ts[self.steps:], x))

  def step(self, sde, score_fn, t, t_next, x, state, *, key):
    index, first_state, then_state = state

    def run_first(operands):
      x, first_state, then_state = operands
      x, aux, first_state = self.first.step(sde, score_fn, t, t_next, x, first_state, key=key)
      return x, aux, first_state, then_state

    def run_then(operands):
      x, first_state, then_state = operands
      x, aux, then_state = self.then.step(sde, score_fn, t, t_next, x, then_state, key=key)
      return x, aux, first_state, then_state

    x, aux, first_state, then_state = jax.lax.cond(index < self.steps, run_first, run_then,
                                                   (x, first_state, then_state))
    return x, aux, (index + 1, first_state, then_state)

  def finalize(self, sde, score_fn, x, t_last, state):  # the end of the grid is ``then``'s
    return self.then.finalize(sde, score_fn, x, t_last, state[2])
