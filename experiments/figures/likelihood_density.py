"""A 2-D density computed by the probability-flow ODE, next to the true density.

  python experiments/figures/likelihood_density.py [--out DIR]
  # the density of a trained model instead of the exact score:
  python experiments/figures/likelihood_density.py --config=experiments/configs/toy2d.py \
      --workdir=DIR_OF_A_RUN [--out DIR]

Every grid point is one example of ``log_likelihood`` (its own adaptive steps). With the exact score
of the eight-Gaussian mixture the ODE density must reproduce the true one (the right panel shows
the difference); with a trained model it shows what the model learned. The true density is the
data law's, where it is a known mixture.
"""

import argparse
import importlib.util
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import analytic, sdes
from diffusion_jax import likelihood as lk


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=_common.default_out())
  parser.add_argument("--grid", type=int, default=64, help="points per axis")
  parser.add_argument("--extent", type=float, default=3.0, help="half-width of the square")
  parser.add_argument("--tol", type=float, default=1e-5)
  parser.add_argument("--config", default=None, help="a run's config file (with --workdir)")
  parser.add_argument("--workdir", default=None, help="a run directory with checkpoints")
  args = parser.parse_args()

  if args.workdir:
    from experiments import build
    from experiments import run as run_lib

    spec = importlib.util.spec_from_file_location("config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    score_fn, sde, state = run_lib.restore_model(config, args.workdir)
    true_mixture = build.build_dataset(config).mixture
    source = f"trained model ({args.workdir}, step {int(jax.device_get(state.step))})"
    variable = build.build_flow_variable(config, sde)
  else:
    sde = sdes.VPSDE()
    true_mixture = analytic.eight_gaussians()
    score_fn = analytic.DiffusedMixture(true_mixture, sde)
    source = "exact score of the eight-Gaussian mixture, VP SDE"
    variable = lk.InTime()

  axis = np.linspace(-args.extent, args.extent, args.grid)
  xx, yy = np.meshgrid(axis, axis)
  points = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], axis=-1), jnp.float32)
  fn = jax.jit(jax.vmap(lambda x: lk.log_likelihood(sde, score_fn, x, key=None, variable=variable,
                                                    rtol=args.tol, atol=args.tol)))
  tic = time.perf_counter()
  out = jax.device_get(fn(points))
  seconds = time.perf_counter() - tic
  logp_ode = np.asarray(out.logp).reshape(xx.shape)

  plt = _common.pyplot()
  panels = 3 if true_mixture is not None else 1
  fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.4), squeeze=False)
  axes = axes[0]
  floor = -12.0  # log-density colour floor: the modes and the valleys between them stay visible
  payload = {"source": source, "grid": args.grid, "extent": args.extent, "tol": args.tol,
             "seconds": seconds, "nfe_mean": float(np.mean(out.nfe)),
             "nfe_max": int(np.max(out.nfe)), "all_success": bool(np.all(out.success))}
  kw = dict(extent=(-args.extent, args.extent, -args.extent, args.extent), origin="lower")
  if true_mixture is not None:
    logp_true = np.asarray(jax.vmap(true_mixture.log_prob)(points)).reshape(xx.shape)
    im = axes[0].imshow(np.maximum(logp_true, floor), vmin=floor, vmax=logp_true.max(), **kw)
    axes[0].set_title("true log density")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    ode_ax = axes[1]
    diff = logp_ode - logp_true
    mass = np.exp(logp_true)  # report the error where the data live, weighted by the density
    payload.update({
        "abs_error_max": float(np.abs(diff).max()),
        "abs_error_density_weighted": float(np.sum(np.abs(diff) * mass) / np.sum(mass)),
        "kl_true_to_ode_on_grid": float(np.sum(mass * -diff) / np.sum(mass)),
    })
    scale = max(float(np.abs(diff).max()), 1e-12)
    im = axes[2].imshow(diff, cmap="RdBu_r", vmin=-scale, vmax=scale, **kw)
    axes[2].set_title("ODE minus true (nats; N(0, I) prior, so far out\nthis includes the prior mismatch)")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
  else:
    ode_ax = axes[0]
    logp_true = None
  im = ode_ax.imshow(np.maximum(logp_ode, floor), vmin=floor,
                     vmax=(logp_true if logp_true is not None else logp_ode).max(), **kw)
  ode_ax.set_title(f"probability-flow ODE log density\n(NFE {payload['nfe_mean']:.0f} per point)")
  fig.colorbar(im, ax=ode_ax, fraction=0.046)
  fig.suptitle(source, fontsize=10)
  fig.tight_layout()
  _common.write(args.out, "likelihood_density", fig, payload)


if __name__ == "__main__":
  main()
