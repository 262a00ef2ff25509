"""The families a lecture on generative models compares diffusion with, each a network, its
loss, its sampler and its log-likelihood (or bound) in one small module, under the digits'
likelihood convention (levels at their cell centres in [-1, 1]):

  vae        Gaussian encoder, discretised logistic decoder; ELBO and IWAE_k (bounds, discrete)
  pixelcnn   PixelCNN++-style autoregressive model; exact discrete log-likelihood
  flow       Glow / RealNVP-style flow; exact density, bits/dim under uniform dequantisation
  gan        DCGAN-style generator and discriminator, minimax / non-saturating losses, R1
  discretized  the discretised logistic mixture the first two share
"""

from diffusion_jax.baselines import discretized, flow, gan, pixelcnn, vae

__all__ = ["discretized", "flow", "gan", "pixelcnn", "vae"]
