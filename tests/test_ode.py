"""The adaptive RK solver against closed-form ODE solutions, fitted convergence orders and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import ode


def _linear_rhs(t, y):
  # y' = -y + cos t, and b' = a: a(t) = (a0 - 1/2) e^-t + (cos t + sin t)/2.
  return {"a": -y["a"] + jnp.cos(t), "b": y["a"]}


def _linear_exact(a0, t):
  return (a0 - 0.5) * np.exp(-t) + 0.5 * (np.cos(t) + np.sin(t))


@pytest.mark.parametrize("tableau, order", [(ode.DOPRI5, 5), (ode.BOSH3, 3)])
def test_fixed_step_convergence_order(tableau, order):
  """Halving dt divides the global error by about 2^order on y' = -(1 + t) y, y(1) = e^-1.5."""

  def integrate(n):
    fn = lambda t, y: -(1.0 + t) * y
    y, t, dt = jnp.ones(1), 0.0, 1.0 / n
    f = fn(t, y)
    for _ in range(n):
      y, _, f_next, _ = ode.rk_step(fn, tableau, t, y, f, dt)
      t += dt
      f = fn(t, y) if f_next is None else f_next
    return float(y[0])

  with jax.enable_x64(True):
    errors = [abs(integrate(n) - np.exp(-1.5)) for n in (4, 8, 16)]
  fitted = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
  # Asymptotic order within a band: pre-asymptotic terms shift the slope by a few tenths at n = 4.
  np.testing.assert_allclose(fitted, order, atol=0.4)


@pytest.mark.parametrize("tableau", [ode.DOPRI5, ode.BOSH3])
def test_tableau_consistency(tableau):
  """Rows of a sum to c, weights sum to 1, embedded weights differ only in higher-order terms."""
  for c, row in zip(tableau.c[1:], tableau.a):
    assert sum(row) == pytest.approx(c, abs=1e-14)
  assert sum(tableau.b) == pytest.approx(1.0, abs=1e-14)
  assert sum(tableau.b_err) == pytest.approx(0.0, abs=1e-14)
  # b . c = 1/2: second-order condition of the propagated solution.
  assert sum(b * c for b, c in zip(tableau.b, tableau.c)) == pytest.approx(0.5, abs=1e-14)


_solve_jit = jax.jit(ode.solve, static_argnums=0,
                     static_argnames=("tableau", "max_steps", "dt0", "norm_fn"))


@pytest.mark.parametrize("tol", [1e-4, 1e-6])
def test_adaptive_solution_error_scales_with_tolerance(tol):
  y0 = {"a": jnp.array([1.0, 2.0]), "b": jnp.zeros(2)}
  sol = _solve_jit(_linear_rhs, y0, 0.0, 5.0, controller=ode.PIController(rtol=tol, atol=tol))
  assert bool(sol.success) and float(sol.t) == 5.0
  err = np.max(np.abs(np.asarray(sol.y["a"]) - _linear_exact(np.array([1.0, 2.0]), 5.0)))
  # Local error control keeps the global error within a small multiple of the tolerance here
  # (a contracting ODE); float32 round-off (~1e-7 relative) sets the floor.
  assert err < 10 * tol + 1e-6
  # One FSAL step costs 6 evaluations, plus 2 for the first derivative and the starting step.
  assert int(sol.nfe) == 2 + 6 * (int(sol.num_accepted) + int(sol.num_rejected))


def test_backward_integration_returns_to_start():
  y0 = jnp.array([1.0, -0.5])
  fn = lambda t, y: jnp.stack([y[1], -y[0]])  # harmonic oscillator
  controller = ode.PIController(rtol=1e-7, atol=1e-7)
  fwd = _solve_jit(fn, y0, 0.0, 3.0, controller=controller)
  np.testing.assert_allclose(fwd.y, [np.cos(3) - 0.5 * np.sin(3), -np.sin(3) - 0.5 * np.cos(3)],
                             atol=1e-5)  # a few times the tolerance, accumulated over ~3 radians
  back = _solve_jit(fn, fwd.y, 3.0, 0.0, controller=controller)
  assert float(back.t) == 0.0
  np.testing.assert_allclose(back.y, y0, atol=1e-5)


def test_vmap_gives_each_example_its_own_steps():
  """Under vmap every example keeps its own step sizes: the batched result equals the per-example
  solves exactly, and stiffer examples take more steps."""
  rates = jnp.array([0.5, 4.0, 30.0])
  fn = lambda t, y, rate: -rate * (y - jnp.sin(t))

  def one(rate):
    return ode.solve(lambda t, y: fn(t, y, rate), jnp.ones(2), 0.0, 2.0,
                     controller=ode.PIController(rtol=1e-5, atol=1e-5))

  batched = jax.jit(jax.vmap(one))(rates)
  singles = [jax.jit(one)(r) for r in rates]
  for i, single in enumerate(singles):
    assert int(batched.nfe[i]) == int(single.nfe)
    np.testing.assert_allclose(batched.y[i], single.y, rtol=1e-6)  # same steps; fusion may differ
  assert int(batched.nfe[0]) < int(batched.nfe[2])


def test_max_steps_reports_failure():
  sol = _solve_jit(lambda t, y: -y, jnp.ones(1), 0.0, 10.0,
                   controller=ode.PIController(rtol=1e-9, atol=1e-9), max_steps=3)
  assert not bool(sol.success)
  assert float(sol.t) < 10.0


def test_bad_arguments():
  with pytest.raises(ValueError, match="rtol"):
    ode.PIController(rtol=-1.0)
  with pytest.raises(ValueError, match="safety"):
    ode.PIController(safety=1.5)
  with pytest.raises(ValueError, match="max_steps"):
    ode.solve(lambda t, y: y, jnp.ones(1), 0.0, 1.0, max_steps=0)
  with pytest.raises(ValueError, match="weights"):
    ode.rms_norm((jnp.ones(2), jnp.ones(3)), weights=(1.0,))


def test_starting_step_stays_inside_the_interval():
  """fn is undefined (NaN) past t1, and y is large relative to y': the automatic starting step
  (0.01 |y|/|y'| would be 100) must not probe beyond t1."""
  fn = lambda t, y: jnp.where(t <= 1.0, 1e-3 * jnp.ones_like(y), jnp.nan)
  sol = _solve_jit(fn, jnp.full(2, 10.0), 0.0, 1.0,
                   controller=ode.PIController(rtol=1e-6, atol=1e-6))
  assert bool(sol.success)
  np.testing.assert_allclose(sol.y, 10.001, rtol=1e-6)  # y' = 1e-3 exactly, float32
