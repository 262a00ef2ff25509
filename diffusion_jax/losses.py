"""Per-example denoising score matching losses (Vincent 2011; Song et al. 2021; Ho et al. 2020).

With x_t = alpha(t) x0 + sigma(t) noise, the conditional score is -noise / sigma(t), so the DSM loss
lambda(t) ||s_theta(x_t, t) + noise / sigma||^2 equals (lambda(t) / sigma^2) ||eps_theta - noise||^2
whatever the network predicts: every prediction is converted to eps and compared with the noise.

``model_fn(params, x, t) -> prediction`` acts on one example; the train step ``vmap``s the loss.
"""

from __future__ import annotations

import enum
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax.parameterization import Prediction, to_eps
from diffusion_jax.sde import AbstractLinearSDE
from diffusion_jax.sdes import VESDE

ModelFn = Callable[[object, jax.Array, jax.Array], jax.Array]


class Weighting(enum.Enum):
  """lambda(t) in lambda(t) ||s_theta - grad log p(x_t | x0)||^2."""

  SIMPLE = "simple"  # lambda = sigma^2: the eps-MSE of DDPM (Ho et al. 2020), Song et al.'s default
  LIKELIHOOD = "likelihood"  # lambda = g(t)^2: the weighting that bounds -log p (Song et al. 2021b)


class LossOutput(flax.struct.PyTreeNode):
  """Per-example loss record."""

  loss: jax.Array  # the weighted loss that is minimised
  t: jax.Array  # the diffusion time the example was noised to
  eps_mse: jax.Array  # unweighted mean squared error of the eps prediction (a diagnostic)


def sample_time(key: jax.Array, t_min: float, T: float) -> jax.Array:
  """t ~ U[t_min, T]: the cut-off t_min keeps the loss away from the singular sigma -> 0 end."""
  return jr.uniform(key, (), minval=t_min, maxval=T)


def weight(sde: AbstractLinearSDE, t: jax.Array, weighting: Weighting) -> jax.Array:
  """lambda(t) / sigma(t)^2: the factor in front of ||eps_theta - noise||^2."""
  if weighting is Weighting.SIMPLE:
    return jnp.ones_like(t)
  if weighting is Weighting.LIKELIHOOD:
    return sde.diffusion_squared(t) / sde.sigma(t) ** 2
  raise ValueError(f"weighting must be a Weighting, got {weighting!r}.")


def dsm_loss_at(model_fn: ModelFn, params, x0: jax.Array, t: jax.Array, noise: jax.Array, *,
                sde: AbstractLinearSDE, prediction: Prediction = Prediction.EPS,
                weighting: Weighting = Weighting.SIMPLE) -> LossOutput:
  """The DSM loss of one example at a given time and noise draw (the deterministic core)."""
  if noise.shape != x0.shape:
    raise ValueError(f"noise must have the shape of x0 {x0.shape}, got {noise.shape}.")
  alpha, sigma = sde.alpha(t), sde.sigma(t)
  x_t = alpha * x0 + sigma * noise
  eps_hat = to_eps(model_fn(params, x_t, t), x_t, alpha, sigma, prediction)
  sq = jnp.sum((eps_hat - noise) ** 2)
  return LossOutput(loss=weight(sde, t, weighting) * sq, t=t, eps_mse=sq / x0.size)


def dsm_loss(model_fn: ModelFn, params, x0: jax.Array, key: jax.Array, *, sde: AbstractLinearSDE,
             prediction: Prediction = Prediction.EPS, weighting: Weighting = Weighting.SIMPLE,
             t_min: float = 1e-5) -> LossOutput:
  """Denoising score matching for one example: t ~ U[t_min, T], noise ~ N(0, I)."""
  t_key, noise_key = jr.split(key)
  t = sample_time(t_key, t_min, sde.T)
  noise = jr.normal(noise_key, x0.shape, x0.dtype)
  return dsm_loss_at(model_fn, params, x0, t, noise, sde=sde, prediction=prediction,
                     weighting=weighting)


def ncsn_loss(model_fn: ModelFn, params, x0: jax.Array, key: jax.Array, *, sde: VESDE,
              num_scales: int, prediction: Prediction = Prediction.SCORE) -> LossOutput:
  """NCSN loss over the discrete ladder (Song & Ermon 2019, eq. 6 with lambda = sigma_i^2).

  i ~ U{1..L};  1/2 ||sigma_i s_theta(x0 + sigma_i noise, t_i) + noise||^2, where t_i is the time of
  sigma_i on the VE SDE, so an NCSN and a continuous VE model share one network signature.
  """
  level_key, noise_key = jr.split(key)
  sigmas = jnp.asarray(sde.ncsn_sigmas(num_scales))
  t = sde.time_at_sigma(sigmas[jr.randint(level_key, (), 0, num_scales)])
  noise = jr.normal(noise_key, x0.shape, x0.dtype)
  out = dsm_loss_at(model_fn, params, x0, t, noise, sde=sde, prediction=prediction,
                    weighting=Weighting.SIMPLE)
  return out.replace(loss=0.5 * out.loss)
