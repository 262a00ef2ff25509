"""Samplers: one algorithm per file, each a small frozen pytree with ``init``, ``step`` and ``finalize``."""

from diffusion_jax.samplers.adaptive import AdaptiveODE
from diffusion_jax.samplers.ancestral import Ancestral
from diffusion_jax.samplers.annealed_langevin import AnnealedLangevin
from diffusion_jax.samplers.base import AbstractSampler, StepAux
from diffusion_jax.samplers.cfgpp import CFGPlusPlus
from diffusion_jax.samplers.chain import Chain
from diffusion_jax.samplers.constraints import (COLOUR_BASIS, Inpaint, MaskedMeasurement,
                                                 PosteriorSampling, RePaint, colorization)
from diffusion_jax.samplers.ddim import DDIM
from diffusion_jax.samplers.dpm_solver import DPMSolverPP
from diffusion_jax.samplers.edm_stochastic import EDMStochastic
from diffusion_jax.samplers.euler import Euler
from diffusion_jax.samplers.euler_maruyama import EulerMaruyama
from diffusion_jax.samplers.heun import Heun
from diffusion_jax.samplers.ipndm import IPNDM
from diffusion_jax.samplers.langevin import Langevin
from diffusion_jax.samplers.predictor_corrector import PredictorCorrector
from diffusion_jax.samplers.reverse_diffusion import ReverseDiffusion
from diffusion_jax.samplers.unipc import UniPC

__all__ = [
    "AbstractSampler", "AdaptiveODE", "Ancestral", "AnnealedLangevin", "CFGPlusPlus",
    "COLOUR_BASIS", "Chain", "DDIM", "DPMSolverPP", "EDMStochastic", "Euler", "EulerMaruyama",
    "Heun", "IPNDM", "Inpaint", "Langevin", "MaskedMeasurement", "PosteriorSampling",
    "PredictorCorrector", "RePaint", "ReverseDiffusion", "StepAux", "UniPC", "colorization",
]
