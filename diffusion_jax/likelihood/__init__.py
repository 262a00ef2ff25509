"""Likelihoods: the probability-flow ODE log-likelihood (on diffrax), bits/dim, the DDPM bound.

One concept per module:
  divergence       exact trace or Hutchinson estimates of div v (given or drawn probes)
  variables        the integration variable: time t, or EDM's sigma~ (InTime, InSigma)
  solve            the adaptive diffrax driver with exact evaluation counts and a success flag
  flow             log_likelihood, encode, decode, round_trip
  dequantization   uniform dequantization and bits per dimension
  elbo             the DDPM variational bound

Accuracy and cost (benchmarks/likelihood.py, exact GMM scores in 2-64 dimensions): see
benchmarks/results/likelihood_cpu2_after.json and the README's likelihood section.
"""

from diffusion_jax.likelihood.dequantization import (BitsPerDim, bits_per_dim, bits_per_dim_offset,
                                                     dequantize, level_centres, levels_of,
                                                     to_bits_per_dim)
from diffusion_jax.likelihood.divergence import (AbstractDivergence, ExactDivergence, GivenProbes,
                                                 Hutchinson, Probe)
from diffusion_jax.likelihood.elbo import ElboOutput, ReverseVariance, ddpm_elbo
from diffusion_jax.likelihood.flow import (FlowOutput, LikelihoodOutput, RoundTrip, decode, encode,
                                           log_likelihood, round_trip)
from diffusion_jax.likelihood.solve import OdeSolution, solve_ode
from diffusion_jax.likelihood.variables import AbstractFlowVariable, InSigma, InTime

__all__ = ["AbstractDivergence", "AbstractFlowVariable", "BitsPerDim", "ElboOutput",
           "ExactDivergence", "FlowOutput", "GivenProbes", "Hutchinson", "InSigma", "InTime",
           "LikelihoodOutput", "OdeSolution", "Probe", "ReverseVariance", "RoundTrip",
           "bits_per_dim", "bits_per_dim_offset", "ddpm_elbo", "decode", "dequantize", "encode", "level_centres", "levels_of",
           "log_likelihood", "round_trip", "solve_ode", "to_bits_per_dim"]
