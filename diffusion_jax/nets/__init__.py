"""Flax linen networks, batched: ``model_fn(params, x, t, cond, *, key, train)`` with a leading batch axis."""

from diffusion_jax.nets.classifier import Classifier, init_classifier
from diffusion_jax.nets.controlnet import ControlNet
from diffusion_jax.nets.conv import Conv2D
from diffusion_jax.nets.embeddings import GaussianFourierEmbedding, SinusoidalEmbedding
from diffusion_jax.nets.inception import InceptionFeatures, InceptionV3
from diffusion_jax.nets.init import init_params
from diffusion_jax.nets.mlp import ScoreMLP
from diffusion_jax.nets.model_fn import ModelFn, ModuleModelFn, as_model_fn
from diffusion_jax.nets.ncsn import NCSN, CondInstanceNormPP
from diffusion_jax.nets.unet import (UNet, ddpmpp_cifar10, edm_ddpmpp_cifar10, edm_ncsnpp_cifar10,
                                     ncsnpp_cifar10)

__all__ = ["Classifier", "CondInstanceNormPP", "ControlNet", "Conv2D", "GaussianFourierEmbedding",
           "InceptionFeatures", "InceptionV3", "ModelFn", "ModuleModelFn", "NCSN", "ScoreMLP",
           "SinusoidalEmbedding", "UNet", "as_model_fn", "ddpmpp_cifar10", "edm_ddpmpp_cifar10",
           "edm_ncsnpp_cifar10", "init_classifier", "init_params", "ncsnpp_cifar10"]
