"""Sample quality vs NFE for every sampler on an exact 2-D Gaussian-mixture problem.

  python experiments/figures/quality_vs_nfe.py [--out DIR] [--sde vp|subvp|ve] [--num N]

Left: energy distance to exact samples (the two-sample floor shaded); right: RMS path error of
the deterministic samplers against a converged ODE solve from the same initial noise. Each sampler
runs on its own grid as in benchmarks/samplers.py (which holds the full sweep and the peers).
"""

import argparse
import sys

import _common
import jax.numpy as jnp
import jax.random as jr

sys.path.insert(0, str(_common.pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
from samplers import GRIDS, SAMPLERS, floor_band_hi, make_problem, steps_for, t_min_of  # noqa: E402

from diffusion_jax import analytic, metrics, sdes  # noqa: E402
from diffusion_jax import samplers as S  # noqa: E402
from diffusion_jax.sampling import sample_batch  # noqa: E402

SHOWN = ["ancestral", "pc_langevin", "edm_stochastic", "euler_ode", "ddim", "heun", "dpm_solver_2m",
         "dpm_solver_3m", "unipc", "ipndm"]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=_common.default_out())
  parser.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve"])
  parser.add_argument("--num", type=int, default=2000)
  parser.add_argument("--nfes", default="5,10,20,50,100")
  args = parser.parse_args()
  nfes = [int(v) for v in args.nfes.split(",")]
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
  for name in SHOWN:
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
  # The energy distance is unbiased, so exact-vs-exact values scatter around 0: shade the band
  # benchmarks/samplers.py judges samplers by (kept above the log axis' lower end).
  band_hi = max(floor_band_hi(floors), 1e-5)
  ax_e.axhspan(1e-5, band_hi, color="0.85", label="two-sample floor band")
  colors = dict(zip(SHOWN, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2))
  for name, res in results.items():
    nfe = [r["nfe"] for r in res["rows"]]
    ax_e.plot(nfe, [max(r["energy"], 1e-5) for r in res["rows"]], "o-", label=name, ms=3,
              color=colors[name])
    if "path_error" in res["rows"][0]:
      ax_p.plot(nfe, [r["path_error"] for r in res["rows"]], "o-", label=name, ms=3,
                color=colors[name])
  for ax, ylabel in ((ax_e, "energy distance to exact samples (clipped at 1e-5)"),
                     (ax_p, "RMS path error vs converged ODE")):
    ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("NFE"), ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
  ax_e.legend(fontsize=7, ncol=2)
  ax_p.legend(fontsize=7)
  fig.suptitle(f"2-D mixture, {args.sde.upper()} SDE, {args.num} samples")
  fig.tight_layout()
  _common.write(args.out, f"quality_vs_nfe_{args.sde}", fig,
                {"sde": args.sde, "num": args.num, "floor_energy": floors, "samplers": results})


if __name__ == "__main__":
  main()
