"""The one place where config strings become library objects (plain if/elif, clear errors).

``build_method(config)`` returns the ``Method`` record the runner trains, samples and evaluates;
``build_batch_source(config, mesh, key)`` the source of its training batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr
import ml_collections
import numpy as np

from diffusion_jax import (_checks, conditions, data, guidance, likelihood, losses, nets,
                           parameterization,
                           samplers, sampling, schedules, sdes, train)
from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.losses import Weighting
from diffusion_jax.parameterization import Prediction
from experiments import input_pipeline, progress
from experiments.evaluate import toy as evaluate_toy
from experiments.method import Method


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
  """config.model -> a batched flax.linen network ``apply(params, x, t[, cond])``."""
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


def _mixture(config: ml_collections.ConfigDict) -> GaussianMixture:
  means = np.asarray(config.data.mixture_means, float)
  variances = np.asarray(config.data.mixture_variances, float)
  if means.ndim != 2:
    raise ValueError(f"config.data.mixture_means must have shape (K, D), got {means.shape}.")
  if variances.shape not in ((), means.shape[:1], means.shape):
    raise ValueError(f"config.data.mixture_variances must have shape {means.shape} (like "
                     f"config.data.mixture_means), ({means.shape[0]},) or (), got {variances.shape}.")
  if variances.shape == means.shape[:1]:
    variances = variances[:, None]  # one variance per component, shared by all axes
  return GaussianMixture.create(config.data.mixture_weights, means, variances)


IMAGE_DATASETS = ("digits", "shapes", "mnist", "fashion_mnist", "cifar10", "celeb_a")


def is_image_data(config: ml_collections.ConfigDict) -> bool:
  return config.data.name in IMAGE_DATASETS


DATASETS = ("eight_gaussians", "checkerboard", "two_moons", "swiss_roll", "gaussian_mixture",
            "labelled_mixture")


def build_dataset(config: ml_collections.ConfigDict):
  """config.data -> a dataset whose batch at step s is a pure function of (key, s).

  "labelled_mixture": the gaussian_mixture's examples with their component as "label".
  """
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
    return data.gaussian_mixture(_mixture(config))
  elif name == "labelled_mixture":
    return data.labelled_mixture(_mixture(config))
  raise _unknown("config.data.name", name, DATASETS)


def _example_fields(dataset) -> set[str]:
  """The entries of one example of a toy dataset, read from the shapes of a traced batch."""
  return set(jax.eval_shape(lambda k: dataset.batch(k, 0, 2), jr.key(0)))


def build_batch_source(config: ml_collections.ConfigDict, mesh,
                       key: jax.Array) -> input_pipeline.BatchSource:
  """config.data.source -> where training batches come from.

  "generated": computed from (key, step, rows) (toy data); "array": config.data.num_examples
  drawn once from the dataset with ``key``, then read through grain (shuffled afresh each epoch,
  checkpointed iterator); "tfds": a prepared TFDS dataset through grain (never downloads).
  """
  c, batch_size = config.data, config.training.batch_size
  if is_image_data(config):
    from experiments import build_images

    return input_pipeline.GrainSource(build_images.build_image_records(config),
                                      batch_size=batch_size, seed=config.seed, mesh=mesh,
                                      random_flip=c.random_flip)
  source = c.get("source", "generated")
  if source == "generated":
    return input_pipeline.GeneratedSource(build_dataset(config), key, batch_size, mesh)
  if source == "array":
    _checks.check_count("config.data.num_examples", c.num_examples)
    arrays = jax.device_get(build_dataset(config).batch(key, 0, c.num_examples))
    records = input_pipeline.ArraySource(arrays)
  elif source == "tfds":
    records = input_pipeline.tfds_source(c.tfds_name, split=c.tfds_split,
                                         data_dir=c.tfds_data_dir or None)
  else:
    raise _unknown("config.data.source", source, ("generated", "array", "tfds"))
  return input_pipeline.GrainSource(records, batch_size=batch_size, seed=config.seed, mesh=mesh)


def build_weighting(config: ml_collections.ConfigDict) -> Weighting:
  return _enum_member(Weighting, "config.training.weighting", config.training.weighting)


def build_ema_decay(config: ml_collections.ConfigDict) -> train.EmaDecay:
  """config.training.ema_decay, or with ema_power = gamma > 0 EDM2's power-function EMA
  (``train.power_ema_decay``) with ema_decay as the cap of its decay."""
  tc = config.training
  gamma = tc.get("ema_power", 0.0)
  return train.power_ema_decay(gamma, tc.ema_decay) if gamma else tc.ema_decay


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
                                   weight_decay=c.weight_decay, b1=c.get("adam_b1", 0.9), **kwargs)
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
    # Per example, never averaged over a batch axis (score_sde's batch-norm rule): examples of a
    # batch must not be coupled, so samples do not depend on chunking or padding. The step uses
    # the expected norms (eps = 2 snr^2 sigma^2), which in 2-D matched the batch-averaged rule
    # where the per-example measured norms did not (samplers.Langevin).
    corrector = samplers.Langevin(snr=c.snr, num_steps=c.corrector_steps, expected_norms=True)
    sampler = samplers.PredictorCorrector(sampler, corrector)
  elif c.corrector != "none":
    raise _unknown("config.sampling.corrector", c.corrector, ("none", "langevin"))
  start = c.get("ancestral_start_steps", 0)
  _checks.check_count("config.sampling.ancestral_start_steps", start, minimum=0)
  if start:
    # Ancestral steps first, then the sampler: forgets most of the prior mismatch (samplers.Chain).
    sampler = samplers.Chain(samplers.DDIM(eta=1.0), sampler, steps=start)
  if guidance_config(config).kind == "cfgpp":
    if not isinstance(sampler, samplers.cfgpp.INNER_SAMPLERS):
      raise ValueError("config.sampling.guidance.kind='cfgpp' (CFG++, defined for DDIM-type steps) "
                       "needs config.sampling.sampler ddim, dpm_solver_2m or dpm_solver_3m with no "
                       f"corrector and no ancestral_start_steps, got {sampler!r:.80}.")
    sampler = samplers.CFGPlusPlus(sampler)
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


GUIDANCE_KINDS = ("none", "cfg", "cfgpp", "autoguidance", "classifier")


def guidance_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.sampling.guidance, or the unguided default for a config made before it existed."""
  g = config.sampling.get("guidance")
  if g is None:
    from experiments.configs import toy2d

    g = toy2d.guidance_section()
  return g


def has_noise_interval(g: ml_collections.ConfigDict) -> bool:
  """Whether config.sampling.guidance restricts guidance to a noise interval."""
  return g.sigma_lo > 0 or g.sigma_hi != float("inf")


def build_guidance(config: ml_collections.ConfigDict, sde, null_cond):
  """config.sampling.guidance -> ``guide(score, guide=None) -> score``: the configured guider around
  a model's score (``diffusion_jax.guidance``); the identity for kind "none". ``guide`` is the
  guide model's score (autoguidance) or the noisy classifier (classifier guidance)."""
  g = guidance_config(config)
  _checks.check_choice("config.sampling.guidance.kind", g.kind, GUIDANCE_KINDS)
  if g.kind == "none":
    return lambda score, guide_score=None: score
  interval = None
  if has_noise_interval(g):
    interval = guidance.NoiseInterval(sde, float(g.sigma_lo), float(g.sigma_hi))
  if g.kind in ("cfg", "cfgpp"):
    # cfgpp: the same guider, its gamma CFG++'s lambda; build_sampler wraps the sampler in
    # samplers.CFGPlusPlus, which reads both scores off it.
    if null_cond is None:
      raise ValueError(f"config.sampling.guidance.kind={g.kind!r} needs a class-conditional model "
                       "trained with label dropout (config.model.num_classes > 0 and "
                       "config.model.label_dropout > 0): its null label is the unconditional model.")
    return lambda score, guide_score=None: guidance.ClassifierFreeGuidance(
        score, null_cond, float(g.gamma), interval=interval)

  def guided(score, guide=None):
    if guide is None:
      raise ValueError(f"config.sampling.guidance.kind={g.kind!r} needs its guide (--mode=sample: "
                       "the checkpoint config.sampling.guidance.guide_step, or the run's noisy "
                       "classifier from --mode=train_classifier).")
    if g.kind == "autoguidance":
      return guidance.Autoguidance(score, guide, float(g.gamma), interval=interval)
    return guidance.ClassifierGuidance(score, guide, float(g.scale), interval=interval)

  return guided


def guided_sample_fn(config, sde, sampler, ts, shape, denoise_final, score_fn, null_cond,
                     classifier_fn=None):
  """The methods' ``sample(params, keys, cond)`` with the configured guidance: params is the
  model's parameters, or {"main": ..., "guide": ...} (autoguidance: the guide's parameters) or
  {"main": ..., "classifier": ...} (classifier guidance: ``classifier_fn(its parameters)`` is the
  noisy classifier)."""
  guide = build_guidance(config, sde, null_cond)
  kind = guidance_config(config).kind

  def sample(params, keys, cond):
    if kind == "autoguidance":
      score = guide(score_fn(params["main"]), score_fn(params["guide"]))
    elif kind == "classifier":
      # The base is the model's unconditional score: a conditional model's null label.
      score = guide(score_fn(params["main"], null_cond), classifier_fn(params["classifier"]))
    else:
      score = guide(score_fn(params))
    out = sampling.sample_examples(sde, score, sampler, jnp.asarray(ts), keys, shape=shape,
                                   cond=cond, denoise_final=denoise_final,
                                   progress_fn=progress.report_step)
    return {"x": out.x, "denoised": out.denoised, "nfe": out.nfe}

  return sample


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


def _check_conditioning(config: ml_collections.ConfigDict, dataset) -> int:
  """config.model.num_classes K: 0 unconditional; K > 0 needs labels 0..K-1 in the data."""
  num_classes = config.model.num_classes
  _checks.check_count("config.model.num_classes", num_classes, minimum=0)
  if not num_classes:
    return 0
  if config.data.get("source", "generated") == "tfds":
    return num_classes  # labels come from the TFDS "label" feature
  if "label" not in _example_fields(dataset):
    raise ValueError(f"config.model.num_classes={num_classes} trains a class-conditional model, "
                     f"but config.data.name={config.data.name!r} has no 'label' in its examples; "
                     "use labelled data (e.g. config.data.name='labelled_mixture') or "
                     "config.model.num_classes=0.")
  mixture = getattr(dataset, "mixture", None)
  if mixture is not None and mixture.weights.shape[0] != num_classes:
    raise ValueError(f"config.model.num_classes={num_classes} must equal the number of classes of "
                     f"the data, {mixture.weights.shape[0]} mixture components.")
  return num_classes


def build_method(config: ml_collections.ConfigDict) -> Method:
  """config -> the method record the runner trains, samples and evaluates: a tuning of a trained
  model (config.tune, experiments/tune.py), images (config.data.name one of IMAGE_DATASETS; a
  diffusion model, or with config.model.name one of the baseline families
  ``experiments/build_baselines.py``) or 2-D toy data."""
  if config.get("tune") is not None:
    from experiments import tune

    return tune.build_tune_method(config)
  if is_image_data(config):
    from experiments import build_baselines, build_images

    if build_baselines.is_baseline(config):
      return build_baselines.build_baseline_method(config)
    return build_images.build_image_method(config)
  return _build_toy_method(config)


def _build_toy_method(config: ml_collections.ConfigDict) -> Method:
  """The denoising-score method on toy data: DSM loss (with label dropout when conditional), the
  configured sampler on the configured grid, the toy two-sample evaluation."""
  sde, module, prediction = build_sde(config), build_model(config), build_prediction(config)
  dataset = build_dataset(config)
  shape = tuple(dataset.shape)
  num_classes = _check_conditioning(config, dataset)
  cond_key = "label" if num_classes else None
  null_cond = conditions.null_label(num_classes) if num_classes else None
  model_fn = nets.as_model_fn(module)
  loss_fn = losses.make_dsm_loss_fn(model_fn, sde, prediction=prediction,
                                    weighting=build_weighting(config), t_min=config.training.t_min,
                                    cond_key=cond_key)
  if num_classes:
    p = config.model.label_dropout
    if not 0.0 <= p < 1.0:
      raise ValueError(f"config.model.label_dropout must lie in [0, 1), got {p!r}.")
    if p > 0:  # the null label is trained too: the unconditional model of classifier-free guidance
      loss_fn = conditions.with_condition_dropout(loss_fn, p, null_cond, cond_key)
  optimizer, _ = build_optimizer(config)
  train_step = train.make_train_step(loss_fn, optimizer, build_ema_decay(config))
  sampler, ts = build_sampler(config), np.asarray(build_time_grid(config, sde))
  denoise_final = build_denoise_final(config)

  def init(key):
    params = module.init({"params": key}, jnp.zeros((1, *shape)), jnp.ones((1,)))
    return train.TrainState.create(params, optimizer)

  def score_fn(params, cond=None):
    return parameterization.NetworkScore(model_fn, params, sde, prediction, cond)

  sample = guided_sample_fn(config, sde, sampler, ts, shape, denoise_final, score_fn,
                            null_cond if num_classes and config.model.label_dropout > 0 else None)

  def evaluate(draw, key, params=None):
    del params  # the toy evaluation needs samples only
    e = config.eval
    return evaluate_toy.evaluate(draw, dataset, key, num_samples=config.sampling.num_samples,
                                 floor_repeats=e.floor_repeats, mmd_bandwidth=e.mmd_bandwidth,
                                 num_projections=e.num_projections, num_classes=num_classes)

  def write_figure(path, plot, title):
    evaluate_toy.plot_samples(path, plot["samples"], plot["reference"], title,
                              labels=plot.get("labels"))

  return Method(init=init, train_step=train_step, sample=sample, evaluate=evaluate,
                example_shape=shape, loss_fn=loss_fn, cond_key=cond_key, null_cond=null_cond,
                score_fn=score_fn, write_figure=write_figure)
