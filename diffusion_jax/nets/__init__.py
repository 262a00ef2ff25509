"""Flax linen networks, batched: ``model_fn(params, x, t, cond, *, key, train)`` with a leading batch axis."""

from diffusion_jax.nets.classifier import Classifier, init_classifier
from diffusion_jax.nets.embeddings import GaussianFourierEmbedding, SinusoidalEmbedding
from diffusion_jax.nets.mlp import ScoreMLP
from diffusion_jax.nets.model_fn import ModelFn, ModuleModelFn, as_model_fn

__all__ = ["Classifier", "GaussianFourierEmbedding", "ModelFn", "ModuleModelFn", "ScoreMLP",
           "SinusoidalEmbedding", "as_model_fn", "init_classifier"]
