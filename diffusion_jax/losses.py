"""Per-example training objectives: denoising score matching (DSM), NCSN and EDM.

DSM (Vincent 2011; Song et al. 2021; Ho et al. 2020): with x_t = alpha(t) x0 + sigma(t) noise the
conditional score is -noise / sigma(t), so lambda(t) ||s_theta(x_t, t) + noise / sigma||^2 equals
(lambda(t) / sigma^2) ||eps_theta - noise||^2 whatever the network predicts: every prediction is
converted to eps and compared with the noise. EDM (Karras et al. 2022) compares an x0 prediction
with x0 under its own weighting and log-normal noise levels.

``model_fn(params, x, t, cond, *, key, train)`` is the batched network contract; one example
crosses the batch boundary through ``parameterization.apply_to_example`` (the same function
``NetworkScore`` uses). The losses pass a dropout key and train=True. ``make_*_loss_fn`` return
``loss_fn(params, frozen, example, key) -> record``, what the train step vmaps.
"""

from __future__ import annotations

import enum
import math
import numbers
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import schedules
from diffusion_jax.parameterization import EDMPrecond, Prediction, apply_to_example, to_eps
from diffusion_jax.sde import AbstractLinearSDE
from diffusion_jax.sdes import VESDE

ModelFn = Callable[..., jax.Array]
# loss_fn(params, frozen, example, key) -> record, on ONE example (a dict without the batch axis).
LossFn = Callable[[Any, Any, dict, jax.Array], Any]


class Weighting(enum.Enum):
  """lambda(t) in lambda(t) ||s_theta - grad log p(x_t | x0)||^2."""

  SIMPLE = "simple"  # lambda = sigma^2: the eps-MSE of DDPM (Ho et al. 2020), Song et al.'s default
  LIKELIHOOD = "likelihood"  # lambda = g(t)^2: the weighting that bounds -log p (Song et al. 2021b)


class LossOutput(flax.struct.PyTreeNode):
  """Per-example DSM / NCSN record."""

  loss: jax.Array  # the weighted loss that is minimised
  t: jax.Array  # the diffusion time the example was noised to
  eps_mse: jax.Array  # unweighted mean squared error of the eps prediction (a diagnostic)


class EDMLossOutput(flax.struct.PyTreeNode):
  """Per-example EDM record."""

  loss: jax.Array  # lambda(sigma~) ||D - x0||^2, minimised
  t: jax.Array  # the diffusion time of the drawn noise level
  edm_sigma: jax.Array  # EDM's noise level sigma~ = sigma(t) / alpha(t) at that time (not sde.sigma)
  x0_mse: jax.Array  # unweighted mean squared error of the x0 prediction (a diagnostic)


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


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_static(sde, prediction=None, weighting=None, t_min=None):
  if not isinstance(sde, AbstractLinearSDE):
    raise TypeError(f"sde must be an AbstractLinearSDE instance, got {sde!r}.")
  if prediction is not None and not isinstance(prediction, Prediction):
    raise TypeError(f"prediction must be a Prediction, got {prediction!r}.")
  if weighting is not None and not isinstance(weighting, Weighting):
    raise TypeError(f"weighting must be a Weighting, got {weighting!r}.")
  if t_min is not None and (not _is_real(t_min) or not 0.0 <= t_min < sde.T):
    raise ValueError(f"t_min must be a float in [0, T={sde.T}), got {t_min!r}.")


def dsm_loss_at(model_fn: ModelFn, params, x0: jax.Array, cond: Any, t: jax.Array,
                noise: jax.Array, *, sde: AbstractLinearSDE, prediction: Prediction = Prediction.EPS,
                weighting: Weighting = Weighting.SIMPLE, key: jax.Array | None = None,
                train: bool = True) -> LossOutput:
  """The DSM loss of one example at a given time and noise draw (the deterministic core);
  ``key`` is the network's dropout key."""
  if noise.shape != x0.shape:
    raise ValueError(f"noise must have the shape of x0 {x0.shape}, got {noise.shape}.")
  alpha, sigma = sde.alpha(t), sde.sigma(t)
  x_t = alpha * x0 + sigma * noise
  pred = apply_to_example(model_fn, params, x_t, t, cond, key=key, train=train)
  eps_hat = to_eps(pred, x_t, alpha, sigma, prediction)
  sq = jnp.sum((eps_hat - noise) ** 2)
  return LossOutput(loss=weight(sde, t, weighting) * sq, t=t, eps_mse=sq / x0.size)


def dsm_loss(model_fn: ModelFn, params, x0: jax.Array, cond: Any, key: jax.Array, *,
             sde: AbstractLinearSDE, prediction: Prediction = Prediction.EPS,
             weighting: Weighting = Weighting.SIMPLE, t_min: float = 1e-5) -> LossOutput:
  """Denoising score matching for one example: t ~ U[t_min, T], noise ~ N(0, I).

  Keys: ``t_key, noise_key, dropout_key = split(key, 3)``.
  """
  t_key, noise_key, dropout_key = jr.split(key, 3)
  t = sample_time(t_key, t_min, sde.T)
  noise = jr.normal(noise_key, x0.shape, x0.dtype)
  return dsm_loss_at(model_fn, params, x0, cond, t, noise, sde=sde, prediction=prediction,
                     weighting=weighting, key=dropout_key)


def ncsn_loss(model_fn: ModelFn, params, x0: jax.Array, cond: Any, key: jax.Array, *, sde: VESDE,
              num_scales: int, prediction: Prediction = Prediction.SCORE) -> LossOutput:
  """NCSN loss over the discrete ladder (Song & Ermon 2019, eq. 6 with lambda = sigma_i^2).

  i ~ U{1..L};  1/2 ||sigma_i s_theta(x0 + sigma_i noise, t_i) + noise||^2, where t_i is the time of
  sigma_i on the VE SDE, so an NCSN and a continuous VE model share one network signature.
  Keys: ``level_key, noise_key, dropout_key = split(key, 3)``.
  """
  level_key, noise_key, dropout_key = jr.split(key, 3)
  sigmas = jnp.asarray(sde.ncsn_sigmas(num_scales))
  t = sde.time_at_sigma(sigmas[jr.randint(level_key, (), 0, num_scales)])
  noise = jr.normal(noise_key, x0.shape, x0.dtype)
  out = dsm_loss_at(model_fn, params, x0, cond, t, noise, sde=sde, prediction=prediction,
                    weighting=Weighting.SIMPLE, key=dropout_key)
  return out.replace(loss=0.5 * out.loss)


def edm_weight(sigma: jax.Array, sigma_data: float) -> jax.Array:
  """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. 2022, Table 1): 1 / c_out^2."""
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss_at(model_fn: ModelFn, params, x0: jax.Array, cond: Any, t: jax.Array,
                noise: jax.Array, *, sde: AbstractLinearSDE, sigma_data: float,
                key: jax.Array | None = None, train: bool = True) -> EDMLossOutput:
  """lambda(s) ||D(x_t, t) - x0||^2 at x_t = alpha(t) x0 + sigma(t) noise, s = sigma(t)/alpha(t),
  for an x0-predicting ``model_fn`` (the deterministic core of ``edm_loss``)."""
  if noise.shape != x0.shape:
    raise ValueError(f"noise must have the shape of x0 {x0.shape}, got {noise.shape}.")
  alpha, sigma = sde.alpha(t), sde.sigma(t)
  x_t = alpha * x0 + sigma * noise
  denoised = apply_to_example(model_fn, params, x_t, t, cond, key=key, train=train)
  sq = jnp.sum((denoised - x0) ** 2)
  s = sigma / alpha
  return EDMLossOutput(loss=edm_weight(s, sigma_data) * sq, t=t, edm_sigma=s, x0_mse=sq / x0.size)


def edm_time(sde: AbstractLinearSDE, key: jax.Array, *, p_mean: float, p_std: float,
             t_min: float) -> jax.Array:
  """t of a log-normal noise level: log sigma~ ~ N(p_mean, p_std^2) (Karras et al. 2022, Table 1),
  mapped to the SDE's time by lambda = -2 log sigma~ and ``schedules.time_at_log_snr``, then clipped
  to [t_min, T]. Levels outside [sigma~(t_min), sigma~(T)] land on the nearest end."""
  log_sigma = p_mean + p_std * jr.normal(key, ())
  t = schedules.time_at_log_snr(sde, -2.0 * log_sigma)
  return jnp.clip(t, t_min, sde.T)


def edm_loss(model_fn: ModelFn, params, x0: jax.Array, cond: Any, key: jax.Array, *,
             sde: AbstractLinearSDE, sigma_data: float = 0.5, p_mean: float = -1.2,
             p_std: float = 1.2, t_min: float | None = None) -> EDMLossOutput:
  """EDM's loss for one example (Karras et al. 2022, eq. 8 and Table 1):

      E ||D(x0 + s noise; s) - x0||^2 (s^2 + sd^2)/(s sd)^2,  log s ~ N(p_mean, p_std^2),

  for any linear SDE: s is EDM's level sigma~ = sigma/alpha, drawn as above and mapped to the time
  t = time_at_log_snr(sde, -2 log s) clipped to [t_min, T] (``edm_time``); the network sees
  x_t = alpha(t) (x0 + s noise) and the weight uses the s of the clipped t. ``model_fn`` predicts
  x0 (e.g. ``EDMPrecond``). Keys: ``sigma_key, noise_key, dropout_key = split(key, 3)``.
  """
  t_min = sde.t_min_default if t_min is None else t_min
  sigma_key, noise_key, dropout_key = jr.split(key, 3)
  t = edm_time(sde, sigma_key, p_mean=p_mean, p_std=p_std, t_min=t_min)
  noise = jr.normal(noise_key, x0.shape, x0.dtype)
  return edm_loss_at(model_fn, params, x0, cond, t, noise, sde=sde, sigma_data=sigma_data,
                     key=dropout_key)


def _example_parts(example, cond_key):
  if not isinstance(example, dict) or "x0" not in example:
    raise ValueError(f"example must be a dict with an 'x0' entry, got {type(example).__name__}"
                     f"{sorted(example) if isinstance(example, dict) else ''}.")
  if cond_key is None:
    return example["x0"], None
  if cond_key not in example:
    raise ValueError(f"cond_key={cond_key!r} is not an entry of the example; it has "
                     f"{sorted(example)}.")
  return example["x0"], example[cond_key]


def _model_params(params, frozen, combine_fn):
  if combine_fn is not None:
    return combine_fn(params, frozen)
  if frozen is not None:
    raise ValueError("the loss got frozen parameters but no combine_fn(params, frozen) to build "
                     "the network's parameters from them; pass combine_fn.")
  return params


def make_dsm_loss_fn(model_fn: ModelFn, sde: AbstractLinearSDE, *,
                     prediction: Prediction = Prediction.EPS,
                     weighting: Weighting = Weighting.SIMPLE, t_min: float = 1e-5,
                     cond_key: str | None = None,
                     combine_fn: Callable[[Any, Any], Any] | None = None) -> LossFn:
  """``loss_fn(params, frozen, example, key)``: ``dsm_loss`` on one example {"x0", [cond_key]}.

  The condition is ``example[cond_key]`` (None: unconditional). The network's parameters are
  ``params``, or ``combine_fn(params, frozen)`` when given (frozen is then read, never trained).
  """
  _check_static(sde, prediction, weighting, t_min)

  def loss_fn(params, frozen, example, key):
    x0, cond = _example_parts(example, cond_key)
    return dsm_loss(model_fn, _model_params(params, frozen, combine_fn), x0, cond, key, sde=sde,
                    prediction=prediction, weighting=weighting, t_min=t_min)

  return loss_fn


def make_edm_loss_fn(model_fn: ModelFn, sde: AbstractLinearSDE, *, sigma_data: float = 0.5,
                     p_mean: float = -1.2, p_std: float = 1.2, t_min: float | None = None,
                     cond_key: str | None = None,
                     combine_fn: Callable[[Any, Any], Any] | None = None) -> LossFn:
  """``loss_fn(params, frozen, example, key)``: ``edm_loss`` on one example {"x0", [cond_key]}.

  ``model_fn`` predicts x0, typically ``EDMPrecond(raw_model_fn, sde, sigma_data)``; an EDMPrecond
  with another sigma_data is an error (the weighting and the preconditioning must agree).
  """
  _check_static(sde, t_min=t_min)
  if not _is_real(sigma_data) or not 0 < sigma_data < math.inf:
    raise ValueError(f"sigma_data must be a finite float > 0, got {sigma_data!r}.")
  if not _is_real(p_mean) or not math.isfinite(p_mean):
    raise ValueError(f"p_mean must be a finite float, got {p_mean!r}.")
  if not _is_real(p_std) or not 0 < p_std < math.inf:
    raise ValueError(f"p_std must be a finite float > 0, got {p_std!r}.")
  if isinstance(model_fn, EDMPrecond) and model_fn.sigma_data != sigma_data:
    raise ValueError(f"sigma_data={sigma_data} differs from the model_fn's EDMPrecond.sigma_data="
                     f"{model_fn.sigma_data}.")

  def loss_fn(params, frozen, example, key):
    x0, cond = _example_parts(example, cond_key)
    return edm_loss(model_fn, _model_params(params, frozen, combine_fn), x0, cond, key, sde=sde,
                    sigma_data=sigma_data, p_mean=p_mean, p_std=p_std, t_min=t_min)

  return loss_fn
