"""The one place where config strings become library objects (plain if/elif, clear errors)."""

from __future__ import annotations

import ml_collections
import numpy as np

from diffusion_jax import (_checks, data, likelihood, nets, samplers, sampling, schedules, sdes,
                           train)
from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.losses import Weighting
from diffusion_jax.parameterization import Prediction


def _unknown(key: str, value, allowed) -> ValueError:
  return ValueError(f"Unknown {key}={value!r}; expected one of {', '.join(map(repr, allowed))}.")


def _enum_member(enum_cls, key: str, value):
  allowed = [member.value for member in enum_cls]
  if value not in allowed:
    raise _unknown(key, value, allowed)
  return enum_cls(value)


def build_sde(config: ml_collections.ConfigDict) -> sdes.AbstractLinearSDE:
  """config.sde -> a linear SDE."""
  c = config.sde
  if c.name == "vp":
    return sdes.VPSDE(beta_min=c.beta_min, beta_max=c.beta_max)
  elif c.name == "subvp":
    return sdes.SubVPSDE(beta_min=c.beta_min, beta_max=c.beta_max)
  elif c.name == "ve":
    return sdes.VESDE(sigma_min=c.sigma_min, sigma_max=c.sigma_max)
  elif c.name == "cosine_vp":
    return sdes.CosineVPSDE(s=c.cosine_s)
  raise _unknown("config.sde.name", c.name, ("vp", "subvp", "ve", "cosine_vp"))


def build_prediction(config: ml_collections.ConfigDict) -> Prediction:
  """config.model.prediction -> what the network predicts."""
  return _enum_member(Prediction, "config.model.prediction", config.model.prediction)


def build_model(config: ml_collections.ConfigDict):
  """config.model -> a batched flax.linen network ``apply(params, x, t[, label])``."""
  c = config.model
  if c.time_embedding == "fourier":
    time_embedding = nets.GaussianFourierEmbedding(features=c.embed_dim, scale=c.fourier_scale)
  elif c.time_embedding == "sinusoidal":
    time_embedding = nets.SinusoidalEmbedding(features=c.embed_dim)
  else:
    raise _unknown("config.model.time_embedding", c.time_embedding, ("fourier", "sinusoidal"))
  if c.name == "mlp":
    return nets.ScoreMLP(hidden_sizes=tuple(c.hidden_sizes), embed_dim=c.embed_dim,
                         time_embedding=time_embedding, num_classes=c.num_classes or None)
  raise _unknown("config.model.name", c.name, ("mlp",))


def build_dataset(config: ml_collections.ConfigDict) -> data.ToyDataset:
  """config.data -> a dataset whose batch at step s is a pure function of (key, s)."""
  name = config.data.name
  if name == "eight_gaussians":
    return data.eight_gaussians()
  elif name == "checkerboard":
    return data.checkerboard()
  elif name == "two_moons":
    return data.two_moons()
  elif name == "swiss_roll":
    return data.swiss_roll()
  elif name == "gaussian_mixture":
    means = np.asarray(config.data.mixture_means, float)
    variances = np.asarray(config.data.mixture_variances, float)
    if means.ndim != 2:
      raise ValueError(f"config.data.mixture_means must have shape (K, D), got {means.shape}.")
    if variances.shape not in ((), means.shape[:1], means.shape):
      raise ValueError(f"config.data.mixture_variances must have shape {means.shape} (like "
                       f"config.data.mixture_means), ({means.shape[0]},) or (), got {variances.shape}.")
    if variances.shape == means.shape[:1]:
      variances = variances[:, None]  # one variance per component, shared by all axes
    return data.gaussian_mixture(GaussianMixture.create(config.data.mixture_weights, means,
                                                        variances))
  raise _unknown("config.data.name", name,
                 ("eight_gaussians", "checkerboard", "two_moons", "swiss_roll", "gaussian_mixture"))


def build_weighting(config: ml_collections.ConfigDict) -> Weighting:
  return _enum_member(Weighting, "config.training.weighting", config.training.weighting)


def build_optimizer(config: ml_collections.ConfigDict):
  """config.training -> (optax optimiser, its learning-rate schedule for logging)."""
  c = config.training
  if c.lr_schedule == "constant":
    decay_steps = None
  elif c.lr_schedule == "cosine":
    decay_steps = c.num_steps
  else:
    raise _unknown("config.training.lr_schedule", c.lr_schedule, ("constant", "cosine"))
  kwargs = dict(warmup_steps=c.warmup_steps, decay_steps=decay_steps)
  optimizer = train.make_optimizer(c.learning_rate, grad_clip_norm=c.grad_clip_norm or None,
                                   weight_decay=c.weight_decay, **kwargs)
  return optimizer, train.make_lr_schedule(c.learning_rate, **kwargs)


def build_sampler(config: ml_collections.ConfigDict):
  """config.sampling -> a sampler (``diffusion_jax.samplers``), wrapped in predictor-corrector if asked."""
  c = config.sampling
  name = c.sampler
  if name == "euler_maruyama":
    sampler = samplers.EulerMaruyama()
  elif name == "reverse_diffusion":
    sampler = samplers.ReverseDiffusion()
  elif name == "ancestral":
    sampler = samplers.Ancestral()
  elif name == "annealed_langevin":
    sampler = samplers.AnnealedLangevin(step_lr=c.langevin_step_lr, num_steps=c.langevin_steps)
  elif name == "euler":
    sampler = samplers.Euler()
  elif name == "heun":
    sampler = samplers.Heun()
  elif name == "edm_stochastic":
    sampler = samplers.EDMStochastic(s_churn=c.s_churn, s_tmin=c.s_tmin, s_tmax=c.s_tmax,
                                     s_noise=c.s_noise)
  elif name == "ddim":
    sampler = samplers.DDIM(eta=c.eta)
  elif name == "dpm_solver_2m":
    sampler = samplers.DPMSolverPP(order=2)
  elif name == "dpm_solver_3m":
    sampler = samplers.DPMSolverPP(order=3)
  elif name == "unipc":
    sampler = samplers.UniPC(order=c.order)
  elif name == "ipndm":
    sampler = samplers.IPNDM()
  elif name == "adaptive":
    sampler = samplers.AdaptiveODE(rtol=c.rtol, atol=c.atol)
  else:
    raise _unknown("config.sampling.sampler", name,
                   ("euler_maruyama", "reverse_diffusion", "ancestral", "annealed_langevin", "euler",
                    "heun", "edm_stochastic", "ddim", "dpm_solver_2m", "dpm_solver_3m", "unipc",
                    "ipndm", "adaptive"))
  if c.corrector == "langevin":
    # Norms averaged over the batch as in score_sde: per example, the SNR rule takes steps far too
    # large in low dimensions (measured: energy distance 0.25 on 2-D mixtures). The runner's
    # sampling program names its example axis BATCH_AXIS.
    corrector = samplers.Langevin(snr=c.snr, num_steps=c.corrector_steps,
                                  axis_name=sampling.BATCH_AXIS)
    sampler = samplers.PredictorCorrector(sampler, corrector)
  elif c.corrector != "none":
    raise _unknown("config.sampling.corrector", c.corrector, ("none", "langevin"))
  start = c.get("ancestral_start_steps", 0)
  _checks.check_count("config.sampling.ancestral_start_steps", start, minimum=0)
  if start:
    # Ancestral steps first, then the sampler: forgets most of the prior mismatch (samplers.Chain).
    sampler = samplers.Chain(samplers.DDIM(eta=1.0), sampler, steps=start)
  return sampler


def build_time_grid(config: ml_collections.ConfigDict, sde):
  """config.sampling -> the decreasing time grid from T to t_min (the adaptive solver takes (T, t_min))."""
  c = config.sampling
  if c.sampler == "adaptive":
    return np.array([sde.T, c.t_min])
  if c.grid == "time_uniform":
    return schedules.uniform_time(sde, c.num_steps, c.t_min)
  elif c.grid == "time_quadratic":
    return schedules.time_quadratic(sde, c.num_steps, c.t_min)
  elif c.grid == "log_snr":
    return schedules.uniform_log_snr(sde, c.num_steps, c.t_min)
  elif c.grid == "edm":
    return schedules.edm_rho(sde, c.num_steps, c.t_min, rho=c.rho)
  raise _unknown("config.sampling.grid", c.grid, ("time_uniform", "time_quadratic", "log_snr", "edm"))


def build_divergence(config: ml_collections.ConfigDict):
  """config.likelihood -> a divergence strategy for the probability-flow likelihood."""
  c = config.likelihood
  if c.divergence == "exact":
    return likelihood.ExactDivergence()
  elif c.divergence == "hutchinson":
    allowed = [p.value for p in likelihood.Probe]
    if c.probe not in allowed:
      raise _unknown("config.likelihood.probe", c.probe, allowed)
    return likelihood.Hutchinson(num_probes=c.num_probes, probe=likelihood.Probe(c.probe))
  raise _unknown("config.likelihood.divergence", c.divergence, ("exact", "hutchinson"))


def build_flow_variable(config: ml_collections.ConfigDict, sde):
  """config.likelihood.variable -> the ODE's integration variable ("auto": sigma for VE, else t)."""
  name = config.likelihood.variable
  if name == "auto":
    name = "sigma" if isinstance(sde, sdes.VESDE) else "t"
  if name == "t":
    return likelihood.InTime()
  elif name == "sigma":
    return likelihood.InSigma()
  raise _unknown("config.likelihood.variable", name, ("auto", "t", "sigma"))


def build_denoise_final(config: ml_collections.ConfigDict) -> bool | None:
  """config.sampling.denoise_final: "default" (the sampler's paper decides), "true" or "false"."""
  value = config.sampling.denoise_final
  if value == "default":
    return None
  elif value == "true":
    return True
  elif value == "false":
    return False
  raise _unknown("config.sampling.denoise_final", value, ("default", "true", "false"))
