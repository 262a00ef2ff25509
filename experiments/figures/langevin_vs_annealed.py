"""Plain vs annealed Langevin dynamics on a 0.2/0.8 mixture (Song & Ermon 2019, Fig. 3).

  python experiments/figures/langevin_vs_annealed.py [--out=DIR] [--num=1280]

p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I). Both chains start uniformly on [-8, 8]^2 with the exact
score. Plain Langevin (1000 steps of 0.1 on the data score) keeps the split of its start between
the basins; annealed Langevin (10 levels from sigma = 20 to 1, 100 steps each) finds 0.2 / 0.8.
"""

import _common
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from absl import flags

from diffusion_jax import analytic, sdes
from diffusion_jax import samplers as S
from diffusion_jax.sampling import sample

flags.DEFINE_integer("num", 1280, "Chains per method (and exact samples).", lower_bound=2)
flags.DEFINE_integer("langevin_steps", 1000, "Steps of plain Langevin dynamics (step size 0.1).",
                     lower_bound=1)
flags.DEFINE_integer("steps_per_level", 100, "Annealed Langevin steps at each of its 10 noise "
                     "levels.", lower_bound=1)
flags.adopt_module_key_flags(_common)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  args = FLAGS

  gmm = analytic.GaussianMixture.create([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], 1.0)
  sde = sdes.VESDE(sigma_min=0.01, sigma_max=20.0)
  dm = analytic.DiffusedMixture(gmm, sde)
  x_init = jr.uniform(jr.key(0), (args.num, 2), minval=-8.0, maxval=8.0)
  keys = jr.split(jr.key(1), args.num)
  runs = {
      "langevin": (S.Langevin(step_size=0.1, num_steps=args.langevin_steps), jnp.array([0.1, 0.0])),
      "annealed_langevin": (S.AnnealedLangevin(step_lr=0.1, num_steps=args.steps_per_level),
                            sde.time_at_sigma(jnp.geomspace(20.0, 1.0, 11))),
  }
  samples, payload = {"exact": np.asarray(gmm.sample(jr.key(2), args.num))}, {}
  for name, (sampler, ts) in runs.items():
    fn = jax.jit(jax.vmap(lambda x, k: sample(sde, dm, sampler, ts, x, key=k, denoise_final=False).x))
    samples[name] = np.asarray(fn(x_init, keys))
  for name, x in samples.items():
    payload[name] = {"weight_of_small_mode": float(np.mean(x.sum(-1) < 0)), "num": len(x)}
  payload["true_weight_of_small_mode"] = 0.2
  payload["binomial_se"] = float(np.sqrt(0.2 * 0.8 / args.num))
  payload["langevin_steps"], payload["steps_per_level"] = args.langevin_steps, args.steps_per_level

  plt = _common.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(12, 4.8), sharex=True, sharey=True)
  titles = {"exact": "exact samples", "langevin": "Langevin dynamics",
            "annealed_langevin": "annealed Langevin (sigma 20 -> 1)"}
  for ax, name in zip(axes, ["exact", "langevin", "annealed_langevin"]):
    ax.scatter(*samples[name].T, s=3, alpha=0.5)
    w = payload[name]["weight_of_small_mode"]
    ax.set_title(f"{titles[name]}\nweight of lower-left mode {w:.2f} (true 0.20)")
    ax.set_xlim(-9, 9), ax.set_ylim(-9, 9), ax.set_aspect("equal")
    ax.set_xlabel("x1")
  axes[0].set_ylabel("x2")
  fig.tight_layout()
  _common.write(args.out, "langevin_vs_annealed", fig, payload)


if __name__ == "__main__":
  _common.run(main)
