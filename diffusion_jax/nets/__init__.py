"""Flax linen networks. All are batched: ``apply(params, x, t[, label])`` with a leading batch axis."""

from diffusion_jax.nets.embeddings import GaussianFourierEmbedding, SinusoidalEmbedding
from diffusion_jax.nets.mlp import ScoreMLP

__all__ = ["GaussianFourierEmbedding", "ScoreMLP", "SinusoidalEmbedding"]
