"""Default 2-D experiment: a VP SDE score model on the checkerboard; a few minutes on 2 CPU cores.

  python -m experiments.main --config=experiments/configs/toy2d.py --workdir=/tmp/toy2d \
      --config.data.name=eight_gaussians --config.training.num_steps=5000
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # One of: eight_gaussians, checkerboard, two_moons, swiss_roll, gaussian_mixture,
  # labelled_mixture (gaussian_mixture with each example's component as its "label").
  config.data.name = "checkerboard"
  # Where batches come from. One of: generated (a pure function of (key, step, rows)), array
  # (data.num_examples drawn once, then read through grain, reshuffled each epoch, the iterator
  # checkpointed), tfds (a prepared TFDS dataset through grain; never downloads).
  config.data.source = "generated"
  config.data.num_examples = 10_000  # source=array only
  config.data.tfds_name = ""  # source=tfds only
  config.data.tfds_split = "train"
  config.data.tfds_data_dir = ""
  # Used only by data.name=gaussian_mixture/labelled_mixture: per-component diagonal variances.
  config.data.mixture_weights = (0.5, 0.3, 0.2)
  config.data.mixture_means = ((-1.5, -0.5), (1.0, 1.0), (1.5, -1.5))
  config.data.mixture_variances = ((0.1, 0.3), (0.2, 0.05), (0.02, 0.02))

  config.sde = ml_collections.ConfigDict()
  config.sde.name = "vp"  # One of: vp, subvp, ve, cosine_vp.
  config.sde.beta_min = 0.1
  config.sde.beta_max = 20.0
  config.sde.sigma_min = 0.01  # VE only
  config.sde.sigma_max = 8.0  # VE only: about the largest distance between toy data points
  config.sde.cosine_s = 0.008  # cosine_vp only

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"
  config.model.hidden_sizes = (128, 128, 128, 128)
  config.model.embed_dim = 64
  config.model.time_embedding = "fourier"  # One of: fourier, sinusoidal.
  config.model.fourier_scale = 16.0
  config.model.num_classes = 0  # 0: unconditional; K > 0 needs labelled data (labels 0..K-1).
  config.model.label_dropout = 0.1  # num_classes > 0: probability of training on the null label K
  config.model.prediction = "eps"  # One of: eps, score, x0, v.

  config.training = ml_collections.ConfigDict()
  config.training.num_steps = 10_000
  config.training.batch_size = 512
  config.training.learning_rate = 5e-3
  config.training.lr_schedule = "cosine"  # One of: constant, cosine (decays to 0 at num_steps).
  config.training.warmup_steps = 500
  config.training.grad_clip_norm = 1.0
  config.training.weight_decay = 0.0
  config.training.ema_decay = 0.999
  # > 0: EDM2's power-function EMA with this exponent gamma (ema_decay caps its decay); 0: the
  # constant decay ema_decay.
  config.training.ema_power = 0.0
  config.training.weighting = "simple"  # One of: simple, likelihood.
  config.training.t_min = 1e-5
  config.training.log_every = 250
  config.training.checkpoint_every = 2_500
  config.training.keep_checkpoints = 3
  # Wall-time budget of training in seconds (0: none): the run stops at the first step that ends
  # past it, checkpoints there and evaluates; started again, it is loaded, not trained further
  # (experiments/train.py's TrainClock; the lecture table's equal budgets).
  config.training.time_budget_s = 0.0

  config.sampling = ml_collections.ConfigDict()
  # One of: euler_maruyama, reverse_diffusion, ancestral, annealed_langevin, euler, heun,
  # edm_stochastic, ddim, dpm_solver_2m, dpm_solver_3m, unipc, ipndm, adaptive.
  config.sampling.sampler = "euler_maruyama"
  config.sampling.num_samples = 4_000
  config.sampling.num_steps = 500
  config.sampling.t_min = 1e-3
  # Used by --mode=sample (experiments/sampling.py):
  config.sampling.grid = "time_uniform"  # One of: time_uniform, time_quadratic, log_snr, edm.
  config.sampling.rho = 7.0  # edm grid only
  config.sampling.denoise_final = "default"  # One of: default (as the sampler's paper), true, false.
  config.sampling.corrector = "none"  # One of: none, langevin (predictor-corrector).
  config.sampling.snr = 0.16  # Langevin corrector
  config.sampling.corrector_steps = 1
  # > 0: that many ancestral (DDPM-posterior) steps from T before the sampler takes over, which
  # removes most of the prior mismatch an ODE solver would keep (samplers.Chain).
  config.sampling.ancestral_start_steps = 0
  config.sampling.langevin_step_lr = 2e-5  # annealed_langevin: eps_i = step_lr sigma_i^2 / sigma_L^2
  config.sampling.langevin_steps = 100  # annealed_langevin: steps per noise level
  config.sampling.eta = 0.0  # ddim
  config.sampling.order = 2  # unipc
  config.sampling.s_churn = 40.0  # edm_stochastic
  config.sampling.s_tmin = 0.05
  config.sampling.s_tmax = 50.0
  config.sampling.s_noise = 1.003
  config.sampling.rtol = 1e-5  # adaptive
  config.sampling.atol = 1e-5
  config.sampling.batch_size = 2_048  # examples per compiled call (the progress bar's unit)
  config.sampling.guidance = guidance_section()

  config.eval = ml_collections.ConfigDict()
  # RBF bandwidth of the MMD: the scale of the toy distributions' details (square edges, 0.1-std modes).
  config.eval.mmd_bandwidth = 0.1
  config.eval.num_projections = 256
  # The floor is averaged over this many independent data-vs-data pairs (its spread is reported too).
  config.eval.floor_repeats = 5

  config.likelihood = ml_collections.ConfigDict()
  config.likelihood.num_samples = 1_000  # test examples (fresh draws from the data distribution)
  config.likelihood.t_min = 1e-5
  # Used by --mode=eval_likelihood (experiments/likelihood_eval.py):
  config.likelihood.estimator = "ode"  # One of: ode, ddpm_elbo (VP SDEs, discrete data only).
  config.likelihood.rtol = 1e-5  # ODE tolerances (benchmarks/likelihood.py: ~1e-5 nats/dim at 3e-6)
  config.likelihood.atol = 1e-5
  config.likelihood.variable = "auto"  # One of: auto (sigma for ve, else t), t, sigma.
  config.likelihood.divergence = "exact"  # One of: exact, hutchinson.
  config.likelihood.probe = "rademacher"  # hutchinson only. One of: rademacher, gaussian.
  config.likelihood.num_probes = 1  # hutchinson only
  config.likelihood.batch_size = 500  # examples per compiled call (the progress bar's unit)
  # Discrete data (images): 0 means continuous data (nats/dim). L > 0: the data are L levels mapped
  # linearly onto data_range; they are dequantized and reported in bits/dim.
  config.likelihood.num_levels = 0
  config.likelihood.data_range = (-1.0, 1.0)
  config.likelihood.num_dequant_draws = 1
  config.likelihood.elbo_steps = 1000  # ddpm_elbo only
  return config


def guidance_section() -> ml_collections.ConfigDict:
  """config.sampling.guidance (also filled into workdirs saved before it existed)."""
  # Guidance (diffusion_jax/guidance.py), applied to every sampler: kind "cfg" (classifier-free:
  # needs num_classes > 0 and label_dropout > 0), "autoguidance" (--mode=sample: the EMA model of
  # checkpoint guide_step of the same run is the guide), "classifier" (images, --mode=sample: the
  # run's noisy classifier from --mode=train_classifier, at strength scale) or "cfgpp" (CFG++,
  # Chung et al. 2024, as cfg but for the ddim / dpm_solver_2m / dpm_solver_3m samplers, with gamma
  # read as CFG++'s lambda, usually in [0, 1]); gamma = 1 + w (diffusers' guidance_scale); guidance
  # only where sigma_lo < sigma(t)/alpha(t) <= sigma_hi (not for cfgpp).
  g = ml_collections.ConfigDict()
  g.kind = "none"  # One of: none, cfg, cfgpp, autoguidance, classifier.
  g.gamma = 1.0
  g.scale = 1.0
  g.sigma_lo = 0.0
  g.sigma_hi = float("inf")
  g.guide_step = 0
  return g
