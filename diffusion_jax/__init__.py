"""diffusion_jax: score-based and diffusion generative models in JAX."""

from diffusion_jax import analytic, losses, metrics, parameterization, sde, sdes
from diffusion_jax.analytic import DiffusedMixture, GaussianMixture
from diffusion_jax.losses import LossOutput, Weighting, dsm_loss, dsm_loss_at, ncsn_loss
from diffusion_jax.parameterization import NetworkScore, Prediction, convert
from diffusion_jax.sde import AbstractLinearSDE, AbstractSDE, ProbabilityFlowODE, ReverseSDE
from diffusion_jax.sdes import VESDE, VPSDE, CosineVPSDE, SubVPSDE

__version__ = "0.1.0"
