"""A 2-D density computed by the probability-flow ODE, next to the true density.

  python experiments/figures/likelihood_density.py [--out=DIR] [--grid=64]
  # the density of a trained model instead of the exact score (its config is read from the workdir):
  python experiments/figures/likelihood_density.py --workdir=DIR_OF_A_RUN [--checkpoint_step=N]

Every grid point is one example of ``log_likelihood`` (its own adaptive steps). With the exact score
of the eight-Gaussian mixture the ODE density must reproduce the true one (the right panel shows
the difference); with a trained model it shows what the model learned. The true density is the
data law's, where it is a known mixture.
"""

import time

import _common
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from diffusion_jax import analytic, sdes
from diffusion_jax import likelihood as lk

flags.DEFINE_integer("grid", 64, "Points per axis of the square grid (one ODE solve each).",
                     lower_bound=2)
flags.DEFINE_float("extent", 3.0, "Half-width of the square [-extent, extent]^2.", lower_bound=0.0)
flags.DEFINE_float("tol", 1e-5, "rtol = atol of the adaptive ODE solver.", lower_bound=0.0)
flags.DEFINE_string("workdir", None, "A training run's directory: plot its model's density "
                    "(default: none, the exact score of the eight-Gaussian mixture).")
config_flags.DEFINE_config_file(
    "config", None, "With --workdir: a config file; default: the config saved in the workdir. "
    "Evaluation fields may be overridden (--config.likelihood.variable=t); trained ones may not.")
flags.DEFINE_integer("checkpoint_step", None, "With --workdir: the checkpoint (default: the latest).")
flags.adopt_module_key_flags(_common)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  args = FLAGS
  if (args.config is not None or args.checkpoint_step is not None) and not args.workdir:
    raise app.UsageError("--config and --checkpoint_step need --workdir.")
  if not args.extent > 0 or not args.tol > 0:
    raise app.UsageError(f"--extent and --tol must be > 0, got {args.extent} and {args.tol}.")

  if args.workdir:
    from experiments import build, validate, workdir
    from experiments import run as run_lib

    try:
      config = workdir.config_from_flags(FLAGS["config"], args.workdir)
      validate.validate(config, "eval_likelihood")
      step = workdir.check_checkpoint_step(args.workdir, args.checkpoint_step)
    except (validate.ConfigError, workdir.WorkdirError) as e:
      raise app.UsageError(str(e)) from None
    score_fn, sde, state = run_lib.restore_model(config, args.workdir, step=step)
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
  # Colour floor of the log density: the modes and the valleys between them stay visible; values
  # below it take the floor's colour (the colour bar's arrow says so), the JSON has the true ones.
  floor = -12.0
  payload = {"source": source, "sde": type(sde).__name__, "variable": type(variable).__name__,
             "grid": args.grid, "extent": args.extent, "tol": args.tol,
             "seconds": seconds, "nfe_mean": float(np.mean(out.nfe)),
             "nfe_max": int(np.max(out.nfe)), "all_success": bool(np.all(out.success))}
  kw = dict(extent=(-args.extent, args.extent, -args.extent, args.extent), origin="lower")
  if true_mixture is not None:
    logp_true = np.asarray(jax.vmap(true_mixture.log_prob)(points)).reshape(xx.shape)
    im = axes[0].imshow(np.maximum(logp_true, floor), vmin=floor, vmax=logp_true.max(), **kw)
    axes[0].set_title("true log density")
    fig.colorbar(im, ax=axes[0], fraction=0.046, extend="min").set_label("log p(x), nats")
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
    axes[2].set_title("ODE minus true (N(0, I) prior, so far out\nthis includes the prior mismatch)")
    fig.colorbar(im, ax=axes[2], fraction=0.046).set_label("log p_ODE(x) - log p(x), nats")
  else:
    ode_ax = axes[0]
    logp_true = None
  im = ode_ax.imshow(np.maximum(logp_ode, floor), vmin=floor,
                     vmax=(logp_true if logp_true is not None else logp_ode).max(), **kw)
  ode_ax.set_title(f"probability-flow ODE log density\n(NFE {payload['nfe_mean']:.0f} per point)")
  fig.colorbar(im, ax=ode_ax, fraction=0.046, extend="min").set_label("log p_ODE(x), nats")
  for ax in axes:
    ax.set_xlabel("x1")
  axes[0].set_ylabel("x2")
  fig.suptitle(source, fontsize=10)
  fig.tight_layout()
  _common.write(args.out, "likelihood_density", fig, payload)


if __name__ == "__main__":
  _common.run(main)
