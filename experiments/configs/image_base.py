"""Every field an image experiment reads, with small-image defaults (the digits U-Net's network);
the image configs override some of them (digits.py its training recipe). Not a config to run by
itself (use digits.py, digits_ncsn.py, shapes16.py, mnist.py, cifar10_*.py).
"""

import ml_collections

from experiments.configs import toy2d


def get_config() -> ml_collections.ConfigDict:
  config = toy2d.get_config()  # the shared sections (sampling, likelihood) and their fields
  config.seed = 0

  data = config.data = ml_collections.ConfigDict()
  # One of: digits (scikit-learn's 8x8 digits, embedded: works offline), shapes (procedural,
  # generated from the seed), mnist, fashion_mnist, cifar10, celeb_a (prepared TFDS datasets).
  data.name = "digits"
  # array: the whole train split in memory, read through grain (digits, shapes); tfds: a prepared
  # TFDS dataset read through tfds.data_source and grain (never downloads unless
  # data.tfds_download=True).
  data.source = "array"
  data.resolution = 16  # shapes only: 16 or 32
  data.num_train = 20_000  # shapes only
  data.num_test = 2_000  # shapes: generated test images; tfds: test images used for evaluation
  data.tfds_name = ""
  data.tfds_split = "train"
  data.tfds_data_dir = ""
  data.tfds_download = False
  # Labels left out of training (the highest ones, e.g. (9,)): the held-out class of the tuning
  # protocol (digits_holdout.py, experiments/tune.py); the evaluation scores the other classes.
  data.holdout_classes = ()
  data.random_flip = False  # horizontal flips (not for digits: a flipped 7 is not a digit)

  sde = config.sde
  sde.name = "vp"
  sde.beta_min, sde.beta_max = 0.1, 20.0
  sde.sigma_min, sde.sigma_max = 0.01, 20.0  # VE only; sigma_max about the largest pixel distance

  model = config.model = ml_collections.ConfigDict()
  model.name = "unet"  # One of: unet (DDPM++ / NCSN++ family), ncsn (annealed Langevin).
  model.model_channels = 32
  model.channel_mult = (1, 2)  # one entry per resolution: 8x8, 4x4
  model.num_res_blocks = 2
  model.attn_resolutions = (4,)
  model.dropout = 0.0  # a ~10-minute run underfits; dropout only slows it (and its compile)
  model.time_embedding = "positional"  # One of: positional, fourier.
  model.fourier_scale = 16.0
  model.noise_scale = 999.0  # the embedding sees noise_scale * t (DDPM's step index for VP)
  model.skip_rescale = True
  model.resblock = "biggan"  # One of: ddpm, biggan.
  model.channel_mult_emb = 4  # the embedding MLP's width is model_channels * this
  model.channel_mult_noise = 1  # the noise embedding's width is model_channels * this
  model.encoder = "standard"  # One of: standard, skip, residual (NCSN++'s progressive input).
  model.decoder = "standard"  # One of: standard, skip (NCSN++'s progressive output).
  model.resample_filter = (1, 1)  # (1, 1): box; (1, 3, 3, 1): FIR (NCSN++)
  model.num_heads = 1
  model.num_classes = 0  # 0: unconditional; K: class-conditional with a learned null label K
  model.label_dropout = 0.1
  model.prediction = "eps"  # One of: eps, score, x0, v (training.loss=dsm only).

  tc = config.training
  tc.loss = "dsm"  # One of: dsm, edm.
  tc.sigma_data, tc.p_mean, tc.p_std = 0.5, -1.2, 1.2  # edm only
  tc.num_steps = 1_200
  tc.batch_size = 128
  tc.learning_rate = 2e-3
  tc.lr_schedule = "cosine"
  tc.warmup_steps = 100
  tc.grad_clip_norm = 1.0
  tc.weight_decay = 0.0
  tc.ema_decay = 0.998  # a constant decay (ema_power 0); digits.py uses the power EMA
  tc.weighting = "simple"
  tc.t_min = 1e-5
  tc.log_every = 100
  tc.checkpoint_every = 400
  tc.keep_checkpoints = 2
  tc.sample_every = 400  # 0: no sample grids during training
  tc.sample_grid_size = 64

  sc = config.sampling
  sc.sampler = "dpm_solver_2m"
  sc.grid = "log_snr"
  sc.num_steps = 40
  sc.t_min = 1e-3
  sc.num_samples = 1_000  # the floors are taken at this n (FD is biased by D / n)
  sc.batch_size = 500

  e = config.eval = ml_collections.ConfigDict()
  e.floor_repeats = 10  # splits over which the floors' mean and spread are taken
  e.features = "classifier"  # One of: classifier (trained in the repo), inception (needs a file).
  e.inception_weights = ""  # a pytorch-fid .pth or jax-fid .pickle (features=inception)
  e.classifier_dir = ""  # cache of the evaluation classifiers ("" = ~/.cache/diffusion_jax)
  e.confidence = 0.9
  e.classifier_steps = 400  # training steps of the evaluation classifier (cached after the first)
  e.bits_per_dim = True  # test-set bits/dim (PF-ODE, dequantized) and the DDPM bound (VP)

  config.noisy_classifier = noisy_classifier_section()

  lc = config.likelihood
  lc.num_samples = 297  # test images scored
  lc.divergence = "hutchinson"  # exact costs D=HWC network calls per step
  lc.num_probes = 1
  lc.rtol = lc.atol = 1e-4
  lc.batch_size = 300
  lc.num_levels = 17
  lc.data_range = (-1.0, 1.0)
  lc.elbo_steps = 250
  return config


def noisy_classifier_section() -> ml_collections.ConfigDict:
  """config.noisy_classifier (also filled into image workdirs saved before it existed)."""
  # The noise-conditional classifier p(y | x_t, t) of classifier guidance (--mode=train_classifier,
  # experiments/noisy_classifier.py): trained on the run's training split noised by its SDE.
  nc = ml_collections.ConfigDict()
  nc.channels = (32, 64)
  nc.blocks_per_stage = 1
  nc.feature_dim = 128
  nc.dropout_rate = 0.1
  nc.num_steps = 1_000
  nc.batch_size = 64
  nc.learning_rate = 2e-3
  nc.warmup_steps = 50
  nc.max_shift = 1
  nc.t_min = 1e-3
  return nc
