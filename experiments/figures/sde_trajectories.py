"""Forward SDE, reverse SDE and probability-flow ODE trajectories of a 1-D mixture (Song et al. 2021, Fig. 1-2).

  python experiments/figures/sde_trajectories.py [--out=DIR] [--sde=vp|ve] [--paths=24] [--steps=500]

The background is the exact marginal density p_t(x) of the diffused mixture; the forward panel
simulates dx = f x dt + g dw with Euler-Maruyama from data, the reverse panels run the reverse SDE
(Euler-Maruyama) and the PF-ODE (Heun) from the prior with the exact score.
"""

import _common
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from absl import flags

from diffusion_jax import analytic, schedules, sdes
from diffusion_jax import samplers as S
from diffusion_jax.sampling import sample_batch
from diffusion_jax.simulate import simulate_forward

flags.DEFINE_enum("sde", "vp", ["vp", "ve"], "The SDE: vp (Song et al. 2021's VP, beta 0.1 to 20) or "
                  "ve (sigma 0.01 to 5).")
flags.DEFINE_integer("paths", 24, "Trajectories drawn per panel.", lower_bound=1)
flags.DEFINE_integer("steps", 500, "Euler-Maruyama steps of the forward and reverse SDE panels "
                     "(the ODE panel takes a fifth as many Heun steps).", lower_bound=1)
flags.DEFINE_integer("num", 4000, "Samples for the end-point statistics in the JSON.", lower_bound=2)
flags.DEFINE_integer("grid", 200, "Resolution of the exact density in t (and 1.5x that in x).",
                     lower_bound=2)
flags.adopt_module_key_flags(_common)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  args = FLAGS
  sde = sdes.VPSDE() if args.sde == "vp" else sdes.VESDE(sigma_min=0.01, sigma_max=5.0)
  gmm = analytic.GaussianMixture.create([0.35, 0.65], [[-1.5], [1.2]], [[0.04], [0.09]])
  dm = analytic.DiffusedMixture(gmm, sde)
  t_min, n = 1e-3, args.steps
  n_ode = max(1, n // 5)
  lim = 3.5 if args.sde == "vp" else 7.0

  # Exact density on a (t, x) grid.
  t_grid = np.linspace(t_min, sde.T, args.grid)
  x_grid = np.linspace(-lim, lim, args.grid * 3 // 2)
  logp = jax.vmap(lambda t: jax.vmap(lambda x: dm.log_prob(jnp.array([x]), t))(x_grid))(t_grid)
  density = np.exp(np.asarray(logp)).T

  ts_up = jnp.linspace(t_min, sde.T, n + 1)
  x0 = gmm.sample(jr.key(0), args.paths)
  fwd = jax.vmap(lambda x, k: simulate_forward(sde, x, ts_up, key=k))(x0, jr.split(jr.key(1), args.paths))
  ts_down = schedules.uniform_time(sde, n, t_min)
  rev = sample_batch(sde, dm, S.EulerMaruyama(), ts_down, key=jr.key(2), num=args.paths, shape=(1,),
                     save_trajectory=True, denoise_final=False)
  ode = sample_batch(sde, dm, S.Heun(), schedules.uniform_time(sde, n_ode, t_min), key=jr.key(2),
                     num=args.paths, shape=(1,), save_trajectory=True, denoise_final=False)
  # Many reverse samples for the end-point statistics reported in the JSON.
  many = sample_batch(sde, dm, S.EulerMaruyama(), ts_down, key=jr.key(3), num=args.num, shape=(1,))
  many_ode = sample_batch(sde, dm, S.Heun(), schedules.uniform_time(sde, n_ode, t_min), key=jr.key(3),
                          num=args.num, shape=(1,))

  plt = _common.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
  extent = [t_min, sde.T, -lim, lim]
  panels = [("forward SDE (data to noise)", np.asarray(ts_up), np.asarray(fwd[..., 0])),
            ("reverse SDE, Euler-Maruyama (noise to data)", np.asarray(ts_down), np.asarray(rev.trajectory[..., 0])),
            ("probability-flow ODE, Heun", np.asarray(schedules.uniform_time(sde, n_ode, t_min)),
             np.asarray(ode.trajectory[..., 0]))]
  vmax = np.percentile(density, 99)
  for ax, (title, ts, paths) in zip(axes, panels):
    im = ax.imshow(density, origin="lower", aspect="auto", extent=extent, cmap="Blues", vmax=vmax)
    ax.plot(ts, paths.T, color="tab:red", lw=0.6, alpha=0.8)
    ax.set_xlim(t_min, sde.T), ax.set_ylim(-lim, lim)
    ax.set_xlabel("time t"), ax.set_title(title)
  axes[0].set_ylabel("x")
  bar = fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.01, extend="max")
  bar.set_label("exact density p_t(x); the arrow: above its 99th percentile")
  fig.suptitle(f"1-D mixture under the {args.sde.upper()} SDE: exact p_t(x) and trajectories")
  exact = gmm.sample(jr.key(4), args.num)[:, 0]
  end_stats = lambda x: {"mean": float(np.mean(x)), "std": float(np.std(x)),
                         "weight_left": float(np.mean(x < 0))}
  payload = {"sde": args.sde, "t_min": t_min, "steps": n, "ode_steps": n_ode, "num": args.num,
             "exact": end_stats(np.asarray(exact)),
             "reverse_sde": end_stats(np.asarray(many.x[:, 0])),
             "probability_flow_ode": end_stats(np.asarray(many_ode.x[:, 0])),
             "forward_end": end_stats(np.asarray(fwd[:, -1, 0])),
             "prior_std": sde.prior_std()}
  _common.write(args.out, f"sde_trajectories_{args.sde}", fig, payload)


if __name__ == "__main__":
  _common.run(main)
