"""diffusion_jax: score-based and diffusion generative models in JAX.

The public API, re-exported explicitly; each module's docstring explains its part.
"""

from diffusion_jax import (analytic, baselines, conditions, data, guidance, likelihood, losses, metrics,
                           nets, parameterization, samplers, sampling, schedules, sde, sdes, simulate,
                           train, tuning)
from diffusion_jax.analytic import (ConditionalDiffusedMixture, DiffusedMixture, GaussianMixture,
                                    random_mixture)
from diffusion_jax.conditions import drop_condition, null_label, with_condition_dropout
from diffusion_jax.guidance import (Autoguidance, ClassifierFreeGuidance, ClassifierGuidance,
                                    NoiseInterval)
from diffusion_jax.likelihood import (ExactDivergence, GivenProbes, Hutchinson, InSigma, InTime,
                                      Probe,
                                      bits_per_dim, ddpm_elbo, decode, encode, log_likelihood,
                                      round_trip)
from diffusion_jax.losses import (EDMLossOutput, LossOutput, Weighting, dsm_loss, dsm_loss_at,
                                  edm_loss, make_edm_loss_fn, ncsn_loss)
from diffusion_jax.nets import GaussianFourierEmbedding, ScoreMLP, SinusoidalEmbedding, as_model_fn
from diffusion_jax.parameterization import EDMPrecond, NetworkScore, Prediction, convert
from diffusion_jax.samplers import (DDIM, IPNDM, AbstractSampler, AdaptiveODE, Ancestral,
                                    AnnealedLangevin, CFGPlusPlus, Chain, DPMSolverPP,
                                    EDMStochastic, Euler,
                                    EulerMaruyama, Heun, Inpaint, Langevin, PosteriorSampling,
                                    PredictorCorrector, RePaint, ReverseDiffusion, UniPC,
                                    colorization)
from diffusion_jax.sampling import (SampleOutput, example_keys, sample, sample_batch,
                                    sample_examples, sample_from_prior)
from diffusion_jax.simulate import simulate_forward
from diffusion_jax.sde import AbstractLinearSDE, AbstractSDE, ProbabilityFlowODE, ReverseSDE
from diffusion_jax.sdes import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from diffusion_jax.train import (TrainState, ema_update, make_multi_train_step, make_optimizer,
                                 make_train_step)
from diffusion_jax.tuning import FiLM, FineTune, LoRA, PromptTuning, TunedModelFn

__version__ = "0.1.0"
