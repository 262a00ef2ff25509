"""The lecture's baseline families on the embedded digits at one wall-time budget each: test
bits/dim (exact or a bound, marked), sample quality against the floors, time to draw 1,000
samples, parameters and training steps.

    python benchmarks/baselines_digits.py --seconds 120 --out benchmarks/results/baselines_digits.json

Every family trains with Adam (lr 1e-3, batch 64; the GAN 2e-4 with b1 = 0.5, DCGAN's) on the
1,500 training digits for ``--seconds`` of wall time after compilation, then is scored with the
image evaluation of the diffusion runner (``build_images.evaluate_samples``: pixel and classifier
FD with their train-vs-test floors, the confident share, class entropy, copies). One likelihood
convention: the 17 levels at their cell centres in [-1, 1]; discrete models (PixelCNN, the VAE's
bounds) give -log2 P(levels) / D directly; the flow's density on uniformly dequantised images
gets the offset log2(L / 2) of ``likelihood.to_bits_per_dim``, the same as the diffusion model's
PF-ODE bits/dim, and is an upper bound on the discrete value. Writes one JSON file; nothing is
asserted. The diffusion row comes from the runner (README quickstart), not from here.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from experiments import cpu_flags  # noqa: E402

cpu_flags.use_xla_convolutions()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from diffusion_jax import data, likelihood, train, tuning  # noqa: E402
from diffusion_jax.baselines import flow, gan, pixelcnn, vae  # noqa: E402

LEVELS = 17
SHAPE = (8, 8, 1)
D = 64


def family(name: str):
  """(params, loss_fns {player: loss} or loss, optimizer(s), sample(params, key, n), test_bpd)."""
  x0 = jnp.zeros((1, *SHAPE))
  if name == "vae":
    m = vae.VAE(vae.ConvEncoder(latent_dim=16), vae.ConvDecoder(SHAPE, num_mixtures=1))
    params = m.init(jr.key(0), x0, jnp.zeros((1, 16)))
    loss = lambda p, f, ex, k: {"loss": -vae.elbo(m, p, ex["x0"][None], k, LEVELS)["elbo"][0]}  # noqa: E731
    sample = lambda p, k, n: vae.sample(m, p, k, n, LEVELS)  # noqa: E731

    def bpd(p, x, key):
      e = vae.elbo(m, p, x, key, LEVELS)["elbo"]
      iw = vae.iwae_bound(m, p, x, key, LEVELS, 1000)
      return {"bits_per_dim_elbo": -e / (D * math.log(2)), "bits_per_dim_iwae1000": -iw / (D * math.log(2))}
    return params, loss, optax.adam(1e-3), sample, bpd, "bound"
  if name == "pixelcnn":
    m = pixelcnn.PixelCNN(features=64, num_blocks=4, num_mixtures=5)
    params = m.init(jr.key(0), x0)
    loss = lambda p, f, ex, k: {"loss": -pixelcnn.log_likelihood(m, p, ex["x0"][None], LEVELS)[0]}  # noqa: E731
    sample = lambda p, k, n: pixelcnn.sample(m, p, k, (n, *SHAPE), LEVELS)  # noqa: E731
    bpd = lambda p, x, key: {"bits_per_dim": -pixelcnn.log_likelihood(m, p, x, LEVELS) / (D * math.log(2))}  # noqa: E731
    return params, loss, optax.adam(1e-3), sample, bpd, "exact"
  if name == "flow":
    m = flow.Glow(num_scales=2, num_steps=8, hidden=64)
    params = m.init(jr.key(0), x0)

    def loss(p, f, ex, k):
      return {"loss": -flow.log_density(m, p, flow.dequantize(k, ex["x0"], LEVELS)[None])[0]}
    sample = lambda p, k, n: flow.sample(m, p, k, n, SHAPE)  # noqa: E731

    def bpd(p, x, key):
      logp = jnp.mean(jnp.stack([flow.log_density(m, p, flow.dequantize(k, x, LEVELS))
                                 for k in jr.split(key, 8)]), 0)
      return {"bits_per_dim": likelihood.to_bits_per_dim(logp, D, num_levels=LEVELS, data_range=(-1.0, 1.0))}
    return params, loss, optax.adam(1e-3), sample, bpd, "bound (uniform dequantisation)"
  if name == "gan":
    g, d = gan.Generator(SHAPE, latent_dim=32), gan.Discriminator()
    params = {"generator": g.init(jr.key(0), jnp.zeros((1, 32))), "discriminator": d.init(jr.key(1), x0)}
    losses = gan.make_losses(g, d, r1_gamma=1.0)
    opt = {k: optax.adam(2e-4, b1=0.5) for k in losses}
    sample = lambda p, k, n: gan.sample(g, p, k, n)  # noqa: E731
    return params, {k: (losses[k], opt[k]) for k in losses}, opt, sample, None, "none"
  raise ValueError(f"unknown family {name!r}")


def run_family(name: str, seconds: float, train_x: np.ndarray, test_x: np.ndarray, evaluate):
  params, loss, opt, sample, bpd, kind = family(name)
  if isinstance(loss, dict):
    step = jax.jit(train.make_multi_train_step(loss, 0.999, order=("discriminator", "generator")))
  else:
    step = jax.jit(train.make_train_step(loss, opt, 0.999))
  state = train.TrainState.create(params, opt)
  rng = np.random.default_rng(0)
  batch = lambda: {"x0": jnp.asarray(train_x[rng.choice(len(train_x), 64)])}  # noqa: E731
  tic = time.perf_counter()
  state, _ = step(state, batch(), jr.key(1))
  jax.block_until_ready(state)
  compile_s, tic, steps = time.perf_counter() - tic, time.perf_counter(), 1
  while time.perf_counter() - tic < seconds:
    state, metrics = step(state, batch(), jr.key(1))
    steps += 1
    if steps % 50 == 0:
      jax.block_until_ready(metrics)
  jax.block_until_ready(state)
  train_s = time.perf_counter() - tic
  ema = state.ema_params
  out = {"family": name, "likelihood": kind, "num_params": tuning.num_params(params),
         "train_steps": steps, "train_seconds": train_s, "compile_seconds": compile_s,
         "final_metrics": {k: float(v) for k, v in metrics.items()}}
  if bpd is not None:
    vals = jax.jit(bpd)(ema, jnp.asarray(test_x), jr.key(2))
    out.update({k: float(np.mean(v)) for k, v in vals.items()})
  draw_fn = jax.jit(lambda k: sample(ema, k, 1000))
  jax.block_until_ready(draw_fn(jr.key(3)))
  tic = time.perf_counter()
  x = jax.block_until_ready(draw_fn(jr.key(4)))
  out["seconds_per_1000_samples"] = time.perf_counter() - tic
  summary, _ = evaluate(lambda n, c: {"x": np.asarray(x)[:n], "nfe": np.zeros(n)})
  out["sample_quality"] = {k: summary[k] for k in (
      "fd_pixels", "fd_pixels_floor", "fd_features", "fd_features_floor", "confident_fraction",
      "class_entropy_bits", "copy_fraction") if k in summary}
  print(json.dumps(out), flush=True)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seconds", type=float, default=120.0, help="training wall time per family")
  p.add_argument("--families", default="vae,pixelcnn,flow,gan")
  p.add_argument("--out", default="benchmarks/results/baselines_digits.json")
  a = p.parse_args(argv)
  from experiments import build_images
  from experiments.configs import digits as digits_config

  config = digits_config.get_config()
  train_set, test_set = data.digits("train"), data.digits("test")
  evaluate = lambda draw: build_images.evaluate_samples(config, draw, train_set, test_set, 0)  # noqa: E731
  rows = [run_family(f, a.seconds, np.asarray(train_set.to_model()), np.asarray(test_set.to_model()),
                     evaluate) for f in a.families.split(",")]
  result = {"device": jax.devices()[0].device_kind, "platform": platform.platform(),
            "jax": jax.__version__, "budget_seconds": a.seconds, "num_levels": LEVELS,
            "bits_per_dim_offset": likelihood.bits_per_dim_offset(LEVELS, (-1.0, 1.0)), "rows": rows}
  with open(a.out, "w") as fh:
    json.dump(result, fh, indent=1)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
