"""diffusion_jax: score-based and diffusion generative models in JAX."""

from diffusion_jax import analytic, losses, metrics, parameterization, sde, sdes
from diffusion_jax.analytic import DiffusedMixture, GaussianMixture
from diffusion_jax.losses import LossOutput, Weighting, dsm_loss, dsm_loss_at, ncsn_loss
from diffusion_jax.parameterization import NetworkScore, Prediction, convert
from diffusion_jax.sde import AbstractLinearSDE, AbstractSDE, ProbabilityFlowODE, ReverseSDE
from diffusion_jax.sdes import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from diffusion_jax import data, nets, train
from diffusion_jax.nets import GaussianFourierEmbedding, ScoreMLP, SinusoidalEmbedding
from diffusion_jax.train import (TrainState, ema_update, make_dsm_loss_fn, make_optimizer,
                                 make_train_step)
from diffusion_jax import likelihood, ode
from diffusion_jax.likelihood import (ExactDivergence, Hutchinson, InSigma, InTime, Probe,
                                      bits_per_dim, ddpm_elbo, decode, encode, log_likelihood,
                                      round_trip)
from diffusion_jax import sample as sample_lib  # noqa: E402  (the module; `sample` is the function)
from diffusion_jax import samplers, schedules
from diffusion_jax.sample import SampleOutput, example_keys, sample, sample_batch
from diffusion_jax.samplers import (AbstractSampler, AdaptiveODE, Ancestral, AnnealedLangevin, DDIM,
                                    DPMSolverPP, EDMStochastic, Euler, EulerMaruyama, Heun, IPNDM,
                                    Langevin, PredictorCorrector, ReverseDiffusion, UniPC)

__version__ = "0.1.0"
