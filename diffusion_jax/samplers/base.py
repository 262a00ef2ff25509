"""The sampler contract and the quantities every sampler reads off a score.

A sampler is a small frozen pytree whose fields are its hyperparameters (static, validated on
construction). ``sample`` calls

    state = sampler.init(sde, score_fn, ts, x)
    x_next, aux, state = sampler.step(sde, score_fn, t, t_next, x, state, key=key)

once per grid interval, from t to t_next < t, and, when the sample ends with a denoising step,

    x, aux = sampler.finalize(sde, score_fn, x, t_last, state)

(default: Tweedie's E[x0 | x]; a wrapper such as ``Inpaint`` acts on that final output too).
``aux`` is a ``StepAux``: the noiseless mean of the step (score_sde's ``x_mean``), the denoised
estimate E[x0 | x] at the last score evaluation, the number of score evaluations the step spent,
and whether the step succeeded (an adaptive solver that ran out of steps reports False).
Deterministic samplers ignore ``key``.

Samplers cross ``jit`` as ordinary arguments: hyperparameters that shape the program (orders,
step counts, flags) are static fields (``pytree_node=False``); array fields (a mask, a
measurement) are leaves, traced like any input, and may carry a leading example axis when
``sampling.sample_examples`` is told so (``sampler_axes``). Capability flags
(``denoise_final_default``, ``stochastic``) are read on the instance, never on the class: a
wrapper derives them from what it wraps.

For x_t = alpha x0 + sigma noise, a score s = grad log p_t(x) gives
    eps      = -sigma s                          the noise prediction
    denoised = (x + sigma^2 s) / alpha           Tweedie's E[x0 | x_t] (Efron 2011)
and the PF-ODE in EDM's variables x~ = x/alpha, sigma~ = sigma/alpha = exp(-lambda/2) reads
dx~/dsigma~ = (x~ - denoised)/sigma~ = eps (Karras et al. 2022, eq. 4 with s = 1): the variables in which
DDIM, EDM, DPM-Solver, UniPC and iPNDM are written, for every linear SDE.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax.parameterization import Prediction, from_eps, to_eps
from diffusion_jax.sde import AbstractLinearSDE, ScoreFn


class StepAux(flax.struct.PyTreeNode):
  """What a step reports next to the new sample."""

  mean: jax.Array  # the step without its fresh noise (equal to x_next for deterministic samplers)
  denoised: jax.Array  # E[x0 | x] at the last point where the score was evaluated
  nfe: jax.Array  # score evaluations spent in this step (int32 scalar)
  # False where the step knows it failed (an adaptive solve out of steps); ``sample`` ANDs it with
  # the finiteness of the result into ``SampleOutput.success``.
  success: jax.Array | bool = True


class Evaluation(flax.struct.PyTreeNode):
  """One score evaluation at (x, t) and its other readings."""

  score: jax.Array
  eps: jax.Array
  denoised: jax.Array


def evaluate(sde: AbstractLinearSDE, score_fn: ScoreFn, x: jax.Array, t: jax.Array) -> Evaluation:
  """Evaluate ``score_fn`` once and convert: eps = -sigma s, denoised = (x + sigma^2 s)/alpha."""
  alpha, sigma = sde.alpha(t), sde.sigma(t)
  score = score_fn(x, t)
  eps = to_eps(score, x, alpha, sigma, Prediction.SCORE)
  return Evaluation(score=score, eps=eps, denoised=from_eps(eps, x, alpha, sigma, Prediction.X0))


def nfe(count: int) -> jax.Array:
  return jnp.asarray(count, jnp.int32)


def half_log_snr(sde: AbstractLinearSDE, t: jax.Array) -> jax.Array:
  """log(alpha/sigma) = lambda/2: the "lambda" of DPM-Solver and UniPC (Lu et al. 2022 use half the log-SNR)."""
  return 0.5 * sde.log_snr(t)


class AbstractSampler(flax.struct.PyTreeNode, abc.ABC):
  """A one-step rule from t to t_next on one example, with a small state between steps."""

  # Whether ``sample`` ends with a Tweedie denoising step unless told otherwise: on where the
  # sampler's paper uses one (score_sde's noise removal, EDM's last step to sigma = 0), off for
  # the fast ODE solvers, which the DPM-Solver paper runs without it.
  denoise_final_default: ClassVar[bool] = False
  # Whether the step draws noise; deterministic samplers ignore ``key``.
  stochastic: ClassVar[bool] = False

  def init(self, sde: AbstractLinearSDE, score_fn: ScoreFn, ts: jax.Array, x: jax.Array) -> Any:
    """The state before the first step (``ts`` is the whole grid, ``x`` the initial sample)."""
    del sde, score_fn, ts, x
    return ()

  @abc.abstractmethod
  def step(self, sde: AbstractLinearSDE, score_fn: ScoreFn, t: jax.Array, t_next: jax.Array,
           x: jax.Array, state: Any, *, key: jax.Array) -> tuple[jax.Array, StepAux, Any]:
    """Move ``x`` from time t to t_next < t."""

  def finalize(self, sde: AbstractLinearSDE, score_fn: ScoreFn, x: jax.Array, t_last: jax.Array,
               state: Any) -> tuple[jax.Array, StepAux]:
    """The final denoising step at the end of the grid: x <- E[x0 | x] = (x + sigma^2 score)/alpha (Efron 2011).

    ``sample`` calls it when it denoises (``denoise_final``); one evaluation. Wrappers override it
    to act on the final output as well (e.g. put the measurement back after the Tweedie step).
    """
    del state
    ev = evaluate(sde, score_fn, x, t_last)
    return ev.denoised, StepAux(mean=ev.denoised, denoised=ev.denoised, nfe=nfe(1))


class StepCounter(flax.struct.PyTreeNode):
  """The position in the grid, for samplers whose rule depends on it (warm-up, last step)."""

  index: jax.Array  # int32: the number of steps taken so far
  num_steps: jax.Array  # int32: the number of steps in the grid


def start_counter(ts: jax.Array) -> StepCounter:
  return StepCounter(index=jnp.zeros((), jnp.int32), num_steps=jnp.asarray(ts.shape[0] - 1, jnp.int32))


def advance(counter: StepCounter) -> StepCounter:
  return counter.replace(index=counter.index + 1)
