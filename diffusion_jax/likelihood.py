"""Exact log-likelihood with the probability-flow ODE, bits/dim, and the DDPM variational bound.

The probability-flow ODE dx/dt = v(x, t) = f(t) x - 1/2 g(t)^2 score(x, t) carries p_t_min to p_T,
and by the instantaneous change of variables (Chen et al. 2018, "Neural ODEs", Thm. 1)

    log p_t_min(x) = log p_T(z) + int_{t_min}^{T} div_x v(x_t, t) dt,   z = x_T,

(Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. D.2). ``log_likelihood``
solves the ODE jointly with the divergence integral on device, one example at a time (``vmap`` for
a batch: each example takes its own adaptive steps). The divergence is a strategy: the exact trace
of the Jacobian, or the Hutchinson-Skilling estimate E[eps^T (dv/dx) eps] with fixed probes
(Grathwohl et al. 2019, "FFJORD"); with K probes the K integrals are carried separately, so the
spread between them gives the standard error.

The integration variable is a strategy too: time t, or the EDM variable s = sigma/alpha with the
scaled state x / alpha (Karras et al. 2022, eq. 4-5), in which a VE trajectory is nearly straight
at large sigma, so an adaptive solver takes fewer steps.

Accuracy and cost (benchmarks/likelihood.py, exact GMM scores in 2-64 dimensions): the error is
controlled per example, with atol nats per dimension (absolute) on the log-density integral. At
rtol = atol = 3e-6 the ODE error was below 1e-5 nats/dim at about 90-120 evaluations for VP and
120-150 for VE in sigma; at 3e-4 (VP) / 3e-3 (VE in sigma), 1e-3 to 5e-3 nats/dim at 40-60.
Near-discontinuous densities (dequantized data at a tiny t_min) need tighter tolerances.

Discrete data use uniform dequantization (Theis et al. 2016; Ho et al. 2019, "Flow++"): for L levels
k mapped to x = lo + (hi - lo)(k + u)/L, u ~ U[0, 1)^D,
    bits/dim = E_u[-log p(x)] / (D ln 2) + log2(L / (hi - lo))   (>= -log2 P(k) / D),
so +8 for 256 levels in [0, 1] and +7 in [-1, 1]. The DDPM evidence lower bound (Ho et al. 2020,
eq. 5) is the second, purely discrete estimator: no dequantization and no offset.
"""

from __future__ import annotations

import abc
import enum
import functools
import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.special import log_ndtr

from diffusion_jax import _checks, ode, schedules
from diffusion_jax.sde import AbstractLinearSDE, ScoreFn
from diffusion_jax.sdes import VESDE

LogpFn = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------------
# Divergence strategies
# ----------------------------------------------------------------------------------------------


class AbstractDivergence(flax.struct.PyTreeNode, abc.ABC):
  """How div_x v(x) is computed: ``init`` draws what the estimate needs once per example (the
  probes stay fixed along the trajectory, so the ODE is deterministic), ``__call__`` returns
  (v(x), estimates) with one divergence estimate per probe, shape (num_estimates,)."""

  @property
  @abc.abstractmethod
  def num_estimates(self) -> int:
    """How many divergence estimates are carried (1 for the exact trace)."""

  @abc.abstractmethod
  def init(self, key: jax.Array | None, x: jax.Array):
    """Per-example randomness (probes), or None."""

  @abc.abstractmethod
  def __call__(self, velocity_fn: Callable[[jax.Array], jax.Array], x: jax.Array, probes):
    """(velocity_fn(x), divergence estimates of shape (num_estimates,))."""


class ExactDivergence(AbstractDivergence):
  """tr(dv/dx) from D forward-mode Jacobian-vector products along the basis: exact, D times the
  cost of one evaluation, so for low-dimensional data."""

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
  """Distribution of Hutchinson probes: both have E[eps eps^T] = I."""

  RADEMACHER = "rademacher"  # +-1 entries: the lower-variance choice (Hutchinson 1990)
  GAUSSIAN = "gaussian"  # N(0, I) (Skilling 1989)


class Hutchinson(AbstractDivergence):
  """div v ~= eps^T (dv/dx) eps with E[eps eps^T] = I (Skilling 1989; Hutchinson 1990), one
  Jacobian-vector product per probe; ``num_probes`` independent probes per example.

  The standard error comes from the spread of the per-probe integrals. Their distribution can be
  skewed (Rademacher probes on a nearly diagonal Jacobian), so with fewer than ~16 probes the SE
  is itself unreliable: in tests/test_likelihood.py 8 probes gave z-scores up to 6.
  """

  num_probes: int = flax.struct.field(pytree_node=False, default=1)
  probe: Probe = flax.struct.field(pytree_node=False, default=Probe.RADEMACHER)

  def __post_init__(self):
    _checks.check_count("num_probes", self.num_probes)
    if not isinstance(self.probe, Probe):
      raise ValueError(f"probe must be a Probe, got {self.probe!r}.")

  @property
  def num_estimates(self) -> int:
    return self.num_probes

  def init(self, key, x):
    if key is None:
      raise ValueError("key must be a PRNG key for the Hutchinson divergence, got None.")
    shape = (self.num_probes,) + x.shape
    if self.probe is Probe.RADEMACHER:
      return jr.rademacher(key, shape, dtype=x.dtype)
    return jr.normal(key, shape, x.dtype)

  def __call__(self, velocity_fn, x, probes):
    v, jvp_fn = jax.linearize(velocity_fn, x)
    return v, jax.vmap(lambda eps: jnp.vdot(eps, jvp_fn(eps)))(probes)


# ----------------------------------------------------------------------------------------------
# Integration variables
# ----------------------------------------------------------------------------------------------


class AbstractFlowVariable(flax.struct.PyTreeNode, abc.ABC):
  """The independent variable s and state y = x / scale(t) in which the ODE is integrated.

  For any such change, log p_t(x) = log p^y_s(y) - D log scale(t), so the log-likelihood gains the
  constant D (log scale(T) - log scale(t_min)) next to the divergence integral in s.
  """

  @abc.abstractmethod
  def variable(self, sde: AbstractLinearSDE, t: jax.Array) -> jax.Array:
    """s(t), increasing in t."""

  @abc.abstractmethod
  def time(self, sde: AbstractLinearSDE, s: jax.Array) -> jax.Array:
    """t(s), the inverse of ``variable``."""

  @abc.abstractmethod
  def log_scale(self, sde: AbstractLinearSDE, t: jax.Array) -> jax.Array:
    """log of x / y at time t."""

  @abc.abstractmethod
  def velocity(self, sde: AbstractLinearSDE, score_fn: ScoreFn, y: jax.Array,
               s: jax.Array) -> jax.Array:
    """dy/ds."""


class InTime(AbstractFlowVariable):
  """s = t, y = x: the probability-flow ODE as written (Song et al. 2021, eq. 13)."""

  def variable(self, sde, t):
    return t

  def time(self, sde, s):
    return s

  def log_scale(self, sde, t):
    return jnp.zeros_like(jnp.asarray(t, float))

  def velocity(self, sde, score_fn, y, s):
    return sde.drift(y, s) - 0.5 * sde.diffusion_squared(s) * score_fn(y, s)


class InSigma(AbstractFlowVariable):
  """s = sigma/alpha, y = x/alpha: dy/ds = -s alpha score(alpha y, t(s)) (Karras et al. 2022, eq. 4).

  Here grad_y log p(y) = alpha score(x, t), and the ODE has no drift term. For VE (alpha = 1) y = x
  and s = sigma: trajectories of Gaussian-like data are nearly straight lines in sigma at large
  sigma, so an adaptive solver steps further than in t. t(s) is closed-form for ``VESDE`` and
  found by bisection on the log-SNR otherwise.
  """

  def variable(self, sde, t):
    return sde.sigma(t) / sde.alpha(t)

  def time(self, sde, s):
    if isinstance(sde, VESDE):
      return sde.time_at_sigma(s)
    # s = exp(-log_snr / 2): invert the log-SNR (bisection in t, shared with the time grids).
    return schedules.time_at_log_snr(sde, -2.0 * jnp.log(s))

  def log_scale(self, sde, t):
    return sde.log_alpha(t)

  def velocity(self, sde, score_fn, y, s):
    t = self.time(sde, s)
    alpha = sde.alpha(t)
    return -s * alpha * score_fn(alpha * y, t)


# ----------------------------------------------------------------------------------------------
# The probability-flow ODE with the divergence integral
# ----------------------------------------------------------------------------------------------


class LikelihoodOutput(flax.struct.PyTreeNode):
  """Per-example result of ``log_likelihood``; logp = prior_logp + delta_logp."""

  logp: jax.Array  # log p_t_min(x), averaged over divergence estimates (nats)
  logp_se: jax.Array  # standard error of logp over the probes (0 for the exact divergence)
  prior_logp: jax.Array  # log p_T(z)
  delta_logp: jax.Array  # int div v ds (+ the change-of-variable constant), mean over probes
  delta_logp_probes: jax.Array  # one value per divergence estimate, shape (num_estimates,)
  z: jax.Array  # the latent x_T
  nfe: jax.Array  # evaluations of the velocity (each with its divergence)
  num_steps: jax.Array  # accepted solver steps
  num_rejected: jax.Array
  success: jax.Array  # reached T within max_steps with finite values


class FlowOutput(flax.struct.PyTreeNode):
  """Per-example result of ``encode`` / ``decode``."""

  y: jax.Array  # z for encode, x for decode
  nfe: jax.Array
  num_steps: jax.Array
  success: jax.Array


def _check_times(sde, t_min, t_max):
  t_min = sde.t_min_default if t_min is None else t_min
  t_max = sde.T if t_max is None else t_max
  if not 0 < t_min < t_max <= sde.T:
    raise ValueError(f"t_min and t_max must satisfy 0 < t_min < t_max <= T = {sde.T}, got "
                     f"t_min={t_min!r}, t_max={t_max!r}.")
  return t_min, t_max


def _check_example(name, x):
  if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating-point array holding one example, got "
                     f"{getattr(x, 'dtype', type(x).__name__)}.")


def log_likelihood(sde: AbstractLinearSDE, score_fn: ScoreFn, x: jax.Array, *,
                   key: jax.Array | None,
                   divergence: AbstractDivergence = ExactDivergence(),
                   variable: AbstractFlowVariable = InTime(),
                   rtol: float = 1e-5, atol: float = 1e-5,
                   t_min: float | None = None, t_max: float | None = None,
                   prior_logp_fn: LogpFn | None = None,
                   controller: ode.PIController | None = None,
                   tableau: ode.ButcherTableau = ode.DOPRI5,
                   max_steps: int = 2048) -> LikelihoodOutput:
  """log p_t_min(x) = log p_T(z) + int_{t_min}^{T} div v dt along the probability-flow ODE.

  Song et al. 2021, App. D.2; Chen et al. 2018, Thm. 1. One example ``x`` (any shape); ``vmap``
  over a batch with one ``key`` per example (used only by stochastic divergence estimators).

  Args:
    sde: the linear SDE whose probability-flow ODE is integrated.
    score_fn: per-example score(x, t).
    x: one example at time t_min.
    key: PRNG key for the divergence probes (None is fine for ``ExactDivergence``).
    divergence: ``ExactDivergence()`` or ``Hutchinson(num_probes, probe)``.
    variable: ``InTime()`` or ``InSigma()`` (the EDM variable; cheaper for VE).
    rtol, atol: local error tolerances of the adaptive solver (``controller`` overrides them):
      rtol/atol on the state, and atol nats per dimension, absolute, on the log-density integral
      (a log-density has an arbitrary offset, so a relative tolerance on it means little).
    t_min, t_max: integration interval, default [sde.t_min_default, sde.T].
    prior_logp_fn: log p_T(z); default ``sde.prior_logp``. Passing the exact marginal at T isolates
      the ODE integration error from the prior mismatch.
    tableau: the embedded RK pair (``ode.DOPRI5`` by default).
    max_steps: cap on solver steps (accepted + rejected); ``success`` reports running out.
  """
  _check_example("x", x)
  t_min, t_max = _check_times(sde, t_min, t_max)
  if controller is None:
    controller = ode.PIController(rtol=rtol, atol=atol)
  prior_logp_fn = sde.prior_logp if prior_logp_fn is None else prior_logp_fn
  probes = divergence.init(key, x)
  dtype = x.dtype

  def rhs(s, state):
    y, _ = state
    velocity_fn = lambda y_: variable.velocity(sde, score_fn, y_, s)
    v, div = divergence(velocity_fn, y, probes)
    return v, div.astype(dtype)

  s0 = variable.variable(sde, jnp.asarray(t_min, dtype))
  s1 = variable.variable(sde, jnp.asarray(t_max, dtype))
  y0 = x * jnp.exp(-variable.log_scale(sde, jnp.asarray(t_min, dtype))).astype(dtype)
  state0 = (y0, jnp.zeros((divergence.num_estimates,), dtype))

  def scale_fn(state, state_next):
    # The divergence integrals are held to atol nats per dimension, absolutely; the norm counts
    # them together like one more coordinate of the state.
    return (controller.scale(state[0], state_next[0]),
            jnp.full_like(state[1], controller.atol * x.size))

  weights = (1.0, 1.0 / divergence.num_estimates)
  sol = ode.solve(rhs, state0, s0, s1, controller=controller, tableau=tableau,
                  max_steps=max_steps, scale_fn=scale_fn,
                  norm_fn=functools.partial(ode.rms_norm, weights=weights))
  y1, integrals = sol.y
  log_scale_T = variable.log_scale(sde, jnp.asarray(t_max, dtype))
  z = y1 * jnp.exp(log_scale_T).astype(dtype)
  jacobian = x.size * (log_scale_T - variable.log_scale(sde, jnp.asarray(t_min, dtype)))
  delta_probes = integrals + jacobian.astype(dtype)
  prior = prior_logp_fn(z)
  delta = jnp.mean(delta_probes)
  k = divergence.num_estimates
  se = jnp.std(delta_probes, ddof=1) / math.sqrt(k) if k > 1 else jnp.zeros((), dtype)
  return LikelihoodOutput(logp=prior + delta, logp_se=se, prior_logp=prior, delta_logp=delta,
                          delta_logp_probes=delta_probes, z=z, nfe=sol.nfe,
                          num_steps=sol.num_accepted, num_rejected=sol.num_rejected,
                          success=sol.success)


def _flow(sde, score_fn, x, t_from, t_to, variable, controller, tableau, max_steps):
  def rhs(s, y):
    return variable.velocity(sde, score_fn, y, s)

  dtype = x.dtype
  t_from, t_to = jnp.asarray(t_from, dtype), jnp.asarray(t_to, dtype)
  y0 = x * jnp.exp(-variable.log_scale(sde, t_from)).astype(dtype)
  sol = ode.solve(rhs, y0, variable.variable(sde, t_from), variable.variable(sde, t_to),
                  controller=controller, tableau=tableau, max_steps=max_steps)
  out = sol.y * jnp.exp(variable.log_scale(sde, t_to)).astype(dtype)
  return FlowOutput(y=out, nfe=sol.nfe, num_steps=sol.num_accepted, success=sol.success)


def encode(sde: AbstractLinearSDE, score_fn: ScoreFn, x: jax.Array, *,
           variable: AbstractFlowVariable = InTime(), rtol: float = 1e-5, atol: float = 1e-5,
           t_min: float | None = None, t_max: float | None = None,
           tableau: ode.ButcherTableau = ode.DOPRI5, max_steps: int = 2048) -> FlowOutput:
  """z = x_T: the probability-flow ODE dx/dt = f x - 1/2 g^2 score from t_min to T as an encoder
  (Song et al. 2021, Sec. 4.3). One example; ``vmap`` for a batch."""
  _check_example("x", x)
  t_min, t_max = _check_times(sde, t_min, t_max)
  return _flow(sde, score_fn, x, t_min, t_max, variable, ode.PIController(rtol=rtol, atol=atol),
               tableau, max_steps)


def decode(sde: AbstractLinearSDE, score_fn: ScoreFn, z: jax.Array, *,
           variable: AbstractFlowVariable = InTime(), rtol: float = 1e-5, atol: float = 1e-5,
           t_min: float | None = None, t_max: float | None = None,
           tableau: ode.ButcherTableau = ode.DOPRI5, max_steps: int = 2048) -> FlowOutput:
  """x = x_t_min: the same ODE from T back to t_min, the inverse of ``encode``."""
  _check_example("z", z)
  t_min, t_max = _check_times(sde, t_min, t_max)
  return _flow(sde, score_fn, z, t_max, t_min, variable, ode.PIController(rtol=rtol, atol=atol),
               tableau, max_steps)


class RoundTrip(flax.struct.PyTreeNode):
  """x -> z -> x_reconstructed through the probability-flow ODE."""

  z: jax.Array
  x_reconstructed: jax.Array
  max_abs_error: jax.Array  # max_i |x_i - x_reconstructed_i|
  rms_error: jax.Array  # sqrt(mean_i (x_i - x_reconstructed_i)^2)
  nfe: jax.Array  # encode + decode


def round_trip(sde: AbstractLinearSDE, score_fn: ScoreFn, x: jax.Array, **kwargs) -> RoundTrip:
  """decode(encode(x)) and its error: how invertible the solved flow is at the given tolerance."""
  enc = encode(sde, score_fn, x, **kwargs)
  dec = decode(sde, score_fn, enc.y, **kwargs)
  diff = dec.y - x
  return RoundTrip(z=enc.y, x_reconstructed=dec.y, max_abs_error=jnp.max(jnp.abs(diff)),
                   rms_error=jnp.sqrt(jnp.mean(diff**2)), nfe=enc.nfe + dec.nfe)


# ----------------------------------------------------------------------------------------------
# Discrete data: dequantization and bits/dim
# ----------------------------------------------------------------------------------------------


def _check_levels(num_levels, data_range):
  _checks.check_count("num_levels", num_levels, minimum=2)
  lo, hi = data_range
  if not lo < hi:
    raise ValueError(f"data_range must be (lo, hi) with lo < hi, got {data_range!r}.")
  return float(lo), float(hi)


def dequantize(key: jax.Array, pixels: jax.Array, *, num_levels: int = 256,
               data_range: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
  """x = lo + (hi - lo) (k + u) / L, u ~ U[0, 1)^D: integer levels k in {0..L-1} to [lo, hi)."""
  lo, hi = _check_levels(num_levels, data_range)
  u = jr.uniform(key, jnp.shape(pixels))
  return lo + (hi - lo) * (jnp.asarray(pixels, u.dtype) + u) / num_levels


def bits_per_dim_offset(num_levels: int = 256, data_range: tuple[float, float] = (0.0, 1.0)) -> float:
  """log2(L / (hi - lo)): bits per dimension added by the map from level space to data space.

  8 for 256 levels in [0, 1], 7 for 256 levels in [-1, 1] (the "+8"/"+7" of score_sde).
  """
  lo, hi = _check_levels(num_levels, data_range)
  return math.log2(num_levels / (hi - lo))


def to_bits_per_dim(logp: jax.Array, num_dims: int, *, num_levels: int = 256,
                    data_range: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
  """bpd = -log p_X(x) / (D ln 2) + log2(L / (hi - lo)) for x the dequantized data in [lo, hi).

  With y = k + u in level space and x = lo + (hi - lo) y / L, p_Y(y) = p_X(x) ((hi - lo)/L)^D, and
  -log2 P(k) <= E_u[-log2 p_Y(k + u)] (Jensen; Theis et al. 2016), so this is an upper bound on the
  discrete negative log-likelihood in bits per dimension once averaged over u.
  """
  return -logp / (num_dims * math.log(2.0)) + bits_per_dim_offset(num_levels, data_range)


class BitsPerDim(flax.struct.PyTreeNode):
  """Per-example bits/dim over ``num_draws`` dequantization draws."""

  bpd: jax.Array  # mean over draws: the estimate of E_u[-log2 p_Y(k + u)] / D
  bpd_se: jax.Array  # standard error over draws (0 for a single draw)
  bpd_draws: jax.Array  # shape (num_draws,)


def bits_per_dim(logp_fn: Callable[[jax.Array, jax.Array], jax.Array], pixels: jax.Array, *,
                 key: jax.Array, num_draws: int = 1, num_levels: int = 256,
                 data_range: tuple[float, float] = (0.0, 1.0)) -> BitsPerDim:
  """Dequantized bits/dim of one discrete example: mean over u of -log2 p_X(x(k, u))/D + log2(L/(hi-lo)).

  ``logp_fn(x, key) -> log p_X(x)`` scores one continuous example (e.g. ``log_likelihood(...).logp``
  with its own key for Hutchinson probes); ``pixels`` holds integer levels in {0..L-1}.
  Uniform dequantization: Theis et al. 2016; Ho et al. 2019, Sec. 3.1.
  """
  _checks.check_count("num_draws", num_draws)
  pixels = jnp.asarray(pixels)
  if jnp.issubdtype(pixels.dtype, jnp.floating):
    raise ValueError(f"pixels must hold integer levels, got dtype {pixels.dtype}.")

  def one_draw(draw_key):
    u_key, logp_key = jr.split(draw_key)
    x = dequantize(u_key, pixels, num_levels=num_levels, data_range=data_range)
    return to_bits_per_dim(logp_fn(x, logp_key), pixels.size, num_levels=num_levels,
                           data_range=data_range)

  draws = jax.vmap(one_draw)(jr.split(key, num_draws))
  se = jnp.std(draws, ddof=1) / math.sqrt(num_draws) if num_draws > 1 else jnp.zeros_like(draws[0])
  return BitsPerDim(bpd=jnp.mean(draws), bpd_se=se, bpd_draws=draws)


# ----------------------------------------------------------------------------------------------
# The DDPM variational bound
# ----------------------------------------------------------------------------------------------


class ReverseVariance(enum.Enum):
  """Variance of the DDPM reverse kernel p(x_{n-1} | x_n) (Ho et al. 2020, Sec. 3.2)."""

  POSTERIOR = "posterior"  # beta-tilde_n, optimal for deterministic x0
  BETA = "beta"  # beta_n, optimal for x0 ~ N(0, I)


class ElboOutput(flax.struct.PyTreeNode):
  """Per-example terms of the DDPM bound, in nats; ``bpd`` = (prior + sum(diffusion) + decoder) / (D ln 2)."""

  bpd: jax.Array
  prior: jax.Array  # L_N = KL(q(x_N | x0) || N(0, I))
  diffusion: jax.Array  # L_{n-1} = KL(q(x_{n-1} | x_n, x0) || p(x_{n-1} | x_n)), n = 2..N, shape (N-1,)
  decoder: jax.Array  # L_0 = -log p(x0 | x_1), the discretized Gaussian decoder


def _log_gaussian_bin(lower, upper):
  """log(Phi(upper) - Phi(lower)) for lower < upper, stable in both tails."""
  flip = lower + upper > 0  # work in the lower tail, where log_ndtr is accurate
  lo = jnp.where(flip, -upper, lower)
  hi = jnp.where(flip, -lower, upper)
  log_hi = log_ndtr(hi)
  return log_hi + jnp.log1p(-jnp.exp(log_ndtr(lo) - log_hi))


def _gaussian_kl(mean_q, var_q, mean_p, var_p):
  """KL(N(mean_q, var_q) || N(mean_p, var_p)) summed over dimensions (diagonal)."""
  mean_q, var_q, mean_p, var_p = jnp.broadcast_arrays(mean_q, var_q, mean_p, var_p)
  return 0.5 * jnp.sum(jnp.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1.0)


def _check_variance_preserving(sde):
  with jax.ensure_compile_time_eval():  # the SDE is static: check it even under jit
    ts = jnp.linspace(0.1, 0.9, 5) * sde.T
    preserving = bool(jnp.allclose(sde.alpha(ts) ** 2 + sde.sigma(ts) ** 2, 1.0, atol=1e-5))
  if not preserving:
    raise ValueError("sde must be variance preserving (alpha^2 + sigma^2 = 1, e.g. VPSDE or "
                     f"CosineVPSDE) for the DDPM bound, got {type(sde).__name__}.")


def ddpm_elbo(sde: AbstractLinearSDE, score_fn: ScoreFn, pixels: jax.Array, *, key: jax.Array,
              num_steps: int = 1000, num_levels: int = 256,
              data_range: tuple[float, float] = (-1.0, 1.0),
              variance: ReverseVariance = ReverseVariance.POSTERIOR) -> ElboOutput:
  """The DDPM bound -log p(x0) <= L_N + sum_{n=2}^{N} L_{n-1} + L_0, in nats and bits/dim.

  Ho et al. 2020, eq. 5 and Sec. 3.3. The discrete chain uses alpha-bar_n = alpha(t_n)^2 at
  t_n = n T / N (as ``sdes.alphas_cumprod``), the model reads the continuous score at t_n as
  eps = -sigma(t_n) score, and the decoder L_0 is the discretized Gaussian over the L levels
  mapped to x0 = lo + (hi - lo) k / (L - 1). Every term draws its own x_n ~ q(x_n | x0); the cost
  is N score evaluations per example. One example; ``vmap`` for a batch.
  """
  _check_variance_preserving(sde)
  lo, hi = _check_levels(num_levels, data_range)
  _checks.check_count("num_steps", num_steps, minimum=2)
  if not isinstance(variance, ReverseVariance):
    raise ValueError(f"variance must be a ReverseVariance, got {variance!r}.")
  pixels = jnp.asarray(pixels)
  if jnp.issubdtype(pixels.dtype, jnp.floating):
    raise ValueError(f"pixels must hold integer levels, got dtype {pixels.dtype}.")
  dtype = jnp.result_type(float)
  x0 = lo + (hi - lo) * pixels.astype(dtype) / (num_levels - 1)
  half_bin = 0.5 * (hi - lo) / (num_levels - 1)

  # alpha-bar_n = alpha(t_n)^2 (``sdes.alphas_cumprod``); index n-1 holds step n. beta_n comes from
  # log-alpha differences through expm1: 1 - abar_n / abar_{n-1} loses digits when beta_n is tiny.
  ts = jnp.arange(1, num_steps + 1, dtype=dtype) * (sde.T / num_steps)
  log_abar = 2.0 * sde.log_alpha(ts)
  log_abar_prev = jnp.concatenate([jnp.zeros((1,), dtype), log_abar[:-1]])
  abar, abar_prev = jnp.exp(log_abar), jnp.exp(log_abar_prev)
  var, var_prev = -jnp.expm1(log_abar), -jnp.expm1(log_abar_prev)  # 1 - abar, accurately
  betas = -jnp.expm1(log_abar - log_abar_prev)

  def posterior(x_n, x0_, n):
    """Mean and variance of q(x_{n-1} | x_n, x0) (Ho et al. 2020, eq. 7); n is 1-based."""
    i = n - 1
    coef_x0 = jnp.sqrt(abar_prev[i]) * betas[i] / var[i]
    coef_xn = jnp.sqrt(1.0 - betas[i]) * var_prev[i] / var[i]
    return coef_x0 * x0_ + coef_xn * x_n, var_prev[i] * betas[i] / var[i]

  def model_mean(x_n, n):
    """The reverse mean with x0 predicted from eps = -sigma score (Ho et al. 2020, eq. 11)."""
    i = n - 1
    eps = -jnp.sqrt(var[i]) * score_fn(x_n, ts[i])
    x0_hat = (x_n - jnp.sqrt(var[i]) * eps) / jnp.sqrt(abar[i])
    return posterior(x_n, x0_hat, n)[0]

  def sample_x_n(n, noise_key):
    i = n - 1
    noise = jr.normal(noise_key, x0.shape, dtype)
    return jnp.sqrt(abar[i]) * x0 + jnp.sqrt(var[i]) * noise

  def diffusion_term(n):
    x_n = sample_x_n(n, jr.fold_in(key, n))
    mean_q, var_q = posterior(x_n, x0, n)
    var_p = var_q if variance is ReverseVariance.POSTERIOR else betas[n - 1]
    return _gaussian_kl(mean_q, var_q, model_mean(x_n, n), var_p)

  # A scan, not a vmap over n: memory stays that of one network evaluation.
  _, diffusion = jax.lax.scan(lambda c, n: (c, diffusion_term(n)), None,
                              jnp.arange(2, num_steps + 1))

  x_1 = sample_x_n(1, jr.fold_in(key, 1))
  std_1 = jnp.sqrt(betas[0])  # beta-tilde_1 = 0, so the decoder always uses beta_1
  mean_1 = model_mean(x_1, 1)
  lower = jnp.where(pixels == 0, -jnp.inf, (x0 - half_bin - mean_1) / std_1)
  upper = jnp.where(pixels == num_levels - 1, jnp.inf, (x0 + half_bin - mean_1) / std_1)
  decoder = -jnp.sum(_log_gaussian_bin(lower, upper))

  prior = _gaussian_kl(jnp.sqrt(abar[-1]) * x0, var[-1], 0.0, 1.0)
  total = prior + jnp.sum(diffusion) + decoder
  return ElboOutput(bpd=total / (x0.size * math.log(2.0)), prior=prior, diffusion=diffusion,
                    decoder=decoder)
