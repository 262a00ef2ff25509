"""Probability-flow ODE log-likelihood error against solver tolerance and against NFE.

  python experiments/figures/likelihood_tolerance.py [--out=DIR] [--num=64] [--dims=2,16]

Gaussian mixtures with the exact score (the analytic oracle) and the exact divergence; the prior is
the exact marginal at T, so the error is the ODE integration error alone: mean over examples of
|log p_ode - log p_t_min| / D. VP and sub-VP are integrated in t, VE in t and in the EDM variable
sigma. Dashed lines: issue 4's targets (1e-5 nats/dim within 130 NFE for VP and 165 for VE; the
low-budget setting of 60 NFE at about 3e-3).
"""

import functools

import _common
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from absl import app, flags

from diffusion_jax import analytic, sdes
from diffusion_jax import likelihood as lk

TOLS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
CASES = (("vp", sdes.VPSDE(), "t"), ("subvp", sdes.SubVPSDE(), "t"), ("ve", sdes.VESDE(), "t"),
         ("ve", sdes.VESDE(), "sigma"))
VARIABLES = {"t": lk.InTime(), "sigma": lk.InSigma()}
SDE_NAMES = {"vp": "VP", "subvp": "sub-VP", "ve": "VE"}

flags.DEFINE_integer("num", 64, "Test examples per problem.", lower_bound=1)
flags.DEFINE_string("dims", "2,16", "Comma-separated data dimensions (2: eight Gaussians; "
                    "others: a random 4-component mixture).")
flags.DEFINE_string("tols", ",".join(f"{t:g}" for t in TOLS),
                    "Comma-separated solver tolerances (rtol = atol), loosest first.")
flags.adopt_module_key_flags(_common)
FLAGS = flags.FLAGS


def mixture(dim):
  """The benchmark problems of benchmarks/likelihood.py."""
  if dim == 2:
    return analytic.eight_gaussians()
  return analytic.random_mixture(jr.key(dim), dim)


@functools.partial(jax.jit, static_argnames=("sde", "variable"))
def solve(x, oracle, tol, *, sde, variable):
  return jax.vmap(lambda x: lk.log_likelihood(
      sde, oracle, x, key=None, variable=variable, rtol=tol, atol=tol,
      prior_logp_fn=lambda z: oracle.log_prob(z, sde.T)))(x)


def main(argv):
  del argv
  args = FLAGS
  dims = _common.int_list(args.dims, "dims")
  try:
    tols = tuple(float(v) for v in args.tols.split(","))
  except ValueError:
    raise app.UsageError(f"--tols must be comma-separated numbers, got {args.tols!r}.") from None
  if not all(0 < t < 1 for t in tols):
    raise app.UsageError(f"--tols must lie in (0, 1), got {args.tols!r}.")

  curves = []
  for name, sde, var in CASES:
    for dim in dims:
      oracle = analytic.DiffusedMixture(mixture(dim), sde)
      t_min = sde.t_min_default
      x = oracle.sample(jr.key(1), t_min, args.num)
      true = np.asarray(jax.vmap(lambda x: oracle.log_prob(x, t_min))(x))
      points = []
      for tol in tols:
        out = solve(x, oracle, jnp.asarray(tol), sde=sde,
                    variable=VARIABLES[var])
        err = np.abs(np.asarray(out.logp) - true) / dim
        points.append({"tol": tol, "error_mean": float(err.mean()), "error_max": float(err.max()),
                       "nfe_mean": float(np.mean(out.nfe))})
      curves.append({"sde": name, "variable": var, "dim": dim, "points": points})
      print(f"{name:5s} [{var:5s}] D={dim:2d}: "
            + " ".join(f"{p['tol']:.0e}:{p['error_mean']:.1e}@{p['nfe_mean']:.0f}" for p in points))

  plt = _common.pyplot()
  fig, (ax_tol, ax_nfe) = plt.subplots(1, 2, figsize=(12, 4.8))
  colors = {("vp", "t"): "C0", ("subvp", "t"): "C2", ("ve", "t"): "C3", ("ve", "sigma"): "C1"}
  styles = {2: "-", 16: "--", 64: ":"}
  for c in curves:
    tol = [p["tol"] for p in c["points"]]
    err = [p["error_mean"] for p in c["points"]]
    nfe = [p["nfe_mean"] for p in c["points"]]
    label = f"{SDE_NAMES[c['sde']]}, integrated in {c['variable']}, D={c['dim']}"
    kw = dict(color=colors[(c["sde"], c["variable"])], ls=styles.get(c["dim"], "-."), marker="o",
              ms=3, label=label)
    ax_tol.loglog(tol, err, **kw)
    ax_nfe.semilogy(nfe, err, **kw)
  ax_tol.loglog(tols, tols, color="gray", lw=0.8, ls=":", label="error = tolerance")
  ax_tol.set_xlabel("solver tolerance (relative = absolute)")
  ax_tol.legend(fontsize=7)
  ax_tol.set_ylabel("ODE error, nats/dim (mean over examples)")
  ax_tol.invert_xaxis()
  for level in (1e-5, 3e-3):
    ax_nfe.axhline(level, color="gray", lw=0.8, ls="--")
  for nfe_limit, color, what in ((60, "gray", "low-budget target"), (130, "C0", "VP target"),
                                 (165, "C3", "VE target")):
    ax_nfe.axvline(nfe_limit, color=color, lw=0.8, ls="--", label=f"{what}: {nfe_limit} NFE")
  ax_nfe.set_xlabel("NFE per example (mean)")
  ax_nfe.set_ylabel("ODE error, nats/dim")
  ax_nfe.legend(fontsize=7, ncol=2)
  # A zero error (exact to float precision) has no place on a log axis: say how many were left out
  # rather than drawing them on an invented floor (the JSON holds every value).
  zeros = sum(p["error_mean"] == 0 for c in curves for p in c["points"])
  if zeros:
    ax_nfe.set_title(f"{zeros} points with zero error are not drawn", fontsize=8)
  fig.suptitle("Probability-flow ODE likelihood with the exact mixture score (diffrax "
               "Tsit5, per-example steps)")
  fig.tight_layout()
  _common.write(args.out, "likelihood_tolerance", fig,
                {"num_examples": args.num, "tolerances": tols, "curves": curves})


if __name__ == "__main__":
  _common.run(main)
