"""The variational autoencoder (Kingma & Welling 2014): a Gaussian encoder q(z|x), a standard
normal prior, a decoder with a discretised logistic likelihood over the data's grey levels
(``discretized``), so its bounds are bounds on the discrete log-likelihood, in the same units as
the autoregressive model's exact value.

  ELBO      = E_q[log p(x|z)] - KL(q(z|x) || N(0, I))              (the training loss, negated)
  IWAE_k    = E[log (1/k) sum_i p(x, z_i) / q(z_i|x)],  z_i ~ q     (Burda et al. 2016)

ELBO = IWAE_1 <= IWAE_k <= IWAE_{k+1} <= log p(x). ``beta`` weights the KL term (beta-VAE,
Higgins et al. 2017; beta = 1 is the ELBO).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import _checks
from diffusion_jax.baselines import discretized


class ConvEncoder(nn.Module):
  """(N, H, W, C) -> (mean, log_var) of q(z|x), each (N, latent_dim)."""

  latent_dim: int = 16
  features: Sequence[int] = (32, 64)

  @nn.compact
  def __call__(self, x):
    for f in self.features:
      x = nn.silu(nn.Conv(f, (3, 3), strides=(2, 2))(x))
    h = nn.silu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
    mean, log_var = jnp.split(nn.Dense(2 * self.latent_dim)(h), 2, axis=-1)
    return mean, log_var


class ConvDecoder(nn.Module):
  """(N, latent_dim) -> (N, H, W, C, 3K) discretised logistic mixture parameters per pixel."""

  image_shape: tuple[int, int, int] = (8, 8, 1)
  features: Sequence[int] = (64, 32)
  num_mixtures: int = 1

  @nn.compact
  def __call__(self, z):
    h, w, c = self.image_shape
    down = 2 ** len(self.features)
    _checks.check_divisible_image("image_shape", self.image_shape, down, "2^len(features)")
    x = nn.silu(nn.Dense(256)(z))
    x = nn.silu(nn.Dense((h // down) * (w // down) * self.features[0])(x))
    x = x.reshape(z.shape[0], h // down, w // down, self.features[0])
    for f in self.features:
      x = nn.silu(nn.ConvTranspose(f, (3, 3), strides=(2, 2))(x))
    out = nn.Conv(c * 3 * self.num_mixtures, (3, 3))(x)
    return out.reshape(z.shape[0], h, w, c, 3 * self.num_mixtures)


class VAE(nn.Module):
  """An encoder and a decoder as above (or any pair with their call signatures; the encoder names
  its ``latent_dim``, the decoder its ``num_mixtures``)."""

  encoder: nn.Module
  decoder: nn.Module

  def __call__(self, x, z):  # init: both halves
    return self.encoder(x), self.decoder(z)

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z):
    return self.decoder(z)


def _gaussian_logpdf(z, mean, log_var):
  return -0.5 * jnp.sum(math.log(2 * math.pi) + log_var + (z - mean) ** 2 * jnp.exp(-log_var), -1)


def _decoder_logprob(module, params, x, z, num_levels):
  out = module.apply(params, z, method=VAE.decode)
  return discretized.image_logprob(out, x, module.decoder.num_mixtures, num_levels)


def elbo(module: VAE, params, x, key, num_levels: int, *, beta: float = 1.0):
  """Per-image (N,) dict: "elbo" (reconstruction - beta KL, nats), "reconstruction", "kl" (the
  Gaussian KL in closed form); one reparameterised z per image."""
  mean, log_var = module.apply(params, x, method=VAE.encode)
  z = mean + jnp.exp(0.5 * log_var) * jr.normal(key, mean.shape)
  rec = _decoder_logprob(module, params, x, z, num_levels)
  kl = 0.5 * jnp.sum(jnp.exp(log_var) + mean ** 2 - 1.0 - log_var, -1)
  return {"elbo": rec - beta * kl, "reconstruction": rec, "kl": kl}


def iwae_bound(module: VAE, params, x, key, num_levels: int, num_samples: int):
  """The importance-weighted bound IWAE_k (k = ``num_samples``) per image (N,), nats."""
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}.")
  mean, log_var = module.apply(params, x, method=VAE.encode)

  def log_weight(k):
    z = mean + jnp.exp(0.5 * log_var) * jr.normal(k, mean.shape)
    log_prior = _gaussian_logpdf(z, 0.0, jnp.zeros_like(z))
    return (_decoder_logprob(module, params, x, z, num_levels) + log_prior
            - _gaussian_logpdf(z, mean, log_var))

  w = jax.lax.map(log_weight, jr.split(key, num_samples))  # (k, N), one k at a time in memory
  return jax.nn.logsumexp(w, axis=0) - math.log(num_samples)


def sample(module: VAE, params, key, num: int, num_levels: int, *, mean_only: bool = False):
  """Images (num, H, W, C): z ~ N(0, I), then x ~ p(x|z) (``mean_only``: the most likely
  component's mean, rounded to its cell, as VAE sample figures usually show)."""
  z_key, x_key = jr.split(key)
  z = jr.normal(z_key, (num, module.encoder.latent_dim))
  out = module.apply(params, z, method=VAE.decode)
  logits, means, log_scales = discretized.split_params(out, module.decoder.num_mixtures)
  if mean_only:
    best = jnp.argmax(logits, -1)[..., None]
    return discretized.to_cell_centre(jnp.take_along_axis(means, best, -1)[..., 0], num_levels)
  return discretized.mixture_sample(x_key, logits, means, log_scales, num_levels)
