"""The one adaptive ODE driver of the library: ``diffrax.diffeqsolve`` with exact evaluation counts.

Used by the likelihood (log_likelihood, encode, decode) and by ``samplers.AdaptiveODE``. It adds
to diffrax three things the callers need:

* an exact, per-example count of vector-field evaluations. Tsit5 and Dopri5 are FSAL: each
  attempted step (accepted or rejected) evaluates 6 new stages. diffrax evaluates the first stage
  of the first step itself, and evaluates it again on every retry while no step has been accepted
  yet (its ``first_step`` flag survives a rejection), so ``1 + 6 num_steps`` undercounts by the
  number of rejections of the first step. Here the first stage f(t0, y0) is evaluated once,
  outside, and handed to the solver as its state: every attempt then costs exactly 6, and
  nfe = 1 (+ 1 for the starting-step heuristic) + 6 num_steps, checked against a counting vector
  field in tests/test_likelihood.py.
* a starting step from the Hairer-Norsett-Wanner heuristic (Solving ODEs I, II.4), which costs
  that one extra evaluation (diffrax's own heuristic is skipped for the wrapped terms it builds:
  it starts at 0.01 whatever the span).
* failures as a flag: ``throw=False`` always, and ``success`` is ``result == successful`` (not
  out of steps) with a finite state; nothing fails silently.

Reverse-mode gradients go through diffrax's adjoints: ``RecursiveCheckpointAdjoint`` by default
(exact counts), or ``BacksolveAdjoint`` (O(1) memory; diffrax then evaluates the first stage
itself, so a rejected first step goes uncounted).
"""

from __future__ import annotations

from typing import Callable

import diffrax
import flax.struct
import jax
import jax.numpy as jnp
import optimistix as optx

from diffusion_jax.likelihood import _validate

VectorField = Callable[[jax.Array, object], object]

SOLVERS = (diffrax.Tsit5, diffrax.Dopri5)


class OdeSolution(flax.struct.PyTreeNode):
  """The state at s1 and the cost of getting there (per example under vmap)."""

  y: object
  nfe: jax.Array  # vector-field evaluations, all of them (int32)
  num_steps: jax.Array  # accepted steps
  num_rejected: jax.Array
  success: jax.Array  # reached s1 within max_steps with a finite state


def check_solver(solver) -> None:
  if not isinstance(solver, SOLVERS):
    raise ValueError(f"solver must be diffrax.Tsit5() or diffrax.Dopri5() (explicit FSAL pairs "
                     f"with an exact evaluation count), got {solver!r}.")


def _starting_step(vector_field, s0, y0, f0, direction, span, scale, norm):
  """|dt0| by Hairer, Norsett & Wanner, Solving ODEs I, II.4 (one evaluation), inside the span."""
  div = lambda tree: jax.tree.map(lambda a, s: a / s, tree, scale)
  d0, d1 = norm(div(y0)), norm(div(f0))
  h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6 * span, 0.01 * d0 / d1)
  h0 = jnp.minimum(h0, span)
  y1 = jax.tree.map(lambda y, f: y + direction * h0 * f, y0, f0)
  f1 = vector_field(s0 + direction * h0, y1)
  d2 = norm(div(jax.tree.map(lambda a, b: a - b, f1, f0))) / h0
  dmax = jnp.maximum(d1, d2)
  # Order 5 pairs: the local error behaves like h^5 for the embedded 4th-order estimate.
  h1 = jnp.where(dmax <= 1e-15, jnp.maximum(1e-6 * span, h0 * 1e-3), (0.01 / dmax) ** 0.2)
  h = jnp.minimum(jnp.minimum(100 * h0, h1), span)
  # A non-finite trial derivative leaves h at 0 or NaN: start small and let the controller adapt.
  return jnp.where(jnp.isfinite(h) & (h > 0), h, 1e-3 * span)


def solve_ode(vector_field: VectorField, y0, s0, s1, *, rtol: float, atol: float,
              solver: diffrax.AbstractSolver = diffrax.Tsit5(), max_steps: int = 2048,
              adjoint: diffrax.AbstractAdjoint | None = None,
              controller: diffrax.AbstractStepSizeController | None = None,
              norm: Callable = optx.rms_norm, scale_fn: Callable | None = None,
              dt0=None) -> OdeSolution:
  """Integrate dy/ds = vector_field(s, y) from s0 to s1 (either direction) with error control.

  Accepts a step when norm(error / (atol + rtol max(|y|, |y_next|))) <= 1 (diffrax's
  PIDController, I control by default); ``controller`` replaces it (e.g. the likelihood's
  absolute tolerance on the log-density). ``scale_fn(y0)`` is the error scale the starting-step
  heuristic uses (default atol + rtol |y0|). ``dt0`` (magnitude) skips the heuristic and its
  evaluation. One example; vmap for many: each example keeps its own steps and counts.
  """
  check_solver(solver)
  max_steps = _validate.count("max_steps", max_steps)
  dtype = jnp.result_type(*jax.tree.leaves(y0))
  s0, s1 = jnp.asarray(s0, dtype), jnp.asarray(s1, dtype)
  direction = jnp.where(s1 >= s0, 1.0, -1.0).astype(dtype)
  span = jnp.abs(s1 - s0)
  if controller is None:
    controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=norm)
  if scale_fn is None:
    scale_fn = lambda y: jax.tree.map(lambda a: atol + rtol * jnp.abs(a), y)
  f0 = vector_field(s0, y0)
  nfe0 = 1
  if dt0 is None:
    dt0 = jax.lax.stop_gradient(_starting_step(vector_field, s0, y0, f0, direction, span,
                                               scale_fn(y0), norm))
    nfe0 += 1
  dt0 = jnp.minimum(jnp.asarray(dt0, dtype), span)
  adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
  # The FSAL state (first_step, f0) of diffrax's Runge-Kutta solvers, with f0 already known.
  solver_state, made_jump, extra = (jnp.asarray(False), f0), False, 0
  term = diffrax.ODETerm(lambda s, y, args: vector_field(s, y))
  args = None
  if isinstance(adjoint, diffrax.BacksolveAdjoint):
    # Backsolve differentiates only through explicit arguments: hoist the arrays the vector field
    # closes over (network parameters, probes) into diffrax's ``args``. It does not take a
    # solver state either, so diffrax evaluates f(t0, y0) itself once more (counted), and again
    # on each rejection of the first step (not counted: the one inexact case, documented).
    converted, consts = jax.closure_convert(vector_field, s0, y0)
    term = diffrax.ODETerm(lambda s, y, args: converted(s, y, *(args or ())))
    args = tuple(consts) or None  # diffrax's backsolve fails on an empty tuple
    solver_state, made_jump, extra = None, None, 1
  sol = diffrax.diffeqsolve(
      term, solver, t0=s0, t1=s1, args=args,
      dt0=direction * dt0, y0=y0, stepsize_controller=controller,
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False,
      adjoint=adjoint,
      solver_state=solver_state, made_jump=made_jump)
  y1 = jax.tree.map(lambda a: a[-1], sol.ys)
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(y1)]))
  stages = len(solver.tableau.c)  # new evaluations per attempted step (FSAL: stages - 1)
  num_steps = sol.stats["num_steps"]
  return OdeSolution(y=y1, nfe=jnp.asarray(nfe0 + extra + stages * num_steps, jnp.int32),
                     num_steps=jnp.asarray(sol.stats["num_accepted_steps"], jnp.int32),
                     num_rejected=jnp.asarray(sol.stats["num_rejected_steps"], jnp.int32),
                     success=(sol.result == diffrax.RESULTS.successful) & finite)
