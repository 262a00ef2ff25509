"""Divergence estimators for the instantaneous change of variables: exact trace or Hutchinson.

d log p(x_t)/dt = -div_x v(x_t, t) (Chen et al. 2018, Thm. 1). ``ExactDivergence`` is the trace of
the Jacobian from D forward-mode products; ``Hutchinson`` the estimate E[u^T (dv/dx) u] with
E[u u^T] = I and probes u fixed along the trajectory (Skilling 1989; Hutchinson 1990; Grathwohl et
al. 2019, "FFJORD"). Probes are drawn from a key, or given (``GivenProbes``, or ``probes=`` of
``log_likelihood``), so that estimators can be compared on the same probes.
"""

from __future__ import annotations

import abc
import enum
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax.likelihood import _validate


class AbstractDivergence(flax.struct.PyTreeNode, abc.ABC):
  """How div_x v(x) is computed: ``init`` gives what the estimate needs once per example (the
  probes stay fixed along the trajectory, so the ODE is deterministic), ``__call__`` returns
  (v(x), estimates) with one divergence estimate per probe, shape (num_estimates,)."""

  @property
  @abc.abstractmethod
  def num_estimates(self) -> int:
    """How many divergence estimates are carried (1 for the exact trace)."""

  @abc.abstractmethod
  def init(self, key: jax.Array | None, x: jax.Array):
    """Per-example probes (an array of shape (num_estimates, *x.shape)), or None."""

  @abc.abstractmethod
  def __call__(self, velocity_fn: Callable[[jax.Array], jax.Array], x: jax.Array, probes):
    """(velocity_fn(x), divergence estimates of shape (num_estimates,))."""


class ExactDivergence(AbstractDivergence):
  """tr(dv/dx) from D forward-mode Jacobian-vector products along the basis: exact, D times the
  cost of one evaluation, so for low-dimensional data. Needs no key."""

  @property
  def num_estimates(self) -> int:
    return 1

  def init(self, key, x):
    return None

  def __call__(self, velocity_fn, x, probes):
    v, jvp_fn = jax.linearize(velocity_fn, x)
    basis = jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
    # Row i of the Jacobian times e_i, summed: the trace, with the primal computed once.
    diag = jax.vmap(lambda e: jnp.vdot(e, jvp_fn(e)))(basis)
    return v, jnp.sum(diag)[None]


class Probe(enum.Enum):
  """Distribution of Hutchinson probes: both have E[u u^T] = I."""

  RADEMACHER = "rademacher"  # +-1 entries: the lower-variance choice (Hutchinson 1990)
  GAUSSIAN = "gaussian"  # N(0, I) (Skilling 1989)


def _hutchinson(velocity_fn, x, probes):
  v, jvp_fn = jax.linearize(velocity_fn, x)
  return v, jax.vmap(lambda u: jnp.vdot(u, jvp_fn(u)))(probes)


class Hutchinson(AbstractDivergence):
  """div v ~= u^T (dv/dx) u with E[u u^T] = I (Skilling 1989; Hutchinson 1990), one
  Jacobian-vector product per probe; ``num_probes`` independent probes per example, drawn from
  the example's key (or passed as ``probes=`` to ``log_likelihood``).

  The standard error comes from the spread of the per-probe integrals. Their distribution can be
  skewed (Rademacher probes on a nearly diagonal Jacobian), so with fewer than ~16 probes the SE
  is itself unreliable: in tests/test_likelihood.py 8 probes gave z-scores up to 6.
  """

  num_probes: int = flax.struct.field(pytree_node=False, default=1)
  probe: Probe = flax.struct.field(pytree_node=False, default=Probe.RADEMACHER)

  def __post_init__(self):
    object.__setattr__(self, "num_probes", _validate.count("num_probes", self.num_probes))
    if not isinstance(self.probe, Probe):
      raise ValueError(f"probe must be a Probe, got {self.probe!r}.")

  @property
  def num_estimates(self) -> int:
    return self.num_probes

  def draw(self, key: jax.Array, x: jax.Array) -> jax.Array:
    """num_probes probes of x's shape: (num_probes, *x.shape)."""
    shape = (self.num_probes,) + x.shape
    if self.probe is Probe.RADEMACHER:
      return jr.rademacher(key, shape, dtype=x.dtype)
    return jr.normal(key, shape, x.dtype)

  def init(self, key, x):
    if key is None:
      raise ValueError("key must be a PRNG key for the Hutchinson divergence, got None "
                       "(or pass probes=..., or use GivenProbes).")
    return self.draw(key, x)

  def __call__(self, velocity_fn, x, probes):
    return _hutchinson(velocity_fn, x, probes)


class GivenProbes(AbstractDivergence):
  """The Hutchinson estimate with the probes given: ``probes`` of shape (K, *x.shape), each with
  E[u u^T] = I. A pytree leaf: vmap it with the examples for per-example probes. Ignores the key."""

  probes: jax.Array

  @property
  def num_estimates(self) -> int:
    return self.probes.shape[0]

  def init(self, key, x):
    del key
    if self.probes.shape[1:] != x.shape:
      raise ValueError(f"probes must have shape (num_probes, *x.shape) = (K, {', '.join(map(str, x.shape))}),"
                       f" got {self.probes.shape}.")
    return self.probes.astype(x.dtype)

  def __call__(self, velocity_fn, x, probes):
    return _hutchinson(velocity_fn, x, probes)
