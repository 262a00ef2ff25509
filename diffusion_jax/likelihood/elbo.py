"""The DDPM variational bound on the discrete negative log-likelihood (Ho et al. 2020, eq. 5).

-log p(x0) <= L_N + sum_{n=2}^{N} L_{n-1} + L_0 with Gaussian reverse kernels and a discretized
Gaussian decoder: a purely discrete estimator, with no dequantization and no offset. The chain is
``sdes.ddpm_schedule`` of the VP SDE.
"""

from __future__ import annotations

import enum
import math

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.special import log_ndtr

from diffusion_jax import sdes
from diffusion_jax.likelihood import _validate
from diffusion_jax.likelihood.dequantization import check_levels, level_centres
from diffusion_jax.sde import AbstractLinearSDE, ScoreFn


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
  success: jax.Array  # levels inside [0, L) and a finite bound (the check under jit)


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
  _validate.sde(sde)
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

  Ho et al. 2020, eq. 5 and Sec. 3.3. The discrete chain is ``sdes.ddpm_schedule(sde, N)``
  (alpha-bar_n = alpha(t_n)^2 at t_n = n T / N), the model reads the continuous score at t_n as
  the noise prediction eps = -sigma(t_n) score, and the decoder L_0 is the discretized Gaussian
  over the L levels' cells: level k is x0 = lo + (hi - lo)(k + 1/2) / L, the centre of the cell
  [lo + (hi - lo) k / L, lo + (hi - lo)(k + 1) / L) that ``dequantize`` fills (the end cells open
  to -inf and +inf), so the bound and the dequantized ODE likelihood score the same data. Every term draws its own
  x_n ~ q(x_n | x0); the cost is N score evaluations per example. One example; ``vmap`` for a batch.
  """
  _check_variance_preserving(sde)
  num_levels, lo, hi = check_levels(num_levels, data_range)
  num_steps = _validate.count("num_steps", num_steps, minimum=2)
  if not isinstance(variance, ReverseVariance):
    raise ValueError(f"variance must be a ReverseVariance, got {variance!r}.")
  pixels = _validate.pixels(pixels, num_levels)
  if key is None:
    raise ValueError("key must be a PRNG key (the draws of x_n), got None.")
  dtype = jnp.result_type(float)
  x0 = level_centres(pixels, num_levels=num_levels, data_range=(lo, hi)).astype(dtype)
  _validate.score_fn(score_fn, x0, "pixels")
  half_bin = 0.5 * (hi - lo) / num_levels

  chain = sdes.ddpm_schedule(sde, num_steps)  # index n-1 holds step n
  ts = chain.ts
  abar, abar_prev = chain.alphas_cumprod, jnp.exp(chain.log_alphas_cumprod_prev)
  var = chain.one_minus_alphas_cumprod
  var_prev = -jnp.expm1(chain.log_alphas_cumprod_prev)
  betas = chain.betas

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
  ok = _validate.in_range(pixels, num_levels) & jnp.isfinite(total)
  return ElboOutput(bpd=total / (x0.size * math.log(2.0)), prior=prior, diffusion=diffusion,
                    decoder=decoder, success=ok)
