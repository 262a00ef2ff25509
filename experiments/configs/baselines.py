"""The lecture's other families on the image data, trained by the same runner as the diffusion
models (``experiments/build_baselines.py``): a VAE, a PixelCNN, a Glow-style flow and a DCGAN.

  python -m experiments.main --config=experiments/configs/baselines.py:vae --workdir=DIR
  python -m experiments.main --config=experiments/configs/baselines.py:gan,mnist --workdir=DIR \
      --config.data.tfds_data_dir=~/tensorflow_datasets

The argument is the family (vae, pixelcnn, flow, gan), optionally followed by ",mnist" for MNIST
(prepared TFDS data, its data and likelihood sections from ``mnist.py``); the default data are the
embedded digits. Every family trains with Adam at a constant learning rate, batch 64, no gradient
clipping and a 0.999 EMA; the GAN with DCGAN's 2e-4 and b1 = 0.5. The numbers of steps are about
ten minutes of training each on this project's 2-core CPU (measured: 48, 5.8, 33 and 5.2 steps/s
for the VAE, PixelCNN, flow and GAN); ``experiments/figures/lecture_table.py`` gives every family
one wall-time budget instead (config.training.time_budget_s). Parameters on the digits: 0.22M,
0.51M, 0.15M and 0.54M (the GAN's generator 0.41M).
"""

import ml_collections

from experiments.configs import image_base

FAMILIES = ("vae", "pixelcnn", "flow", "gan")
DATA = ("digits", "mnist")

# Steps (about 10 minutes each on the 2-core CPU) and the log interval (the budget is read there).
_STEPS = {"vae": 28_000, "pixelcnn": 3_400, "flow": 19_000, "gan": 3_000}
_LOG_EVERY = {"vae": 200, "pixelcnn": 50, "flow": 200, "gan": 50}


def model_section(family: str) -> ml_collections.ConfigDict:
  """config.model of one family (every field its module reads; num_classes 0: unconditional)."""
  m = ml_collections.ConfigDict()
  m.name = family
  m.num_classes = 0
  if family == "vae":
    m.latent_dim = 16
    m.encoder_features = (32, 64)
    m.decoder_features = (64, 32)
    m.num_mixtures = 1  # discretised logistic components per pixel
    m.beta = 1.0  # the ELBO's KL weight (beta-VAE for beta > 1)
    m.iwae_samples = 1_000  # k of the test IWAE bound
  elif family == "pixelcnn":
    m.features = 64
    m.num_blocks = 4
    m.num_mixtures = 5
    m.dropout = 0.0  # ten minutes underfit the digits: dropout only slows the fit
  elif family == "flow":
    m.num_scales = 2
    m.flow_steps = 8  # flow steps (actnorm, 1x1 convolution, affine coupling) per scale
    m.hidden = 64
    m.eval_dequantizations = 8  # uniform dequantisations averaged per test image
  elif family == "gan":
    m.latent_dim = 32
    m.generator_features = (128, 64)
    m.discriminator_features = (64, 128)
    # R1 (Mescheder et al. 2018): a gradient penalty on real data only, which their analysis shows
    # makes the game locally convergent where the unregularised one oscillates; cheap for a
    # small discriminator, and it needs no architectural change (spectral norm would).
    m.r1_gamma = 1.0
    m.generator_loss = "non_saturating"  # or minimax (the lecture's objective)
  else:
    raise ValueError(f"Unknown family {family!r}; expected one of {', '.join(FAMILIES)}.")
  return m


def get_config(arg: str = "vae"):
  family, _, data_name = arg.partition(",")
  data_name = data_name or "digits"
  if data_name not in DATA:
    raise ValueError(f"Unknown data {data_name!r} in {arg!r}; expected one of {', '.join(DATA)}.")
  config = image_base.get_config()
  config.model = model_section(family)
  tc = config.training
  tc.num_steps = _STEPS[family]
  tc.batch_size = 64
  tc.learning_rate = 2e-4 if family == "gan" else 1e-3
  tc.adam_b1 = 0.5 if family == "gan" else 0.9
  tc.lr_schedule, tc.warmup_steps = "constant", 0
  tc.grad_clip_norm = 0.0
  tc.ema_decay, tc.ema_power = 0.999, 0.0
  tc.log_every = _LOG_EVERY[family]
  tc.checkpoint_every = tc.sample_every = tc.num_steps // 4
  config.likelihood.num_samples = 100  # the test images digits.py scores (its first 100)
  config.sampling.temperature = 1.0  # the flow's base temperature (1: the model's density)
  if data_name == "mnist":
    from experiments.configs import mnist

    reference = mnist.get_config()
    config.data = reference.data
    config.likelihood.num_levels = reference.likelihood.num_levels
    config.likelihood.num_samples = reference.likelihood.num_samples
    config.sampling.num_samples = reference.sampling.num_samples
  return config
