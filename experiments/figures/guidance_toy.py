"""Guidance and constraints on 2-D and 3-D Gaussian mixtures, against exact answers.

  python experiments/figures/guidance_toy.py [--out=DIR] [--num=2000] [--steps=200]

Three panels of numbers, every score an exact one (the mixtures' densities, classifiers and
conditionals are closed form):

1. Classifier-free guidance strength on three overlapping classes (VP, exact conditional and
   unconditional scores): for gamma in --gammas, the class log-likelihood log p(y | x), the share
   of samples classified as y with p > 0.9, and the share inside the class's 50% highest-density
   region of p(x | y), averaged over the classes.
2. Autoguidance against classifier-free guidance on ``analytic.tree_mixture`` (two branching
   classes, the toy of Karras et al. 2024). The "main model" is the exact score of the tree with
   every variance widened by --blur (a model that spreads its mass, as a trained one does), its
   guide the same with twice the blur (a weaker model); CFG uses the main model's conditional and
   unconditional scores. At equal gamma: the distribution of the samples' exact class
   log-density log p(x | y) against the truth's (1-D Wasserstein distance), and the energy
   distance of the samples to exact class samples.
3. CFG++ (Chung et al. 2024) on the same three classes, DDIM on --cfgpp_steps steps: the same
   three numbers against its lambda (--cfgpp_lambdas), with the CFG strength each step's lambda
   amounts to, gamma = lambda / (1 - e^{-h}) (samplers/cfgpp.py), over the grid.
4. Inpainting a 3-D mixture with the first coordinate observed, VP: plain replacement, RePaint
   (10 resamples) and DPS at equal NFE, against the exact conditional p(x_2, x_3 | x_1 = y): the
   energy distance to exact conditional samples next to its floor, and how far the observed
   coordinate ends from y.

The sampler is DDPM's ancestral sampler on a uniform time grid of --steps steps (t_min 1e-3),
except for CFG++, which is defined for DDIM-type steps.
"""

import _common
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.stats
from absl import flags

from diffusion_jax import analytic, guidance, metrics, schedules, sdes
from diffusion_jax import samplers as S
from diffusion_jax.sampling import sample_batch

flags.DEFINE_integer("num", 2000, "Samples per point (and exact samples per reference).",
                     lower_bound=16)
flags.DEFINE_integer("steps", 200, "Ancestral sampler steps (NFE = steps + 1; RePaint takes "
                     "steps / 10 steps of 10 resamples, DPS steps / 2 steps of 2 evaluations).",
                     lower_bound=20)
flags.DEFINE_string("gammas", "1,1.5,2,3,4", "Guidance strengths gamma (= 1 + w) of panels 1 and 2.")
flags.DEFINE_string("cfgpp_lambdas", "0,0.05,0.1,0.2,0.4,0.8", "CFG++ strengths lambda.")
flags.DEFINE_integer("cfgpp_steps", 50, "CFG++'s DDIM steps (its strength depends on them).",
                     lower_bound=2)
flags.DEFINE_float("blur", 0.003, "Variance added to every component of the tree for the main "
                   "model (the guide gets twice as much).", lower_bound=0.0)
flags.DEFINE_float("dps_zeta", 0.1, "DPS step size zeta (Chung et al. 2023).", lower_bound=0.0)
flags.adopt_module_key_flags(_common)
FLAGS = flags.FLAGS

VP = sdes.VPSDE()
T_MIN = 1e-3


def _run(score, sampler, steps, num, key, cond=None, shape=(2,)):
  ts = schedules.uniform_time(VP, steps, T_MIN)
  return sample_batch(VP, score, sampler, ts, key=key, num=num, shape=shape, cond=cond)


def _energy_floor(draw, reference, seeds=range(100, 105)):
  nulls = np.array([float(metrics.energy_distance(draw(jr.key(s)), reference)) for s in seeds])
  return float(nulls.mean()), float(nulls.std())


def strength_sweep(num, steps, gammas, sampler=S.Ancestral()):
  """Panel 1 (and, with ``sampler=S.CFGPlusPlus()`` and lambdas for gammas, panel 3)."""
  mix = analytic.random_mixture(jr.key(0), 2, num_components=3, mean_scale=0.8, min_variance=0.2,
                                max_variance=0.5, min_weight=0.2, max_weight=1.0)
  exact = analytic.ConditionalDiffusedMixture(mix, VP)
  null = jnp.int32(mix.num_components)
  rows = {gamma: {"class_log_likelihood": [], "confident": [], "hdr50": []} for gamma in gammas}
  for y in range(mix.num_components):
    component = mix.conditioned(y)
    truth = np.asarray(jax.vmap(component.log_prob)(component.sample(jr.key(5), num)))
    threshold = np.percentile(truth, 50)
    for gamma in gammas:
      x = _run(guidance.ClassifierFreeGuidance(exact, null, gamma), sampler, steps, num,
               jr.key(6), cond=jnp.full((num,), y, jnp.int32)).x
      log_py = np.asarray(jax.vmap(lambda v: exact.class_log_probs(v, 0.0))(x))[:, y]
      row = rows[gamma]
      row["class_log_likelihood"].append(float(log_py.mean()))
      row["confident"].append(float(np.mean(log_py > np.log(0.9))))
      row["hdr50"].append(float(np.mean(np.asarray(jax.vmap(component.log_prob)(x)) > threshold)))
  return {"gammas": gammas, "per_class": {str(g): r for g, r in rows.items()},
          "mean": {key: [float(np.mean(rows[g][key])) for g in gammas]
                   for key in ("class_log_likelihood", "confident", "hdr50")}}


def cfgpp_sweep(num, steps, lambdas):
  """Panel 3: CFG++ DDIM, and the CFG gamma each of its steps amounts to at each lambda."""
  sweep = strength_sweep(num, steps, lambdas, S.CFGPlusPlus(S.DDIM()))
  h = np.diff(0.5 * np.asarray(VP.log_snr(schedules.uniform_time(VP, steps, T_MIN)), np.float64))
  per_step = 1.0 / -np.expm1(-h)  # gamma / lambda of each step
  sweep["equivalent_cfg_gamma_per_lambda"] = {"min": float(per_step.min()),
                                              "median": float(np.median(per_step)),
                                              "max": float(per_step.max())}
  sweep["sampler"] = f"CFGPlusPlus(DDIM()), {steps} uniform time steps, t_min {T_MIN:g}"
  return sweep


def tree_comparison(num, steps, gammas, blur):
  mix, classes = analytic.tree_mixture()
  widened = lambda d: analytic.GaussianMixture(mix.weights, mix.means, mix.variances + d)
  truth = analytic.ConditionalDiffusedMixture(mix, VP, None, classes)
  main = truth.replace(mixture=widened(blur))
  guide = truth.replace(mixture=widened(2 * blur))
  null = jnp.int32(truth.num_classes)
  y = 0
  target = truth.replace(cond=jnp.int32(y)).class_mixture()
  log_p = lambda x: np.asarray(jax.vmap(target.log_prob)(jnp.asarray(x)))
  reference = target.sample(jr.key(5), num)
  reference_log_p = log_p(reference)
  labels = jnp.full((num,), y, jnp.int32)
  floor_w1 = float(scipy.stats.wasserstein_distance(log_p(target.sample(jr.key(7), num)),
                                                    reference_log_p))
  energy_floor = _energy_floor(lambda k: target.sample(k, num), reference)

  def score(fn):
    x = np.asarray(_run(fn, S.Ancestral(), steps, num, jr.key(1), cond=labels).x)
    lp = log_p(x)
    return (x, lp), {"w1_log_density": float(scipy.stats.wasserstein_distance(lp, reference_log_p)),
               "energy_distance": float(metrics.energy_distance(x, reference)),
               "log_density_percentiles_5_50_95": np.percentile(lp, [5, 50, 95]).tolist()}

  samples, table = {}, {}
  samples["exact score"], table["exact score"] = score(truth)
  samples["main model"], table["main model"] = score(main)
  for gamma in gammas:
    if gamma == 1.0:
      continue
    samples[f"CFG {gamma:g}"], table[f"CFG {gamma:g}"] = score(
        guidance.ClassifierFreeGuidance(main, null, gamma))
    samples[f"autoguidance {gamma:g}"], table[f"autoguidance {gamma:g}"] = score(
        guidance.Autoguidance(main, guide, gamma))
  return samples, reference, reference_log_p, {
      "blur": blur, "class": y, "rows": table, "w1_floor": floor_w1,
      "energy_floor_mean_std": energy_floor,
      "truth_log_density_percentiles_5_50_95": np.percentile(reference_log_p, [5, 50, 95]).tolist()}


def inpainting(num, steps, zeta):
  mix = analytic.random_mixture(jr.key(4), 3, num_components=4, min_variance=0.02, max_variance=0.1)
  dm = analytic.DiffusedMixture(mix, VP)
  known = np.array([True, False, False])
  value = jnp.array([float(mix.means[0, 0]) + 0.1, 0.0, 0.0])
  exact = mix.given_coordinates(known, value)
  reference = exact.sample(jr.key(9), num)
  floor = _energy_floor(lambda k: exact.sample(k, num), reference)
  mask = jnp.asarray(known, jnp.float32)
  measure = jax.tree_util.Partial(lambda x: x[:1])
  methods = {
      "replacement": (S.Inpaint(S.Ancestral(), mask, value), steps),
      "RePaint x10": (S.RePaint(S.Inpaint(S.Ancestral(), mask, value), 10), steps // 10),
      f"DPS zeta={zeta:g}": (S.PosteriorSampling(S.Ancestral(), measure, value[:1], zeta), steps // 2),
  }
  rows = {}
  for name, (sampler, n_steps) in methods.items():
    out = _run(dm, sampler, n_steps, num, jr.key(1), shape=(3,))
    x = np.asarray(out.x)
    rows[name] = {"steps": n_steps, "nfe": int(out.nfe[0]),
                  "energy_distance": float(metrics.energy_distance(x[:, 1:], reference)),
                  "observed_abs_error_mean": float(np.mean(np.abs(x[:, 0] - float(value[0]))))}
  return {"observed_value": float(value[0]), "floor_mean_std": floor, "rows": rows,
          "exact_conditional_weights": np.asarray(exact.weights).tolist()}


def _strength_panel(ax, strengths, sweep, xlabel, title):
  """Panels 1 and 3: the confident and core shares, and (right axis) the class log-likelihood."""
  for key, label in (("confident", "share with p(y | x) > 0.9"),
                     ("hdr50", "share in p(x | y)'s 50% region")):
    ax.plot(strengths, sweep["mean"][key], "o-", label=label)
  ax.axhline(0.5, color="grey", lw=0.8, ls=":")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("share of samples")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  ax2 = ax.twinx()
  ax2.plot(strengths, sweep["mean"]["class_log_likelihood"], "s--", color="C3")
  ax2.set_ylabel("class log-likelihood log p(y | x)", color="C3")


def main(argv):
  del argv
  gammas = _common.float_list(FLAGS.gammas, "gammas")
  num, steps = FLAGS.num, FLAGS.steps
  sweep = strength_sweep(num, steps, gammas)
  lambdas = _common.float_list(FLAGS.cfgpp_lambdas, "cfgpp_lambdas")
  cfgpp = cfgpp_sweep(num, FLAGS.cfgpp_steps, lambdas)
  samples, reference, reference_log_p, tree = tree_comparison(num, steps, gammas, FLAGS.blur)
  inpaint = inpainting(num, steps, FLAGS.dps_zeta)

  plt = _common.pyplot()
  fig = plt.figure(figsize=(20, 8.5))
  grid = fig.add_gridspec(2, 5)
  _strength_panel(fig.add_subplot(grid[0, 0]), gammas, sweep, "guidance strength gamma (= 1 + w)",
                  "CFG on 3 overlapping classes (mean over classes)")
  ratio = cfgpp["equivalent_cfg_gamma_per_lambda"]
  _strength_panel(fig.add_subplot(grid[0, 4]), lambdas, cfgpp, "CFG++ lambda",
                  f"CFG++, DDIM {FLAGS.cfgpp_steps} steps: each step is CFG at gamma = "
                  f"{ratio['min']:.0f}-{ratio['max']:.0f} x lambda")

  shown = ["exact score", "main model"]
  middle = [g for g in gammas if g != 1.0][len([g for g in gammas if g != 1.0]) // 2]
  shown += [f"CFG {middle:g}", f"autoguidance {middle:g}"]
  ax = fig.add_subplot(grid[0, 1])
  ax.scatter(*np.asarray(reference).T, s=0.5, color="k")
  ax.set_title("tree class 0: exact samples", fontsize=9)
  for i, name in enumerate(shown[1:]):
    ax = fig.add_subplot(grid[0, 2 + i] if i < 2 else grid[1, 0])
    ax.scatter(*samples[name][0].T, s=0.5)
    ax.set_title(f"{name}: W1(log p) {tree['rows'][name]['w1_log_density']:.3f}", fontsize=9)
  for ax in fig.axes[4:]:
    ax.set_xlim(-0.6, 2.2)
    ax.set_ylim(-1.3, 1.5)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")

  ax = fig.add_subplot(grid[1, 1])
  bins = np.linspace(np.percentile(reference_log_p, 0.5) - 2, np.max(reference_log_p) + 0.5, 50)
  ax.hist(reference_log_p, bins, histtype="step", color="k", label="truth", density=True)
  for name in shown[1:]:
    ax.hist(np.clip(samples[name][1], bins[0], None), bins, histtype="step", label=name,
            density=True)
  ax.set_xlabel("exact class log-density log p(x | y) (lower tail clipped)")
  ax.set_ylabel("density")
  ax.legend(fontsize=8)

  ax = fig.add_subplot(grid[1, 2])
  ratios = [g for g in gammas if g != 1.0]
  ax.plot(ratios, [tree["rows"][f"CFG {g:g}"]["w1_log_density"] for g in ratios], "o-", label="CFG")
  ax.plot(ratios, [tree["rows"][f"autoguidance {g:g}"]["w1_log_density"] for g in ratios], "o-",
          label="autoguidance")
  ax.axhline(tree["rows"]["main model"]["w1_log_density"], color="grey", ls="--", label="main, unguided")
  ax.axhline(tree["rows"]["exact score"]["w1_log_density"], color="k", ls=":", label="exact score")
  ax.set_xlabel("guidance strength gamma")
  ax.set_ylabel("W1 of log p(x | y) to the truth's")
  ax.set_title("tree: class log-density against the truth", fontsize=9)
  ax.legend(fontsize=8)

  ax = fig.add_subplot(grid[1, 3])
  names = list(inpaint["rows"])
  values = [inpaint["rows"][n]["energy_distance"] for n in names]
  ax.bar(range(len(names)), values)
  ax.axhline(inpaint["floor_mean_std"][0] + 4 * inpaint["floor_mean_std"][1], color="k", ls=":",
             label="floor + 4 std")
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels([f"{n}\nNFE {inpaint['rows'][n]['nfe']}" for n in names], fontsize=8)
  ax.set_ylabel("energy distance to p(x_2, x_3 | x_1 = y)")
  ax.set_title("inpainting at equal NFE (3-D mixture)", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  _common.write(FLAGS.out, "guidance_toy", fig,
                {"num": num, "steps": steps, "sampler": "ancestral, uniform time grid, t_min 1e-3",
                 "sde": "VP", "cfg_strength": sweep, "cfgpp_strength": cfgpp, "tree": tree,
                 "inpainting": inpaint})


if __name__ == "__main__":
  _common.run(main)
