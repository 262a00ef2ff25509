"""The shared test harness: one list of SDEs, one of samplers (each with its declared order), one problem factory.

Test files parametrise over these tuples of *instances* (ids from the names), so a new SDE or
sampler is tested everywhere by adding it here.

Float64 numerics: tests marked ``x64`` run their body inside ``float64()`` (``jax.enable_x64``),
so they run in the ordinary invocation; the CI leg ``JAX_ENABLE_X64=1 python -m pytest -m x64
tests/`` reruns the same set with float64 switched on for the whole process (the context is then
a no-op), which also covers code paths that read the flag at import.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

from diffusion_jax import analytic, schedules, sdes
from diffusion_jax import samplers as S

# --- SDEs ------------------------------------------------------------------------------------

SDES = (sdes.VPSDE(), sdes.SubVPSDE(), sdes.VESDE(), sdes.CosineVPSDE())
SDE_IDS = ("vp", "subvp", "ve", "cosine_vp")


def sde_id(sde) -> str:
  return SDE_IDS[[type(s) for s in SDES].index(type(sde))]


def t_min_of(sde) -> float:
  """Where sampling stops: 0 for VE (sigma(0) = sigma_min > 0), 1e-3 where sigma(0) = 0."""
  return 0.0 if isinstance(sde, sdes.VESDE) else 1e-3


def grid(sde, kind: str, num_steps: int) -> jax.Array:
  """A decreasing grid from T to t_min: "t" uniform in time, "lambda" uniform in log-SNR, "one" (T, t_min)."""
  t_min = t_min_of(sde)
  if kind == "t":
    return schedules.uniform_time(sde, num_steps, t_min)
  if kind == "lambda":
    return schedules.uniform_log_snr(sde, num_steps, t_min)
  if kind == "one":
    return jnp.array([sde.T, t_min])
  raise ValueError(f"unknown grid kind {kind!r}")


# --- problems --------------------------------------------------------------------------------

# Non-centred, unequal weights, anisotropic components: the 2-D problem of the sampler tests.
GMM_2D = analytic.GaussianMixture.create([0.3, 0.7], [[-2.0, 1.0], [1.5, -0.5]],
                                         [[0.3, 0.1], [0.2, 0.5]])


def mixture(dim: int = 2, *, key: jax.Array | None = None, num_components: int = 3,
            min_variance: float = 0.05, max_variance: float = 0.3) -> analytic.GaussianMixture:
  """A random test mixture (``analytic.random_mixture``) with a fixed default key."""
  key = jr.key(0) if key is None else key
  return analytic.random_mixture(key, dim, num_components=num_components,
                                 min_variance=min_variance, max_variance=max_variance)


def problem(sde, gmm: analytic.GaussianMixture | None = None) -> analytic.DiffusedMixture:
  """The exact score of ``gmm`` (default ``GMM_2D``) under ``sde``."""
  return analytic.DiffusedMixture(GMM_2D if gmm is None else gmm, sde)


# --- samplers --------------------------------------------------------------------------------


class Case(NamedTuple):
  name: str
  sampler: S.AbstractSampler
  order: int | None  # the declared global order of a deterministic sampler; None if stochastic
  grid: str  # the grid it is run on at high NFE


# Deterministic samplers with their orders: Euler and DDIM first order (DDIM is Euler in x/alpha,
# sigma/alpha); Heun second (Karras et al. 2022); DPM-Solver++(2M)/(3M) 2/3 (Lu et al. 2022b);
# UniPC-p with its corrector p + 1 (Zhao et al. 2023, Thm. 3.3). iPNDM is order 4 only on grids
# equally spaced in sigma/alpha: its Adams-Bashforth weights are the equal-step ones, and on a
# log-SNR (or EDM) grid, whose step ratios are 1 + O(1/N), that leaves order 2 (measured in
# float64: 1.96 on VP). Without the warm-down (lower_order_final), whose last low-order steps would
# cap the order on these fine grids.
DETERMINISTIC = (
    Case("euler", S.Euler(), 1, "t"),
    Case("ddim", S.DDIM(), 1, "lambda"),
    Case("heun", S.Heun(), 2, "lambda"),
    Case("dpm_solver_2m", S.DPMSolverPP(order=2), 2, "lambda"),
    Case("dpm_solver_3m", S.DPMSolverPP(order=3), 3, "lambda"),
    Case("unipc_2", S.UniPC(order=2), 3, "lambda"),
    Case("unipc_1", S.UniPC(order=1), 2, "lambda"),
    Case("ipndm", S.IPNDM(), 2, "lambda"),
)

STOCHASTIC = (
    Case("euler_maruyama", S.EulerMaruyama(), None, "t"),
    Case("reverse_diffusion", S.ReverseDiffusion(), None, "t"),
    Case("ancestral", S.Ancestral(), None, "t"),
    Case("ancestral_beta", S.Ancestral(posterior_variance=False), None, "t"),
    Case("ddim_eta1", S.DDIM(eta=1.0), None, "lambda"),
    Case("edm_stochastic", S.EDMStochastic(), None, "lambda"),
    Case("pc", S.PredictorCorrector(S.ReverseDiffusion(), S.Langevin(axis_name="batch")), None, "t"),
    Case("chain", S.Chain(S.DDIM(eta=1.0), S.IPNDM()), None, "lambda"),
)

ALL = DETERMINISTIC + STOCHASTIC


def without_warm_down(sampler):
  """The sampler without its lower-order last steps on short grids, which would cap a fitted order."""
  return sampler.replace(lower_order_final=False) if hasattr(sampler, "lower_order_final") else sampler


def ids(cases) -> list[str]:
  return [c.name for c in cases]


# --- float64 ---------------------------------------------------------------------------------

x64 = pytest.mark.x64


@contextlib.contextmanager
def float64():
  """Float64 for the body of a test (a no-op when JAX_ENABLE_X64=1 already set it)."""
  with jax.enable_x64(True):
    yield
