"""Sample quality vs NFE for every sampler on an exact 2-D Gaussian-mixture problem.

  python experiments/figures/quality_vs_nfe.py [--out=DIR] [--sde=vp|subvp|ve] [--num=2000] \
      [--nfes=5,10,20,50,100] [--samplers=ddim,heun,...]

Left: energy distance to exact samples (the two-sample floor shaded); right: RMS path error of
the deterministic samplers against a converged ODE solve from the same initial noise. Each sampler
runs on its own grid as in benchmarks/samplers.py (which holds the full sweep and the peers).
"""

import sys

import _common
import jax.numpy as jnp
import jax.random as jr
from absl import app, flags

sys.path.insert(0, str(_common.pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
from samplers import GRIDS, SAMPLERS, floor_band_hi, make_problem, steps_for, t_min_of  # noqa: E402

from diffusion_jax import analytic, metrics, sdes  # noqa: E402
from diffusion_jax import samplers as S  # noqa: E402
from diffusion_jax.sampling import sample_batch  # noqa: E402

SHOWN = ["ancestral", "pc_langevin", "edm_stochastic", "euler_ode", "ddim", "heun", "dpm_solver_2m",
         "dpm_solver_3m", "unipc", "ipndm"]
# Legend names: the algorithm and its paper's name, not the benchmark's keys.
DISPLAY = {
    "ancestral": "ancestral sampling (DDPM)",
    "pc_langevin": "predictor-corrector (reverse diffusion + Langevin)",
    "edm_stochastic": "EDM stochastic sampler",
    "euler_ode": "Euler (probability-flow ODE)",
    "ddim": "DDIM",
    "heun": "Heun (EDM grid)",
    "dpm_solver_2m": "DPM-Solver++(2M)",
    "dpm_solver_3m": "DPM-Solver++(3M)",
    "unipc": "UniPC-2",
    "ipndm": "iPNDM",
}

flags.DEFINE_enum("sde", "vp", ["vp", "subvp", "ve"], "The SDE of the problem.")
flags.DEFINE_integer("num", 2000, "Samples per sampler and NFE (and exact samples).", lower_bound=2)
flags.DEFINE_string("nfes", "5,10,20,50,100", "Comma-separated budgets of network evaluations.")
flags.DEFINE_list("samplers", SHOWN, f"Samplers to draw, any of: {', '.join(SHOWN)}.")
flags.adopt_module_key_flags(_common)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  args = FLAGS
  nfes = _common.int_list(args.nfes, "nfes")
  unknown = [name for name in args.samplers if name not in SHOWN]
  if unknown or not args.samplers:
    raise app.UsageError(f"--samplers must list some of {', '.join(SHOWN)}; unknown: {unknown}.")
  sde = {"vp": sdes.VPSDE(), "subvp": sdes.SubVPSDE(), "ve": sdes.VESDE()}[args.sde]
  gmm = make_problem(2)
  dm = analytic.DiffusedMixture(gmm, sde)
  t_min = t_min_of(sde)
  exact = gmm.sample(jr.key(10_000), args.num)
  floors = [float(metrics.energy_distance(gmm.sample(jr.key(20_000 + s), args.num), exact))
            for s in range(5)]
  converged = sample_batch(sde, dm, S.AdaptiveODE(rtol=1e-6, atol=1e-6), jnp.array([sde.T, t_min]),
                           key=jr.key(0), num=args.num, shape=(2,), denoise_final=False).x
  results = {}
  for name in args.samplers:
    sampler, grid, per_step, denoise = SAMPLERS[name]
    rows = []
    for nfe in nfes:
      ts = GRIDS[grid](sde, steps_for(nfe, per_step, denoise), t_min)
      out = sample_batch(sde, dm, sampler, ts, key=jr.key(0), num=args.num, shape=(2,),
                         denoise_final=denoise)
      row = {"nfe": int(out.nfe.max()), "energy": float(metrics.energy_distance(out.x, exact))}
      if not sampler.stochastic:
        row["path_error"] = float(jnp.sqrt(jnp.mean(jnp.sum((out.x - converged) ** 2, -1))))
      rows.append(row)
    results[name] = {"grid": grid, "rows": rows}
    print(name, [(r["nfe"], round(r["energy"], 5)) for r in rows], flush=True)

  plt = _common.pyplot()
  fig, (ax_e, ax_p) = plt.subplots(1, 2, figsize=(12, 4.8))
  # The energy distance is unbiased, so exact-vs-exact values scatter around 0 and may be
  # negative: a symmetric-log axis (linear within the floor band, logarithmic beyond) shows every
  # value where it is, with the band benchmarks/samplers.py judges samplers by shaded.
  band_hi = floor_band_hi(floors)
  linthresh = max(band_hi, 1e-6)
  ax_e.axhspan(min(min(floors), -band_hi), band_hi, color="0.85",
               label="two-sample floor band (exact vs exact)")
  ax_e.axhline(0.0, color="0.5", lw=0.6)
  colors = dict(zip(SHOWN, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2))
  for name, res in results.items():
    nfe = [r["nfe"] for r in res["rows"]]
    ax_e.plot(nfe, [r["energy"] for r in res["rows"]], "o-", label=DISPLAY[name], ms=3,
              color=colors[name])
    if "path_error" in res["rows"][0]:
      ax_p.plot(nfe, [r["path_error"] for r in res["rows"]], "o-", label=DISPLAY[name], ms=3,
                color=colors[name])
  ax_e.set_yscale("symlog", linthresh=linthresh)
  ax_p.set_yscale("log")
  for ax, ylabel in ((ax_e, f"energy distance to exact samples\n(symmetric log axis, linear "
                            f"within +-{linthresh:.1e})"),
                     (ax_p, "RMS distance to a converged ODE solve\nfrom the same initial noise")):
    ax.set_xscale("log"), ax.set_xlabel("network evaluations (NFE)"), ax.set_ylabel(ylabel)
    ticks = sorted({r["nfe"] for res in results.values() for r in res["rows"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])  # plain numbers, not 4 x 10^0
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
  ax_e.legend(fontsize=7, ncol=2)
  ax_p.legend(fontsize=7)
  fig.suptitle(f"2-D Gaussian mixture, {args.sde.upper().replace('SUBVP', 'sub-VP')} SDE, exact "
               f"score, {args.num} samples per point")
  fig.tight_layout()
  _common.write(args.out, f"quality_vs_nfe_{args.sde}", fig,
                {"sde": args.sde, "num": args.num, "floor_energy": floors,
                 "floor_band_hi": band_hi, "samplers": results})


if __name__ == "__main__":
  _common.run(main)
