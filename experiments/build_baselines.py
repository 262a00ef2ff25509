"""The lecture's other generative families as ``Method`` records (``diffusion_jax.baselines``), so
the runner trains, checkpoints, resumes, samples and evaluates them exactly as it does the
diffusion models, on the same image data and with the same image evaluation.

  config.model.name  vae (Gaussian encoder, discretised logistic decoder; ELBO, IWAE_k) |
                     pixelcnn (PixelCNN++-style, exact discrete likelihood) |
                     flow (Glow / RealNVP, exact density of uniformly dequantised images) |
                     gan (DCGAN, two players, R1 on the discriminator)

  python -m experiments.main --config=experiments/configs/baselines.py:vae --workdir=DIR

One likelihood convention for every family and for the diffusion models: the data's L levels at
their cell centres in [-1, 1] (``data.images.levels_to_model``). Discrete models (the PixelCNN,
the VAE's bounds) give -log2 P(levels) / D; continuous densities (the flow, the diffusion
model's PF-ODE) are evaluated on uniformly dequantised images and get the offset log2(L / 2) of
``likelihood.to_bits_per_dim``, which makes them upper bounds on the same discrete quantity.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import ml_collections
import numpy as np

from diffusion_jax import likelihood, train
from diffusion_jax.baselines import flow, gan, pixelcnn, vae
from experiments.method import Method

FAMILIES = ("vae", "pixelcnn", "flow", "gan")

# What each family's bits/dim are, for the summary and the lecture table.
LIKELIHOOD_KIND = {
    "vae": "upper bound (IWAE)",
    "pixelcnn": "exact",
    "flow": "upper bound (uniform dequantisation)",
    "gan": "none",
}


def is_baseline(config: ml_collections.ConfigDict) -> bool:
  return config.model.get("name") in FAMILIES


def build_module(config: ml_collections.ConfigDict, shape) -> dict:
  """config.model -> the family's networks, {name: linen module} (cheap: nothing initialised)."""
  m = config.model
  shape = tuple(shape)
  if m.num_classes:
    raise ValueError(f"config.model.num_classes must be 0 for config.model.name={m.name!r}: the "
                     f"baselines are unconditional, got {m.num_classes!r}.")
  if m.name == "vae":
    return {"vae": vae.VAE(vae.ConvEncoder(latent_dim=m.latent_dim,
                                           features=tuple(m.encoder_features)),
                           vae.ConvDecoder(shape, features=tuple(m.decoder_features),
                                           num_mixtures=m.num_mixtures))}
  if m.name == "pixelcnn":
    return {"pixelcnn": pixelcnn.PixelCNN(features=m.features, num_blocks=m.num_blocks,
                                          num_mixtures=m.num_mixtures, dropout=m.dropout)}
  if m.name == "flow":
    module = flow.Glow(num_scales=m.num_scales, num_steps=m.flow_steps, hidden=m.hidden)
    flow.check_image_shape(module, shape)
    return {"flow": module}
  if m.name == "gan":
    gan.check_generator_loss(m.generator_loss)
    return {"generator": gan.Generator(shape, latent_dim=m.latent_dim,
                                       features=tuple(m.generator_features)),
            "discriminator": gan.Discriminator(features=tuple(m.discriminator_features))}
  raise ValueError(f"Unknown config.model.name={m.name!r}; expected one of "
                   f"{', '.join(map(repr, FAMILIES))}.")


def _per_example(sample_many):
  """``sample(params, keys, cond)`` from ``sample_many(params, key, n) -> (n, ...)``: one draw
  per example key, so example n depends on its own key only (the runner's contract)."""
  def sample(params, keys, cond):
    del cond  # the baselines are unconditional
    return jax.vmap(lambda k: sample_many(params, k, 1)[0])(keys)
  return sample


def build_baseline_method(config: ml_collections.ConfigDict) -> Method:
  """config -> the family's method: its loss as the runner's train step, its sampler, the image
  evaluation (``build_images.evaluate_samples``) and its test bits/dim where it has them."""
  from experiments import build, build_images

  train_set, test_set = build_images.build_image_data(config)
  shape, levels = tuple(train_set.shape), int(train_set.num_levels)
  dims = int(np.prod(shape))
  m, name = config.model, config.model.name
  modules = build_module(config, shape)
  ema = config.training.ema_decay
  x0 = jnp.zeros((1, *shape))
  optimizer = build.build_optimizer(config)[0]
  to_bits = lambda log_p: -log_p / (dims * math.log(2))  # noqa: E731  discrete nats -> bits/dim

  if name == "vae":
    module = modules["vae"]

    def loss_fn(params, frozen, example, key):
      del frozen
      out = vae.elbo(module, params, example["x0"][None], key, levels, beta=m.beta)
      return {"loss": -out["elbo"][0], "reconstruction": -out["reconstruction"][0],
              "kl": out["kl"][0]}

    init_params = lambda key: module.init(key, x0, jnp.zeros((1, m.latent_dim)))  # noqa: E731
    sample_many = lambda p, k, n: vae.sample(module, p, k, n, levels)  # noqa: E731
    nfe = 1

    def bits(params, x, key):
      e_key, i_key = jr.split(key)
      return {"bits_per_dim_elbo": to_bits(vae.elbo(module, params, x, e_key, levels)["elbo"]),
              "bits_per_dim": to_bits(vae.iwae_bound(module, params, x, i_key, levels,
                                                     m.iwae_samples))}
  elif name == "pixelcnn":
    module = modules["pixelcnn"]

    def loss_fn(params, frozen, example, key):
      del frozen
      log_p = pixelcnn.log_likelihood(module, params, example["x0"][None], levels,
                                      train=m.dropout > 0, rngs={"dropout": key})
      return {"loss": -log_p[0]}

    init_params = lambda key: module.init(key, x0)  # noqa: E731
    sample_many = lambda p, k, n: pixelcnn.sample(module, p, k, (n, *shape), levels)  # noqa: E731
    nfe = shape[0] * shape[1]  # one network pass per pixel (the channels share it)

    def bits(params, x, key):
      del key
      return {"bits_per_dim": to_bits(pixelcnn.log_likelihood(module, params, x, levels))}
  elif name == "flow":
    module = modules["flow"]

    def loss_fn(params, frozen, example, key):
      del frozen
      y = flow.dequantize(key, example["x0"], levels)[None]
      return {"loss": -flow.log_density(module, params, y)[0]}

    init_params = lambda key: module.init(key, x0)  # noqa: E731
    sample_many = lambda p, k, n: flow.sample(module, p, k, n, shape,  # noqa: E731
                                              temperature=config.sampling.temperature)
    nfe = 1

    def bits(params, x, key):
      # E_u[-log p(x + u)] over m.eval_dequantizations uniform draws per image: its expectation
      # bounds the discrete -log P(x) (Theis et al. 2016), in the PF-ODE's convention.
      log_p = jnp.mean(jnp.stack([flow.log_density(module, params, flow.dequantize(k, x, levels))
                                  for k in jr.split(key, m.eval_dequantizations)]), 0)
      return {"bits_per_dim": likelihood.to_bits_per_dim(log_p, dims, num_levels=levels,
                                                         data_range=(-1.0, 1.0))}
  else:  # gan
    g, d = modules["generator"], modules["discriminator"]
    # The same (stateless) transformation for each player, each with its own state in TrainState
    # (config.training.adam_b1: DCGAN's 0.5).
    optimizer = {"generator": optimizer, "discriminator": optimizer}
    losses = gan.make_losses(g, d, r1_gamma=m.r1_gamma, generator_loss=m.generator_loss)
    loss_fn = None
    g_key, d_key = "generator", "discriminator"

    def init_params(key):
      k1, k2 = jr.split(key)
      return {g_key: g.init(k1, jnp.zeros((1, m.latent_dim))), d_key: d.init(k2, x0)}

    sample_many = lambda p, k, n: gan.sample(g, p, k, n)  # noqa: E731
    nfe, bits = 1, None

  if name == "gan":
    # Alternating updates, the discriminator first (Goodfellow et al. 2014's Algorithm 1 with
    # k = 1): each player's own Adam state and gradient, the other player held fixed.
    train_step = train.make_multi_train_step(
        {p: (losses[p], optimizer[p]) for p in losses}, ema, order=("discriminator", "generator"))
  else:
    train_step = train.make_train_step(loss_fn, optimizer, ema)

  def init(key):
    return train.TrainState.create(init_params(key), optimizer)

  per_example = _per_example(sample_many)

  def sample(params, keys, cond):
    x = per_example(params, keys, cond)
    return {"x": x, "nfe": jnp.full(x.shape[:1], nfe, jnp.int32)}

  def evaluate(draw, key, params=None):
    summary, plot = build_images.evaluate_samples(config, draw, train_set, test_set, 0)
    summary["likelihood_kind"] = LIKELIHOOD_KIND[name]
    if params is not None and bits is not None and config.eval.bits_per_dim:
      summary.update(test_bits_per_dim(bits, params, test_set, key, config))
    return summary, plot

  to_data_range, write_grid, write_figure = build_images.image_outputs(train_set)
  sampler_info = {"name": f"{name} sampler", "repr": SAMPLERS[name], "num_steps": nfe}
  return Method(init=init, train_step=train_step, sample=sample, evaluate=evaluate,
                example_shape=shape, loss_fn=loss_fn, write_figure=write_figure,
                write_grid=write_grid, to_data_range=to_data_range, log_likelihood=bits,
                headline=build_images.image_headline, sampler_info=sampler_info)


SAMPLERS = {
    "vae": "z ~ N(0, I), x ~ p(x | z) (the decoder's discretised logistic)",
    "pixelcnn": "ancestral, one pixel at a time in raster order (H x W network passes)",
    "flow": "z ~ N(0, T^2 I) through the inverse flow (T = config.sampling.temperature)",
    "gan": "z ~ N(0, I) through the generator",
}


def test_bits_per_dim(bits, params, test_set, key, config) -> dict:
  """The family's bits/dim on the first config.likelihood.num_samples test images (the diffusion
  models' test images), in chunks of config.likelihood.batch_size, with standard errors."""
  n = min(len(test_set), config.likelihood.num_samples)
  x = np.asarray(test_set.to_model())[:n]
  step = config.likelihood.batch_size
  fn = jax.jit(bits)
  chunks = [fn(params, jnp.asarray(x[i:i + step]), jr.fold_in(key, i)) for i in range(0, n, step)]
  out = {}
  for k in chunks[0]:
    values = np.concatenate([np.asarray(c[k]) for c in chunks])
    out[k] = float(values.mean())
    out[f"{k}_se"] = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
  out["bits_per_dim_settings"] = {
      "num_test_examples": n, "num_levels": int(test_set.num_levels), "data_range": [-1.0, 1.0],
      "offset_bits": likelihood.bits_per_dim_offset(test_set.num_levels, (-1.0, 1.0))}
  if config.model.name == "vae":
    out["bits_per_dim_settings"]["iwae_samples"] = config.model.iwae_samples
  if config.model.name == "flow":
    out["bits_per_dim_settings"]["dequantizations"] = config.model.eval_dequantizations
  return out
