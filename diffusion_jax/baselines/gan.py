"""A DCGAN-style generative adversarial network (Goodfellow et al. 2014; Radford et al. 2016):
two players, two losses, trained in turn by ``train.make_multi_train_step``.

  discriminator: min  -log sigma(D(x)) - log(1 - sigma(D(G(z)))) + (gamma/2) |grad_x D(x)|^2
  generator:     min  log(1 - sigma(D(G(z))))        "minimax" (the lecture's objective)
                 min  -log sigma(D(G(z)))            "non_saturating" (Goodfellow et al.'s fix)

The stabiliser is the R1 penalty (Mescheder et al. 2018), gamma/2 times the squared gradient of
D at real data: it is a pure function of the parameters (spectral normalisation keeps power
iteration vectors as mutable state, which the per-example losses of ``diffusion_jax.train`` do
not carry), and it makes the GAN's simultaneous or alternating gradient dynamics locally
convergent where the unregularised game oscillates (Mescheder et al. 2018, Thm. 4.1).

Parameters are {"generator": ..., "discriminator": ...}; each loss is per example, ``loss_fn(
params, frozen, example, key) -> {"loss", ...}``, the train step's contract.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import _checks

GENERATOR_LOSSES = ("non_saturating", "minimax")


class Generator(nn.Module):
  """z (N, latent_dim) -> images (N, H, W, C) in [-1, 1] (tanh): a dense map to a (H/4, W/4)
  grid, then transposed convolutions with stride 2 (DCGAN without batch norm)."""

  image_shape: tuple[int, int, int] = (8, 8, 1)
  latent_dim: int = 32
  features: Sequence[int] = (128, 64)

  @nn.compact
  def __call__(self, z):
    h, w, c = self.image_shape
    down = 2 ** len(self.features)
    _checks.check_divisible_image("image_shape", self.image_shape, down, "2^len(features)")
    x = nn.Dense((h // down) * (w // down) * self.features[0])(z)
    x = nn.leaky_relu(x.reshape(z.shape[0], h // down, w // down, self.features[0]), 0.2)
    for f in self.features:
      x = nn.leaky_relu(nn.ConvTranspose(f, (4, 4), strides=(2, 2))(x), 0.2)
    return jnp.tanh(nn.Conv(c, (3, 3))(x))


class Discriminator(nn.Module):
  """images (N, H, W, C) -> logits (N,): strided convolutions, leaky ReLU, a dense head."""

  features: Sequence[int] = (64, 128)

  @nn.compact
  def __call__(self, x):
    for f in self.features:
      x = nn.leaky_relu(nn.Conv(f, (4, 4), strides=(2, 2))(x), 0.2)
    return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]


def check_generator_loss(generator_loss: str) -> str:
  if generator_loss not in GENERATOR_LOSSES:
    raise ValueError(f"generator_loss must be one of {GENERATOR_LOSSES}, got {generator_loss!r}.")
  return generator_loss


def make_losses(generator: nn.Module, discriminator: nn.Module, *, r1_gamma: float = 1.0,
                generator_loss: str = "non_saturating", x_key: str = "x0"):
  """{"generator": loss_fn, "discriminator": loss_fn}, per example, for ``make_multi_train_step``.

  Each example draws its own z from the loss key; both players see the same z at one step only if
  their keys agree (they do not: the train step folds in the player's index).
  """
  check_generator_loss(generator_loss)
  if r1_gamma < 0:
    raise ValueError(f"r1_gamma must be >= 0, got {r1_gamma!r}.")

  def fake(params, key):
    z = jr.normal(key, (1, generator.latent_dim))
    return generator.apply(params["generator"], z)

  def d(params, x):
    return discriminator.apply(params["discriminator"], x[None])[0]

  def discriminator_loss(params, frozen, example, key):
    del frozen
    x = example[x_key]
    real_logit, grad = jax.value_and_grad(lambda v: d(params, v))(x)
    fake_logit = discriminator.apply(params["discriminator"],
                                     jax.lax.stop_gradient(fake(params, key)))[0]
    adv = jax.nn.softplus(-real_logit) + jax.nn.softplus(fake_logit)
    r1 = jnp.sum(grad ** 2)
    return {"loss": adv + 0.5 * r1_gamma * r1, "adversarial": adv, "r1": r1,
            "real_logit": real_logit, "fake_logit": fake_logit}

  def generator_loss_fn(params, frozen, example, key):
    del frozen, example
    logit = discriminator.apply(params["discriminator"], fake(params, key))[0]
    # -log sigma(l) = softplus(-l); log(1 - sigma(l)) = -softplus(l).
    loss = jax.nn.softplus(-logit) if generator_loss == "non_saturating" else -jax.nn.softplus(logit)
    return {"loss": loss, "fake_logit": logit}

  return {"generator": generator_loss_fn, "discriminator": discriminator_loss}


def sample(generator: nn.Module, params, key, num: int):
  """num images from the generator's parameters (the "generator" tree or the whole dict)."""
  p = params.get("generator", params) if isinstance(params, dict) else params
  return generator.apply(p, jr.normal(key, (num, generator.latent_dim)))
