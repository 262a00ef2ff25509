"""The probability-flow ODE as a flow: exact log-likelihood, encode and decode, on diffrax.

The probability-flow ODE dx/dt = v(x, t) = f(t) x - 1/2 g(t)^2 score(x, t) carries p_t_min to p_T,
and by the instantaneous change of variables (Chen et al. 2018, "Neural ODEs", Thm. 1)

    log p_t_min(x) = log p_T(z) + int_{t_min}^{T} div_x v(x_t, t) dt,   z = x_T,

(Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. D.2). ``log_likelihood``
solves the ODE jointly with the divergence integral with ``diffrax.diffeqsolve``, one example at a
time (``vmap`` for a batch: each example takes its own adaptive steps and reports its own count).
The velocity is the one of ``sde.probability_flow(score_fn)``, in the variable of the strategy
(``InTime``, or ``InSigma``: EDM's sigma~, cheaper for VE).

Error control: rtol/atol on the state, and atol nats per dimension, absolute, on the log-density
integral (a log-density has an arbitrary offset, so a relative tolerance on it means little);
the K per-probe integrals count together as one more coordinate of the state. Reverse-mode
gradients (w.r.t. the score function's parameters, x, ...) go through diffrax's adjoint.
"""

from __future__ import annotations

import math
from typing import Callable

import diffrax
import equinox as eqx
import flax.struct
import jax
import jax.numpy as jnp
import optimistix as optx

from diffusion_jax.likelihood import _validate
from diffusion_jax.likelihood.divergence import AbstractDivergence, ExactDivergence, GivenProbes
from diffusion_jax.likelihood.solve import check_solver, solve_ode
from diffusion_jax.likelihood.variables import AbstractFlowVariable, InTime
from diffusion_jax.sde import AbstractLinearSDE, ScoreFn

LogpFn = Callable[[jax.Array], jax.Array]


class LikelihoodOutput(flax.struct.PyTreeNode):
  """Per-example result of ``log_likelihood``; logp = prior_logp + delta_logp."""

  logp: jax.Array  # log p_t_min(x), averaged over divergence estimates (nats)
  logp_se: jax.Array  # standard error of logp over the probes (0 for the exact divergence)
  prior_logp: jax.Array  # log p_T(z)
  delta_logp: jax.Array  # int div v ds (+ the change-of-variable constant), mean over probes
  delta_logp_probes: jax.Array  # one value per divergence estimate, shape (num_estimates,)
  z: jax.Array  # the latent x_T
  nfe: jax.Array  # evaluations of the velocity (each with its divergence), exact
  num_steps: jax.Array  # accepted solver steps
  num_rejected: jax.Array
  success: jax.Array  # reached T within max_steps with finite values; False: do not use logp


class FlowOutput(flax.struct.PyTreeNode):
  """Per-example result of ``encode`` / ``decode``."""

  y: jax.Array  # z for encode, x for decode
  nfe: jax.Array
  num_steps: jax.Array
  success: jax.Array  # reached the end within max_steps with finite values


class _LogDensityTolerance(diffrax.AbstractStepSizeController):
  """A PIDController on the state (y, delta_logp) whose tolerance on delta_logp is absolute:
  atol nats per dimension, i.e. error scale atol * D, with no relative part.

  diffrax scales every leaf by atol + rtol max(|y0|, |y1|); the wrapper multiplies the
  log-density's error by that scale over atol * D before the PID controller divides by it.
  """

  pid: diffrax.PIDController
  num_dims: int = eqx.field(static=True)

  def wrap(self, direction):
    return _LogDensityTolerance(self.pid.wrap(direction), self.num_dims)

  def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
    return self.pid.init(terms, t0, t1, y0, dt0, args, func, error_order)

  def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
    if not _is_likelihood_state(y_error):
      # BacksolveAdjoint reuses the controller on its augmented adjoint state: plain PID there.
      return self.pid.adapt_step_size(t0, t1, y0, y1_candidate, args, y_error, error_order,
                                      controller_state)
    (y_err, d_err), d0, d1 = y_error, y0[1], y1_candidate[1]
    d1 = jnp.where(jnp.isnan(d1), d0, d1)
    pid_scale = self.pid.atol + self.pid.rtol * jnp.maximum(jnp.abs(d0), jnp.abs(d1))
    d_err = d_err * (pid_scale / (self.pid.atol * self.num_dims))
    return self.pid.adapt_step_size(t0, t1, y0, y1_candidate, args, (y_err, d_err), error_order,
                                    controller_state)


def _is_likelihood_state(tree) -> bool:
  return (isinstance(tree, tuple) and len(tree) == 2
          and all(isinstance(leaf, jax.Array) for leaf in tree) and tree[1].ndim == 1)


def _likelihood_norm(tree):
  """RMS over the D state coordinates and ONE log-density coordinate (the mean square over probes)."""
  if not _is_likelihood_state(tree):
    return optx.rms_norm(tree)  # the adjoint state of BacksolveAdjoint
  y, d = tree
  return jnp.sqrt((jnp.sum(y**2) + jnp.mean(d**2)) / (y.size + 1))


def _check_common(sde, score_fn, x, name, variable, rtol, atol, max_steps, solver):
  _validate.sde(sde)
  _validate.example(name, x)
  _validate.score_fn(score_fn, x, name)
  _validate.instance("variable", variable, AbstractFlowVariable, "InTime() or InSigma()")
  _validate.tolerance("rtol", rtol, positive=False)
  _validate.tolerance("atol", atol, positive=True)
  check_solver(solver)
  return _validate.count("max_steps", max_steps)


def _check_times(sde, t_min, t_max):
  t_min = sde.t_min_default if t_min is None else t_min
  t_max = sde.T if t_max is None else t_max
  if isinstance(t_min, jax.core.Tracer) or isinstance(t_max, jax.core.Tracer):
    return t_min, t_max  # traced: checked by whoever made them
  if not 0 < t_min < t_max <= sde.T:
    raise ValueError(f"t_min and t_max must satisfy 0 < t_min < t_max <= T = {sde.T}, got "
                     f"t_min={t_min!r}, t_max={t_max!r}.")
  return t_min, t_max


def log_likelihood(sde: AbstractLinearSDE, score_fn: ScoreFn, x: jax.Array, *,
                   key: jax.Array | None = None,
                   divergence: AbstractDivergence = ExactDivergence(),
                   variable: AbstractFlowVariable = InTime(),
                   probes: jax.Array | None = None,
                   rtol: float = 1e-5, atol: float = 1e-5,
                   t_min: float | None = None, t_max: float | None = None,
                   prior_logp_fn: LogpFn | None = None,
                   solver: diffrax.AbstractSolver = diffrax.Tsit5(),
                   max_steps: int = 2048,
                   adjoint: diffrax.AbstractAdjoint | None = None) -> LikelihoodOutput:
  """log p_t_min(x) = log p_T(z) + int_{t_min}^{T} div v dt along the probability-flow ODE.

  Song et al. 2021, App. D.2; Chen et al. 2018, Thm. 1. One example ``x`` (any shape); ``vmap``
  over a batch with one ``key`` per example (used only by stochastic divergence estimators).

  Args:
    sde: the linear SDE whose probability-flow ODE (``sde.probability_flow``) is integrated.
    score_fn: per-example score(x, t); checked with ``jax.eval_shape`` before tracing.
    x: one example at time t_min.
    key: PRNG key for the divergence probes (None is fine for ``ExactDivergence``).
    divergence: ``ExactDivergence()``, ``Hutchinson(num_probes, probe)`` or ``GivenProbes(probes)``.
    variable: ``InTime()`` or ``InSigma()`` (the EDM variable; cheaper for VE).
    probes: Hutchinson probes of shape (K, *x.shape) to use instead of drawing them from ``key``
      (the estimate is then a function of the probes: the same probes, the same value).
    rtol, atol: local error tolerances: rtol/atol on the state, atol nats per dimension, absolute,
      on the log-density integral.
    t_min, t_max: integration interval, default [sde.t_min_default, sde.T].
    prior_logp_fn: log p_T(z); default ``sde.prior_logp``. Passing the exact marginal at T isolates
      the ODE integration error from the prior mismatch.
    solver: ``diffrax.Tsit5()`` (default) or ``diffrax.Dopri5()``.
    max_steps: cap on solver steps (accepted + rejected); ``success`` reports running out.
    adjoint: diffrax adjoint for reverse-mode gradients (default RecursiveCheckpointAdjoint;
      ``diffrax.BacksolveAdjoint()`` uses O(1) memory).
  """
  max_steps = _check_common(sde, score_fn, x, "x", variable, rtol, atol, max_steps, solver)
  _validate.instance("divergence", divergence, AbstractDivergence,
                     "ExactDivergence() or Hutchinson(4)")
  t_min, t_max = _check_times(sde, t_min, t_max)
  if probes is not None:
    if isinstance(divergence, ExactDivergence):
      raise ValueError("probes are for a Hutchinson estimate; the exact divergence takes none.")
    divergence = GivenProbes(jnp.asarray(probes))
  prior_logp_fn = sde.prior_logp if prior_logp_fn is None else prior_logp_fn
  probes = divergence.init(key, x)
  dtype = x.dtype
  num_dims = x.size

  def vector_field(s, state):
    y, _ = state
    v, div = divergence(lambda y_: variable.velocity(sde, score_fn, y_, s), y, probes)
    return v, div.astype(dtype)

  s0 = variable.variable(sde, jnp.asarray(t_min, dtype))
  s1 = variable.variable(sde, jnp.asarray(t_max, dtype))
  log_scale_0 = variable.log_scale(sde, jnp.asarray(t_min, dtype))
  y0 = x * jnp.exp(-log_scale_0).astype(dtype)
  state0 = (y0, jnp.zeros((divergence.num_estimates,), dtype))
  controller = _LogDensityTolerance(
      diffrax.PIDController(rtol=rtol, atol=atol, norm=_likelihood_norm), num_dims)
  scale_fn = lambda state: (atol + rtol * jnp.abs(state[0]),
                            jnp.full_like(state[1], atol * num_dims))
  sol = solve_ode(vector_field, state0, s0, s1, rtol=rtol, atol=atol, solver=solver,
                  max_steps=max_steps, adjoint=adjoint, controller=controller,
                  norm=_likelihood_norm, scale_fn=scale_fn)
  y1, integrals = sol.y
  log_scale_1 = variable.log_scale(sde, jnp.asarray(t_max, dtype))
  z = y1 * jnp.exp(log_scale_1).astype(dtype)
  jacobian = num_dims * (log_scale_1 - log_scale_0)
  delta_probes = integrals + jacobian.astype(dtype)
  prior = prior_logp_fn(z)
  delta = jnp.mean(delta_probes)
  k = divergence.num_estimates
  se = jnp.std(delta_probes, ddof=1) / math.sqrt(k) if k > 1 else jnp.zeros((), dtype)
  return LikelihoodOutput(logp=prior + delta, logp_se=se, prior_logp=prior, delta_logp=delta,
                          delta_logp_probes=delta_probes, z=z, nfe=sol.nfe,
                          num_steps=sol.num_steps, num_rejected=sol.num_rejected,
                          success=sol.success)


def _flow(sde, score_fn, x, t_from, t_to, variable, rtol, atol, solver, max_steps, adjoint):
  dtype = x.dtype
  t_from, t_to = jnp.asarray(t_from, dtype), jnp.asarray(t_to, dtype)
  y0 = x * jnp.exp(-variable.log_scale(sde, t_from)).astype(dtype)
  sol = solve_ode(lambda s, y: variable.velocity(sde, score_fn, y, s), y0,
                  variable.variable(sde, t_from), variable.variable(sde, t_to), rtol=rtol,
                  atol=atol, solver=solver, max_steps=max_steps, adjoint=adjoint)
  out = sol.y * jnp.exp(variable.log_scale(sde, t_to)).astype(dtype)
  return FlowOutput(y=out, nfe=sol.nfe, num_steps=sol.num_steps, success=sol.success)


def encode(sde: AbstractLinearSDE, score_fn: ScoreFn, x: jax.Array, *,
           variable: AbstractFlowVariable = InTime(), rtol: float = 1e-5, atol: float = 1e-5,
           t_min: float | None = None, t_max: float | None = None,
           solver: diffrax.AbstractSolver = diffrax.Tsit5(), max_steps: int = 2048,
           adjoint: diffrax.AbstractAdjoint | None = None) -> FlowOutput:
  """z = x_T: the probability-flow ODE dx/dt = f x - 1/2 g^2 score from t_min to T as an encoder
  (Song et al. 2021, Sec. 4.3). One example; ``vmap`` for a batch; differentiable."""
  max_steps = _check_common(sde, score_fn, x, "x", variable, rtol, atol, max_steps, solver)
  t_min, t_max = _check_times(sde, t_min, t_max)
  return _flow(sde, score_fn, x, t_min, t_max, variable, rtol, atol, solver, max_steps, adjoint)


def decode(sde: AbstractLinearSDE, score_fn: ScoreFn, z: jax.Array, *,
           variable: AbstractFlowVariable = InTime(), rtol: float = 1e-5, atol: float = 1e-5,
           t_min: float | None = None, t_max: float | None = None,
           solver: diffrax.AbstractSolver = diffrax.Tsit5(), max_steps: int = 2048,
           adjoint: diffrax.AbstractAdjoint | None = None) -> FlowOutput:
  """x = x_t_min: the same ODE from T back to t_min, the inverse of ``encode``."""
  max_steps = _check_common(sde, score_fn, z, "z", variable, rtol, atol, max_steps, solver)
  t_min, t_max = _check_times(sde, t_min, t_max)
  return _flow(sde, score_fn, z, t_max, t_min, variable, rtol, atol, solver, max_steps, adjoint)


class RoundTrip(flax.struct.PyTreeNode):
  """x -> z -> x_reconstructed through the probability-flow ODE."""

  z: jax.Array
  x_reconstructed: jax.Array
  max_abs_error: jax.Array  # max_i |x_i - x_reconstructed_i|
  rms_error: jax.Array  # sqrt(mean_i (x_i - x_reconstructed_i)^2)
  nfe: jax.Array  # encode + decode
  success: jax.Array  # both solves succeeded


def round_trip(sde: AbstractLinearSDE, score_fn: ScoreFn, x: jax.Array, **kwargs) -> RoundTrip:
  """decode(encode(x)) and its error: how invertible the solved flow is at the given tolerance."""
  enc = encode(sde, score_fn, x, **kwargs)
  dec = decode(sde, score_fn, enc.y, **kwargs)
  diff = dec.y - x
  return RoundTrip(z=enc.y, x_reconstructed=dec.y, max_abs_error=jnp.max(jnp.abs(diff)),
                   rms_error=jnp.sqrt(jnp.mean(diff**2)), nfe=enc.nfe + dec.nfe,
                   success=enc.success & dec.success)
