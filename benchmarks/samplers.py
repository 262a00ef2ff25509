"""Sampler quality vs NFE and speed on exact Gaussian-mixture problems, with diffusers as the peer.

    python benchmarks/samplers.py --out FILE [--quick] [--no-peers]

For Gaussian mixtures in 2, 16 and 64 dimensions (non-centred, unequal weights, anisotropic
components), every sampler and SDE, at each NFE: energy distance and sliced Wasserstein-1 to exact
samples over several seeds, next to the two-sample floor (two exact sets); for deterministic
samplers the RMS path error against a converged adaptive ODE solve from the same initial noise;
the wall time per batch. In the same run, diffusers' schedulers (DDIM, DPMSolverMultistep, Euler,
Heun, EulerAncestral, DDPM) sample the VP problems driven by the same exact noise prediction
written in torch, and the JSON holds our-to-peer ratios. The full run is sized for one GPU; --quick
is a CPU-sized run (fewer dimensions, NFEs, seeds and samples).

The wall times here come from one process that runs both libraries, where each one's thread pool
can slow the other; benchmarks/sampler_speed.py is the speed comparison proper (each side in its
own process, same CPUs and threads).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from diffusion_jax import analytic, metrics, schedules, sdes  # noqa: E402
from diffusion_jax import samplers as S  # noqa: E402
from diffusion_jax.sampling import BATCH_AXIS, example_keys, sample, sample_batch  # noqa: E402

T_MIN_VP = 1e-3  # DPM-Solver's end time for few-step sampling of VP models


def make_problem(dim: int, seed: int = 0) -> analytic.GaussianMixture:
  """K = 4 components: unequal weights, means off the origin, per-axis variances from 0.05 to 0.6."""
  rng = np.random.default_rng(seed + dim)
  k = 4
  weights = np.array([0.1, 0.2, 0.3, 0.4])
  means = rng.normal(size=(k, dim)) * 2.0 / math.sqrt(max(dim / 2, 1)) + 1.0
  variances = rng.uniform(0.05, 0.6, size=(k, dim))
  return analytic.GaussianMixture.create(weights, means, variances)


def _mixture_terms(dm: analytic.DiffusedMixture, t: jax.Array):
  """p_t's per-component means alpha mu_k, inverse variances and log normalisers log w_k - 1/2 log|Var|."""
  gmm, sde = dm.data, dm.sde
  alpha, sigma = sde.alpha(t), sde.sigma(t)
  var = alpha**2 * gmm.variances + sigma**2  # (K, D)
  return alpha * gmm.means, 1.0 / var, jnp.log(gmm.weights) - 0.5 * jnp.sum(jnp.log(var), -1)


def _score_rows_kdb(dm: analytic.DiffusedMixture, x: jax.Array, t: jax.Array) -> jax.Array:
  """dm.score for a batch x of shape (B, D), computed with (K, D, B) intermediates."""
  mu, inv_var, log_norm = _mixture_terms(dm, t)
  xt = x.T  # (D, B)
  diff = mu[:, :, None] - xt[None]  # (K, D, B)
  logp = log_norm[:, None] - 0.5 * jnp.sum(diff * diff * inv_var[:, :, None], 1)
  resp = jax.nn.softmax(logp, axis=0)  # (K, B)
  return ((mu * inv_var).T @ resp - xt * (inv_var.T @ resp)).T


def _score_rows_gemm(dm: analytic.DiffusedMixture, x: jax.Array, t: jax.Array) -> jax.Array:
  """dm.score for a batch x of shape (B, D) with no (B, K, D) intermediate: the quadratic form
  expanded, sum_d (x_d - mu_d)^2 / v_d = x^2 . (1/v) - 2 x . (mu/v) + mu . (mu/v), so the
  log-densities and the responsibility-weighted score are (B, D) x (D, K) and (B, K) x (K, D)
  products."""
  mu, inv_var, log_norm = _mixture_terms(dm, t)
  mu_iv = mu * inv_var  # (K, D)
  logp = (log_norm - 0.5 * jnp.sum(mu * mu_iv, -1)) + x @ mu_iv.T - 0.5 * ((x * x) @ inv_var.T)
  resp = jax.nn.softmax(logp, axis=-1)  # (B, K)
  return resp @ mu_iv - x * (resp @ inv_var)


def _batched(rows):
  """The per-example score whose vmap over examples (only x batched) calls ``rows`` on the batch."""

  @jax.custom_batching.custom_vmap
  def score(dm, x, t):
    return rows(dm, x[None], t)[0]

  @score.def_vmap
  def _(axis_size, in_batched, dm, x, t):
    dm_batched, x_batched, t_batched = in_batched
    if x_batched and not t_batched and not any(jax.tree.leaves(dm_batched)):
      return rows(dm, x, t), True
    # Anything else batched (a per-example time, a batch of mixtures): the plain per-example vmap.
    axes = jax.tree.map(lambda b: 0 if b else None, in_batched)
    return jax.vmap(lambda d, xx, tt: rows(d, xx[None], tt)[0], in_axes=axes)(dm, x, t), True

  return score


# The mixture's noise prediction in three layouts, the same function up to float32 rounding, so that
# a speed comparison can use the one each framework runs fastest: "bkd" is the library's per-example
# score as vmap batches it, (batch, K, D) intermediates.
LAYOUTS = ("bkd", "kdb", "gemm")
_BATCHED = {"kdb": _batched(_score_rows_kdb), "gemm": _batched(_score_rows_gemm)}


class BatchedScore(flax.struct.PyTreeNode):
  """The mixture's exact score, dm.score, in another layout when vmapped over examples.

  vmap of the per-example score keeps (batch, K, D) intermediates, and for D = 2 their reductions
  over axes of size 2 and 4 vectorise badly on CPU. Its vmap rule computes on the whole batch
  instead: ``"kdb"`` on (K, D, batch) arrays, so every reduction runs along contiguous batch rows;
  ``"gemm"`` with the quadratic form expanded into matrix products (no (batch, K, D) array at all).
  Same values up to rounding; no reverse-mode derivative (custom_vmap), which sampling does not
  need. The peer gets the same forms (``torch_eps_fn(layout=...)``).
  """

  dm: analytic.DiffusedMixture
  layout: str = flax.struct.field(pytree_node=False, default="kdb")

  def __post_init__(self):
    if self.layout not in _BATCHED:
      raise ValueError(f"layout: expected one of {sorted(_BATCHED)}, got {self.layout!r}")

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    return _BATCHED[self.layout](self.dm, x, t)


def score_in_layout(dm: analytic.DiffusedMixture, layout: str):
  """dm's exact score as a ``score_fn`` computed in ``layout`` (one of LAYOUTS) under vmap."""
  return dm if layout == "bkd" else BatchedScore(dm, layout)


def t_min_of(sde) -> float:
  return 0.0 if isinstance(sde, sdes.VESDE) else T_MIN_VP


GRIDS = {
    "time_uniform": schedules.uniform_time,
    "time_quadratic": schedules.time_quadratic,
    "log_snr": schedules.uniform_log_snr,
    "edm": schedules.edm_rho,
}

# name -> (sampler, grid, score evaluations per step, Tweedie step at the end)
SAMPLERS = {
    "euler_maruyama": (S.EulerMaruyama(), "time_uniform", 1, True),
    "reverse_diffusion": (S.ReverseDiffusion(), "time_uniform", 1, True),
    "ancestral": (S.Ancestral(), "time_uniform", 1, True),
    "annealed_langevin": (S.AnnealedLangevin(num_steps=5), "log_snr", 5, True),  # step_lr per SDE
    "annealed_langevin_c1": (S.AnnealedLangevin(num_steps=5), "log_snr", 5, True),
    "pc_langevin": (S.PredictorCorrector(S.ReverseDiffusion(), S.Langevin(axis_name="batch")),
                    "time_uniform", 2, True),
    "edm_stochastic": (S.EDMStochastic(), "edm", 2, True),
    "ddim_eta1": (S.DDIM(eta=1.0), "time_quadratic", 1, False),
    "euler_ode": (S.Euler(), "time_uniform", 1, False),
    "ddim": (S.DDIM(), "time_quadratic", 1, False),
    "heun": (S.Heun(), "edm", 2, False),
    "dpm_solver_2m": (S.DPMSolverPP(order=2), "log_snr", 1, False),
    "dpm_solver_2m_quad": (S.DPMSolverPP(order=2), "time_quadratic", 1, False),
    "dpm_solver_3m": (S.DPMSolverPP(order=3), "log_snr", 1, False),
    "unipc": (S.UniPC(order=2), "log_snr", 1, False),
    "unipc_quad": (S.UniPC(order=2), "time_quadratic", 1, False),
    "unipc_bh1_quad": (S.UniPC(order=2, bh2=False), "time_quadratic", 1, False),
    "unipc3": (S.UniPC(order=3), "log_snr", 1, False),
    # Third order to the end, without the lower-order final steps (the "_full" configurations): in
    # VE 64-D the warm-down doubles UniPC-3's path error at 10 NFE.
    "unipc3_full": (S.UniPC(order=3, lower_order_final=False), "log_snr", 1, False),
    "dpm_solver_3m_full": (S.DPMSolverPP(order=3, lower_order_final=False), "log_snr", 1, False),
    "ipndm": (S.IPNDM(), "time_quadratic", 1, False),
    "ipndm_lsnr": (S.IPNDM(), "log_snr", 1, False),
    "ipndm_edm": (S.IPNDM(), "edm", 1, False),
    # One ancestral step from T, then the ODE solver: it forgets most of the prior mismatch of
    # x_T ~ N(0, I), which a deterministic solver carries into the mixture weights (samplers.Chain).
    "ancestral_then_ipndm": (S.Chain(S.DDIM(eta=1.0), S.IPNDM()), "time_quadratic", 1, False),
    "ancestral_then_ipndm_t": (S.Chain(S.DDIM(eta=1.0), S.IPNDM()), "time_uniform", 1, False),
}
ADAPTIVE_TOLS = [1e-2, 1e-3, 1e-4]
# c in annealed Langevin's eps_i = c sigma_i^2. With 0.05 and 5 steps a level, 1000 NFE in 2-D end at
# energy 0.32 (VP, too narrow: the chain cannot follow VP's expanding marginal) and 0.026 (VE); with
# c = 1 at 4.5e-3 and 4.2e-4 (one seed, N = 10,000).
ANNEALED_STEP = {"annealed_langevin": 0.05, "annealed_langevin_c1": 1.0}


@functools.partial(jax.jit, static_argnames=("sde", "sampler", "denoise"))
def _sample_from(sde, score_fn, sampler, ts, x_init, keys, *, denoise):
  return jax.vmap(lambda x, k: sample(sde, score_fn, sampler, ts, x, key=k,
                                      denoise_final=denoise), axis_name=BATCH_AXIS)(x_init, keys)


def draw(args, sde, dm, sampler, ts, seed: int, dim: int, denoise: bool):
  """``args.num`` samples of seed ``seed``, starting from the SDE's prior (the benchmark's measure)
  or, with ``--prior exact``, from the exact marginal p_T of the mixture, which removes the
  prior-mismatch error (alpha(T) times the data mean for VP) and leaves the sampler's own."""
  if args.prior == "standard":
    return sample_batch(sde, dm, sampler, ts, key=jr.key(seed), num=args.num, shape=(dim,),
                        denoise_final=denoise)
  x_init = dm.sample(jr.fold_in(jr.key(seed), 1), sde.T, args.num)
  sample_keys = jax.vmap(lambda k: jr.split(k)[1])(example_keys(jr.key(seed), args.num))
  return _sample_from(sde, dm, sampler, jnp.asarray(ts), x_init, sample_keys, denoise=denoise)


def seeds_of(args) -> range:
  """The seeds of this run: --seed-offset gives a fresh set for a confirmation run."""
  return range(args.seed_offset, args.seed_offset + args.seeds)


def steps_for(nfe: int, per_step: int, denoise: bool) -> int:
  return max(1, (nfe - int(denoise)) // per_step)


def time_call(fn):
  t0 = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return out, time.perf_counter() - t0


def distances(x, y, key):
  return (float(metrics.energy_distance(x, y)), float(metrics.sliced_wasserstein(x, y, key)))


def run_ours(args, problems, report):
  sw_key = jr.key(12345)
  for dim, gmm in problems.items():
    for sde_name in args.sdes:
      sde = {"vp": sdes.VPSDE(), "subvp": sdes.SubVPSDE(), "ve": sdes.VESDE()}[sde_name]
      dm = analytic.DiffusedMixture(gmm, sde)
      t_min = t_min_of(sde)
      entry = {"dim": dim, "sde": sde_name, "t_min": t_min, "num": args.num, "samplers": {}}
      exact = {s: gmm.sample(jr.key(10_000 + s), args.num) for s in seeds_of(args)}
      # The floor: independent exact sets against each seed's reference set, floor_repeats per
      # seed. Its spread sets the band an exact sampler falls in (one pair scatters by ~5e-4).
      floors = [distances(gmm.sample(jr.key(20_000 + 1000 * r + s), args.num), exact[s], sw_key)
                for s in seeds_of(args) for r in range(args.floor_repeats)]
      entry["floor"] = {"energy": [f[0] for f in floors], "sliced_w1": [f[1] for f in floors]}
      # The converged ODE from each seed's own initial noise: the path-wise reference.
      tight = S.AdaptiveODE(rtol=1e-6, atol=1e-6, max_steps=16384)
      one = jnp.array([sde.T, t_min])
      converged = {s: draw(args, sde, dm, tight, one, s, dim, False) for s in seeds_of(args)}
      conv = [distances(c.x, exact[s], sw_key) for s, c in converged.items()]
      entry["converged_ode"] = {"energy": [c[0] for c in conv], "sliced_w1": [c[1] for c in conv],
                                "nfe_mean": float(np.mean([c.nfe.mean() for c in converged.values()]))}
      print(f"[ours] dim={dim} sde={sde_name} floor={np.mean(entry['floor']['energy']):.2e} "
            f"converged={np.mean(entry['converged_ode']['energy']):.2e}", flush=True)

      configs = []
      for name in args.samplers:
        if name == "adaptive":
          for tol in ADAPTIVE_TOLS:
            configs.append(("adaptive", S.AdaptiveODE(rtol=tol, atol=tol), one, False, f"tol={tol:g}"))
          continue
        sampler, grid_name, per_step, denoise = SAMPLERS[name]
        if name in ANNEALED_STEP:
          # Song & Ermon's step rule eps_i = step_lr sigma_i^2 / sigma_L^2, i.e. eps_i = c sigma_i^2.
          sampler = sampler.replace(step_lr=ANNEALED_STEP[name] * float(sde.sigma(t_min)) ** 2)
        for nfe in args.nfes:
          n = steps_for(nfe, per_step, denoise)
          ts = GRIDS[grid_name](sde, n, t_min)
          configs.append((name, sampler, ts, denoise, nfe))
      for name, sampler, ts, denoise, nfe_key in configs:
        rows = entry["samplers"].setdefault(name, {})
        energy, sw, path, walls, nfes = [], [], [], [], []
        for s in seeds_of(args):
          out, wall = time_call(lambda: draw(args, sde, dm, sampler, ts, s, dim, denoise))
          walls.append(wall)
          x = out.x
          nfes.append(int(out.nfe.max()))
          if not bool(jnp.all(jnp.isfinite(x))):
            energy.append(float("nan")), sw.append(float("nan"))
            continue
          e, w = distances(x, exact[s], sw_key)
          energy.append(e), sw.append(w)
          if not sampler.stochastic:
            # Compare the ODE end points before any Tweedie step (same end time t_min).
            path.append(float(jnp.sqrt(jnp.mean(jnp.sum((out.x - converged[s].x) ** 2, -1)))))
        row = {"nfe": int(np.max(nfes)), "steps": int(ts.shape[0] - 1), "energy": energy,
               "sliced_w1": sw, "wall_s_first_call": walls[0],
               "wall_s": float(np.median(walls[1:])) if len(walls) > 1 else walls[0]}
        if path:
          row["path_error_rms"] = path
        rows[str(nfe_key)] = row
        print(f"  {name:20s} nfe={row['nfe']:5d} energy={np.nanmean(energy):+.2e} "
              f"path={np.mean(path) if path else float('nan'):.2e} wall={row['wall_s']:.3f}s", flush=True)
      report["ours"].append(entry)
      dump(args, report)


# ------------------------------------------------------------------------------------- peers ----


PEERS = ["ddim", "dpm_solver_multistep", "euler", "heun", "euler_ancestral", "ddpm"]


def torch_device(requested: str) -> str:
  import torch
  if requested == "auto":
    return "cuda" if torch.cuda.is_available() else "cpu"
  return requested


@functools.cache
def diffusers_tables():
  """The 1000-step discretisation of our VP SDE that the schedulers are built on: betas, sigma~.

  Cached: diffusers_scheduler runs inside the timed sampling loop, and recomputing the table there
  (0.23 ms) would charge the peer for our JAX code."""
  alphas_cumprod = sdes.alphas_cumprod(sdes.VPSDE(), 1000)
  return sdes.betas_from_alphas_cumprod(alphas_cumprod), np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def torch_eps_fn(gmm: analytic.GaussianMixture, device: str, layout: str = "bkd"):
  """The mixture's exact noise prediction eps(x, timestep) in torch, for diffusers' schedulers.

  The same arithmetic as ours in each of LAYOUTS: ``"bkd"`` is analytic.GaussianMixture.score as
  vmap runs it, (batch, K, D) intermediates; ``"kdb"`` and ``"gemm"`` are BatchedScore's forms."""
  import torch
  if layout not in LAYOUTS:
    raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
  _, sigma_table = diffusers_tables()
  means = torch.tensor(np.asarray(gmm.means), dtype=torch.float32, device=device)
  variances = torch.tensor(np.asarray(gmm.variances), dtype=torch.float32, device=device)
  log_w = torch.log(torch.tensor(np.asarray(gmm.weights), dtype=torch.float32, device=device))

  def sigma_of(timestep):
    # The schedulers' own view of a (possibly fractional) timestep: sigma~ linearly interpolated
    # in the 1000-entry table, as diffusers' Euler/Heun do; exact at integer timesteps.
    tau = float(timestep)
    lo = int(math.floor(tau))
    hi = min(lo + 1, 999)
    frac = tau - lo
    return float((1 - frac) * sigma_table[lo] + frac * sigma_table[hi])

  def eps_fn(x, timestep):
    s_tilde = sigma_of(timestep)
    alpha = 1.0 / math.sqrt(1.0 + s_tilde**2)
    sigma = s_tilde * alpha
    var = alpha**2 * variances + sigma**2  # (K, D)
    inv_var = 1.0 / var
    mu = alpha * means
    mu_iv = mu * inv_var
    log_norm = log_w - 0.5 * torch.log(var).sum(-1)
    if layout == "bkd":
      diff = mu[None] - x[:, None, :]  # (B, K, D)
      logp = log_norm - 0.5 * (diff**2 * inv_var).sum(-1)
      resp = torch.softmax(logp, dim=-1)  # (B, K)
      return -sigma * (resp @ mu_iv - x * (resp @ inv_var))
    if layout == "gemm":
      logp = (log_norm - 0.5 * (mu * mu_iv).sum(-1)) + x @ mu_iv.T - 0.5 * ((x * x) @ inv_var.T)
      resp = torch.softmax(logp, dim=-1)  # (B, K)
      return -sigma * (resp @ mu_iv - x * (resp @ inv_var))
    xt = x.T  # (D, B)
    diff = mu[:, :, None] - xt[None]  # (K, D, B)
    logp = log_norm[:, None] - 0.5 * (diff * diff * inv_var[:, :, None]).sum(1)
    resp = torch.softmax(logp, dim=0)  # (K, B)
    return (-sigma * (mu_iv.T @ resp - xt * (inv_var.T @ resp))).T

  return eps_fn


def diffusers_scheduler(name: str, steps: int, device: str):
  import diffusers
  betas, _ = diffusers_tables()
  common = dict(num_train_timesteps=1000, trained_betas=betas.tolist())
  if name == "ddim":
    sched = diffusers.DDIMScheduler(**common, clip_sample=False, timestep_spacing="trailing",
                                    set_alpha_to_one=True)
  elif name == "dpm_solver_multistep":
    sched = diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
  elif name == "euler":
    sched = diffusers.EulerDiscreteScheduler(**common)
  elif name == "heun":
    sched = diffusers.HeunDiscreteScheduler(**common)
  elif name == "euler_ancestral":
    sched = diffusers.EulerAncestralDiscreteScheduler(**common)
  elif name == "ddpm":
    sched = diffusers.DDPMScheduler(**common, clip_sample=False, timestep_spacing="trailing")
  else:
    raise ValueError(f"unknown diffusers scheduler {name!r}; choose from {PEERS}")
  sched.set_timesteps(steps, device=device)
  return sched


def peer_steps(name: str, nfe: int) -> int:
  """Scheduler steps for an NFE budget: Heun spends two evaluations a step."""
  return (nfe + 1) // 2 if name == "heun" else nfe


def run_diffusers(name: str, steps: int, eps_fn, num: int, dim: int, seed: int, device: str):
  """The standard diffusers sampling loop: (final sample, score evaluations used)."""
  import torch
  sched = diffusers_scheduler(name, steps, device)
  gen = torch.Generator(device=device).manual_seed(seed)
  x = torch.randn((num, dim), generator=gen, device=device) * sched.init_noise_sigma
  nfe = 0
  for t in sched.timesteps:
    eps = eps_fn(sched.scale_model_input(x, t), t)
    nfe += 1
    kwargs = {"generator": gen} if name in ("euler_ancestral", "ddpm") else {}
    x = sched.step(eps, t, x, **kwargs).prev_sample
  if device == "cuda":
    torch.cuda.synchronize()
  return x, nfe


def run_peers(args, problems, report):
  import diffusers
  import torch

  device = torch_device(args.peer_device)
  if device == "cpu":
    torch.set_num_threads(args.threads)
  report["peers_meta"] = {"diffusers": diffusers.__version__, "torch": torch.__version__,
                          "device": device, "torch_threads": torch.get_num_threads()}

  sw_key = jr.key(12345)
  for dim, gmm in problems.items():
    eps_fn = torch_eps_fn(gmm, device)
    exact = {s: gmm.sample(jr.key(10_000 + s), args.num) for s in seeds_of(args)}
    entry = {"dim": dim, "sde": "vp", "schedulers": {}}
    for name in PEERS:
      rows = entry["schedulers"].setdefault(name, {})
      for nfe in args.nfes:
        steps = peer_steps(name, nfe)
        energy, sw, walls = [], [], []
        for s in seeds_of(args):
          t0 = time.perf_counter()
          x, used = run_diffusers(name, steps, eps_fn, args.num, dim, s, device)
          walls.append(time.perf_counter() - t0)
          xj = jnp.asarray(x.float().cpu().numpy())
          if not bool(jnp.all(jnp.isfinite(xj))):
            energy.append(float("nan")), sw.append(float("nan"))
            continue
          e, w = distances(xj, exact[s], sw_key)
          energy.append(e), sw.append(w)
        rows[str(nfe)] = {"nfe": used, "steps": steps, "energy": energy, "sliced_w1": sw,
                          "wall_s": float(np.median(walls))}
        print(f"[peer] dim={dim} {name:22s} nfe={used:5d} energy={np.nanmean(energy):+.2e} "
              f"wall={np.median(walls):.3f}s", flush=True)
    report["peers"].append(entry)
    dump(args, report)


# ----------------------------------------------------------------------------------- summary ----


def floor_band_hi(floors) -> float:
  """Top of the two-sample floor band: the mean + 3 standard deviations of exact-vs-exact energy
  distances. An exact sampler's distances are draws from the floor's own distribution, so the max of
  a few floor draws would fail an exact sampler about half the time. One draw: that draw."""
  floors = np.asarray(floors, dtype=float)
  return float(floors.mean() + 3 * floors.std(ddof=1)) if floors.size > 1 else float(floors.max())


def summarise(args, report):
  """Best sampler per problem and NFE, the floor band, the targets and the our-to-peer ratios."""
  summary = {"vp_10nfe_within_floor_band": {}, "vp_8nfe_within_floor_band": {},
             "ve_excess_over_converged_at_10nfe": {}, "ratios_to_best_peer": {},
             "wall_per_nfe_ratio_peer_over_ours": {}}
  peers_by_dim = {p["dim"]: p for p in report["peers"]}
  for entry in report["ours"]:
    floor = np.array(entry["floor"]["energy"])
    band_hi = floor_band_hi(floor)
    conv = np.array(entry["converged_ode"]["energy"])
    # Sliced W1 is positive, so "times the floor" is meaningful for it (energy distance is unbiased,
    # its floor scatters around 0).
    floor_sw = float(np.mean(entry["floor"]["sliced_w1"]))
    key = f"dim{entry['dim']}_{entry['sde']}"
    def best_at(nfe, deterministic_only):
      cands = []
      for name, rows in entry["samplers"].items():
        row = rows.get(str(nfe))
        if (row and row["nfe"] <= nfe and np.all(np.isfinite(row["energy"]))
            and (not deterministic_only or "path_error_rms" in row)):
          cands.append((float(np.max(row["energy"])), name, row))
      if not cands:
        return None
      worst_seed, name, row = min(cands, key=lambda c: c[0])
      return {"sampler": name, "energy_mean": float(np.mean(row["energy"])),
              "sliced_w1_over_floor": float(np.mean(row["sliced_w1"]) / floor_sw),
              "energy_worst_seed": worst_seed, "floor_band_hi": band_hi,
              "floor_mean": float(floor.mean()), "within_band_all_seeds": worst_seed <= band_hi,
              "excess_over_converged": float(np.mean(row["energy"]) - conv.mean())}

    best = {nfe: b for nfe in args.nfes if (b := best_at(nfe, False)) is not None}
    # The excess over the converged ODE from the same noise is a measure for ODE solvers: a
    # stochastic sampler does not follow the ODE path and can end below the converged ODE.
    best_det = {nfe: b for nfe in args.nfes if (b := best_at(nfe, True)) is not None}
    entry["best"] = {str(k): v for k, v in best.items()}
    entry["best_deterministic"] = {str(k): v for k, v in best_det.items()}
    if entry["sde"] == "vp":
      for nfe, target in ((10, "vp_10nfe_within_floor_band"), (8, "vp_8nfe_within_floor_band")):
        if nfe in best:
          summary[target][key] = best[nfe]
      peer = peers_by_dim.get(entry["dim"])
      if peer:
        for nfe in args.nfes:
          peer_rows = [(float(np.nanmean(r[str(nfe)]["energy"])), n, r[str(nfe)])
                       for n, r in peer["schedulers"].items() if str(nfe) in r]
          if not peer_rows or nfe not in best:
            continue
          peer_best = min(peer_rows, key=lambda c: c[0] if np.isfinite(c[0]) else np.inf)
          summary["ratios_to_best_peer"][f"{key}_nfe{nfe}"] = {
              "ours": best[nfe]["sampler"], "ours_energy": best[nfe]["energy_mean"],
              "peer": peer_best[1], "peer_energy": peer_best[0],
              "floor_band_hi": band_hi,
              "peer_within_band_all_seeds": bool(np.nanmax(peer_best[2]["energy"]) <= band_hi),
              "peer_sliced_w1_over_floor": float(np.nanmean(peer_best[2]["sliced_w1"]) / floor_sw),
              "ours_sliced_w1_over_floor": best[nfe]["sliced_w1_over_floor"],
              "ours_over_peer_energy": best[nfe]["energy_mean"] / peer_best[0] if peer_best[0] else None}
        # Wall time per NFE at equal batch: the same-algorithm pairs.
        pairs = [("ddim", "ddim"), ("dpm_solver_2m", "dpm_solver_multistep"),
                 ("ancestral", "ddpm"), ("heun", "heun")]
        for ours_name, peer_name in pairs:
          for nfe in args.nfes:
            o = entry["samplers"].get(ours_name, {}).get(str(nfe))
            p = peer["schedulers"].get(peer_name, {}).get(str(nfe))
            if o and p:
              ratio = (p["wall_s"] / p["nfe"]) / (o["wall_s"] / o["nfe"])
              summary["wall_per_nfe_ratio_peer_over_ours"][f"{key}_{ours_name}_nfe{nfe}"] = ratio
    elif entry["sde"] == "ve" and 10 in best_det:
      summary["ve_excess_over_converged_at_10nfe"][key] = {
          **best_det[10], "target_at_most": 5e-4,
          "met": best_det[10]["excess_over_converged"] <= 5e-4}
  report["summary"] = summary


def dump(args, report):
  """Write what is done so far: a run stopped by a time limit still leaves its results."""
  summarise(args, report)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True)
  parser.add_argument("--quick", action="store_true", help="a CPU-sized run")
  parser.add_argument("--no-peers", action="store_true")
  parser.add_argument("--dims", type=lambda s: [int(v) for v in s.split(",")])
  parser.add_argument("--nfes", type=lambda s: [int(v) for v in s.split(",")])
  parser.add_argument("--sdes", type=lambda s: s.split(","))
  parser.add_argument("--samplers", type=lambda s: s.split(","))
  parser.add_argument("--seeds", type=int)
  parser.add_argument("--num", type=int)
  parser.add_argument("--seed-offset", type=int, default=0,
                      help="first seed: a run on fresh seeds checks choices made on the default ones")
  parser.add_argument("--floor-repeats", type=int, default=4,
                      help="independent exact-vs-exact pairs per seed for the floor band")
  parser.add_argument("--prior", default="standard", choices=["standard", "exact"],
                      help="start from the SDE's prior, or from the exact p_T (no prior mismatch)")
  parser.add_argument("--peer-device", default="auto", choices=["auto", "cpu", "cuda"])
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  if args.quick:
    defaults = dict(dims=[2, 16], nfes=[5, 10, 20], sdes=["vp", "ve"], seeds=2, num=2000,
                    samplers=["ancestral", "pc_langevin", "edm_stochastic", "ddim", "heun",
                              "dpm_solver_2m", "dpm_solver_2m_quad", "dpm_solver_3m", "unipc",
                              "unipc_quad", "unipc_bh1_quad", "ipndm", "euler_ode", "adaptive"])
  else:
    defaults = dict(dims=[2, 16, 64], nfes=[5, 8, 10, 20, 50, 100, 1000], sdes=["vp", "subvp", "ve"],
                    seeds=5, num=10_000, samplers=list(SAMPLERS) + ["adaptive"])
  for k, v in defaults.items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  unknown = [s for s in args.samplers if s not in SAMPLERS and s != "adaptive"]
  if unknown:
    raise SystemExit(f"--samplers: unknown {unknown}; choose from {sorted(SAMPLERS)} or adaptive")

  problems = {d: make_problem(d) for d in args.dims}
  report = {"meta": {"jax": jax.__version__, "backend": jax.default_backend(),
                     "devices": [str(d) for d in jax.devices()], "platform": platform.platform(),
                     "cpu_count": os.cpu_count(), "args": vars(args)},
            "ours": [], "peers": []}
  t0 = time.time()
  # Peers first (VP only, no compilation): a run cut short by a time limit keeps both sides.
  if not args.no_peers and "vp" in args.sdes:
    try:
      run_peers(args, problems, report)
    except ImportError as err:  # torch/diffusers are the optional `bench` extra
      report["peers_error"] = f"peers skipped: {err}"
      print(report["peers_error"], flush=True)
  run_ours(args, problems, report)
  report["meta"]["total_seconds"] = time.time() - t0
  dump(args, report)
  print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
  main()
