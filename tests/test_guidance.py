"""Guidance transforms against exact answers on labelled Gaussian mixtures (class = component, or a
group of components for the tree), where p_t(x | y), p_t(x) and p(y | x_t) are closed form."""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import analytic, guidance as G, metrics, schedules, sdes
from diffusion_jax import samplers as S
from diffusion_jax.sampling import sample_batch

VP, VE = sdes.VPSDE(), sdes.VESDE()
# Three overlapping classes of unequal weight: the Bayes classifier errs on a share of draws, so the
# classifier term is far from zero where the classes meet.
MIX = analytic.random_mixture(jr.key(0), 2, num_components=3, mean_scale=0.8, min_variance=0.2,
                              max_variance=0.5, min_weight=0.2, max_weight=1.0)
NULL = jnp.int32(3)
TREE, TREE_CLASSES = analytic.tree_mixture()


def _points(key, num=64):
  x_key, t_key = jr.split(key)
  return jr.normal(x_key, (num, 2)), jr.uniform(t_key, (num,), minval=1e-3, maxval=1.0)


@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
@pytest.mark.parametrize("tree", [False, True], ids=["components", "tree"])
def test_classifier_guidance_at_scale_one_is_the_exact_conditional_score(sde, tree):
  mix, classes = (TREE, TREE_CLASSES) if tree else (MIX, None)
  exact = analytic.ConditionalDiffusedMixture(mix, sde, None, classes)
  unconditional = analytic.DiffusedMixture(mix, sde)
  classifier = jax.tree_util.Partial(exact.class_log_probs)
  xs, ts = _points(jr.key(1))
  xs = xs * (1.0 if tree else 1.5)
  for y in range(exact.num_classes):
    guided = G.ClassifierGuidance(unconditional, classifier, 1.0, cond=jnp.int32(y))
    got = jax.vmap(guided)(xs, ts)
    want = jax.vmap(exact.replace(cond=jnp.int32(y)).score)(xs, ts)
    # Bayes' rule, computed two ways in float32: the conditional score directly, and the mixture
    # score plus the log-softmax gradient, whose terms cancel where a class is nearly certain. 1e-3
    # relative to the score's scale covers that cancellation; a wrong classifier or sign is O(1).
    scale = np.abs(np.asarray(want)).max(axis=-1, keepdims=True) + 1.0
    np.testing.assert_allclose(np.asarray(got) / scale, np.asarray(want) / scale, atol=1e-3)


@pytest.mark.parametrize("sampler", [S.Ancestral(), S.DPMSolverPP()], ids=["ancestral", "dpm_2m"])
@pytest.mark.parametrize("pair_batch", [True, False], ids=["pair", "two_calls"])
def test_classifier_free_guidance_at_gamma_one_is_the_conditional_sampler_bitwise(sampler, pair_batch):
  exact = analytic.ConditionalDiffusedMixture(MIX, VP)
  labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1], jnp.int32)
  ts = schedules.uniform_time(VP, 30, 1e-3)
  run = functools.partial(sample_batch, VP, sampler=sampler, ts=ts, key=jr.key(1), num=8,
                          shape=(2,), cond=labels)
  conditional = run(score_fn=exact).x
  guided = run(score_fn=G.ClassifierFreeGuidance(exact, NULL, 1.0, pair_batch=pair_batch)).x
  np.testing.assert_array_equal(guided, conditional)
  # Ho & Salimans' w = 0 is the same sampler.
  w0 = run(score_fn=G.ClassifierFreeGuidance.with_weight(exact, NULL, 0.0, pair_batch=pair_batch)).x
  np.testing.assert_array_equal(w0, conditional)


def test_classifier_free_guidance_is_the_gamma_mixture_of_the_two_scores():
  exact = analytic.ConditionalDiffusedMixture(MIX, VP)
  xs, ts = _points(jr.key(2))
  for y, gamma in ((0, 0.0), (1, 2.5), (2, 7.5)):
    cond, uncond = exact.replace(cond=jnp.int32(y)), exact.replace(cond=NULL)
    want = gamma * jax.vmap(cond)(xs, ts) + (1 - gamma) * jax.vmap(uncond)(xs, ts)
    for pair_batch in (True, False):
      guided = G.ClassifierFreeGuidance(exact, NULL, gamma, cond=jnp.int32(y), pair_batch=pair_batch)
      # The same sum written as c + (gamma - 1)(c - u): float32 reassociation, a few ulps of the
      # largest term, gamma |c - u| <= ~100 here.
      np.testing.assert_allclose(jax.vmap(guided)(xs, ts), want, rtol=1e-5, atol=1e-4)
    # diffusers' guidance_scale is gamma: with_weight(w) has gamma = 1 + w.
    assert G.ClassifierFreeGuidance.with_weight(exact, NULL, gamma - 1.0).gamma == pytest.approx(gamma)


def test_the_noise_interval_switches_guidance_off_outside_it_bitwise():
  exact = analytic.ConditionalDiffusedMixture(MIX, VP)
  interval = G.NoiseInterval(VP, 0.5, 2.0)  # EDM sigma = sigma/alpha
  plain = G.ClassifierFreeGuidance(exact, NULL, 3.0, cond=jnp.int32(1))
  gated = plain.replace(interval=interval)
  conditional = exact.replace(cond=jnp.int32(1))
  x = jnp.array([0.3, -0.2])
  for level in (0.1, 0.49, 0.51, 1.0, 1.99, 2.01, 10.0):
    t = VP.time_at_edm_sigma(jnp.asarray(level))
    inside = 0.5 < float(VP.edm_sigma(t)) <= 2.0
    np.testing.assert_array_equal(gated(x, t), plain(x, t) if inside else conditional(x, t))
  # Classifier guidance outside the interval is the unconditional model; autoguidance the main one.
  dm = analytic.DiffusedMixture(MIX, VP)
  cg = G.ClassifierGuidance(dm, jax.tree_util.Partial(dm.class_log_probs), 2.0, jnp.int32(0), interval)
  t_out = VP.time_at_edm_sigma(jnp.asarray(5.0))
  np.testing.assert_array_equal(cg(x, t_out), dm(x, t_out))
  guide = exact.replace(mixture=analytic.GaussianMixture(MIX.weights, MIX.means, MIX.variances + 0.1))
  ag = G.Autoguidance(exact, guide, 2.0, jnp.int32(0), interval)
  np.testing.assert_array_equal(ag(x, t_out), exact.replace(cond=jnp.int32(0))(x, t_out))
  with pytest.raises(ValueError, match="sigma_lo < sigma_hi"):
    G.NoiseInterval(VP, 2.0, 0.5)


class _CountedScore(flax.struct.PyTreeNode):
  """A conditional exact score that records each trace (a Python side effect runs only when traced)."""

  exact: analytic.ConditionalDiffusedMixture
  traces: list = flax.struct.field(pytree_node=False)
  cond: jax.Array | None = None

  def __call__(self, x, t):
    self.traces.append(1)
    return self.exact.replace(cond=self.cond)(x, t)


def test_a_new_guidance_strength_reuses_the_compiled_sampler():
  traces = []
  score = _CountedScore(analytic.ConditionalDiffusedMixture(MIX, VP), traces)
  labels = jnp.array([0, 1, 2, 0], jnp.int32)
  ts = schedules.uniform_time(VP, 5, 1e-3)
  run = lambda fn: sample_batch(VP, fn, S.DDIM(), ts, key=jr.key(0), num=4, shape=(2,), cond=labels).x
  interval = G.NoiseInterval(VP, 0.2, 3.0)
  first = run(G.ClassifierFreeGuidance(score, NULL, 2.0, interval=interval))
  n_first = len(traces)
  second = run(G.ClassifierFreeGuidance(score, NULL, 4.0, interval=interval.replace(sigma_lo=0.5)))
  assert len(traces) == n_first  # gamma and the interval are leaves: no new trace
  assert not np.array_equal(first, second)


def test_guidance_arguments_are_checked():
  exact = analytic.ConditionalDiffusedMixture(MIX, VP)
  with pytest.raises(ValueError, match="gamma must be a finite real scalar"):
    G.ClassifierFreeGuidance(exact, NULL, float("nan"))
  with pytest.raises(TypeError, match="score_fn must be a conditional score"):
    G.ClassifierFreeGuidance(analytic.DiffusedMixture(MIX, VP), NULL, 2.0)
  with pytest.raises(ValueError, match="needs a condition"):
    G.ClassifierFreeGuidance(exact, NULL, 2.0)(jnp.zeros(2), 0.5)
  with pytest.raises(ValueError, match="needs a class"):
    dm = analytic.DiffusedMixture(MIX, VP)
    G.ClassifierGuidance(dm, jax.tree_util.Partial(dm.class_log_probs), 1.0)(jnp.zeros(2), 0.5)


# --- CFG++ ---------------------------------------------------------------------------------------

CFGPP_LABELS = jnp.array([0, 1, 2, 0, 1, 2, 0, 1], jnp.int32)


def _cfgpp_reference(sde, exact, lam, ts, x_init, labels):
  """Chung et al. 2024, Alg. 1, as a slow float64 loop over the steps and the examples: the data
  prediction from the guided noise lam eps_c + (1 - lam) eps_u, the renoising with eps_u."""
  alpha = lambda t: float(sde.alpha(t))
  sigma = lambda t: float(sde.sigma(t))
  out = []
  for x, y in zip(np.asarray(x_init, np.float64), np.asarray(labels)):
    for t, t_next in zip(np.asarray(ts[:-1]), np.asarray(ts[1:])):
      xj = jnp.asarray(x, jnp.float32)
      eps_c = -sigma(t) * np.asarray(exact.replace(cond=jnp.int32(y))(xj, t), np.float64)
      eps_u = -sigma(t) * np.asarray(exact.replace(cond=NULL)(xj, t), np.float64)
      eps_lam = eps_u + lam * (eps_c - eps_u)
      x0 = (x - sigma(t) * eps_lam) / alpha(t)
      x = alpha(t_next) * x0 + sigma(t_next) * eps_u
    out.append(x)
  return np.stack(out)


@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
@pytest.mark.parametrize("inner", [S.DDIM(), S.DPMSolverPP(order=1)], ids=["ddim", "dpm_1"])
def test_cfgpp_is_the_papers_algorithm(sde, inner):
  exact = analytic.ConditionalDiffusedMixture(MIX, sde)
  ts = schedules.uniform_time(sde, 12, 1e-3)
  lam = 0.4
  guided = G.ClassifierFreeGuidance(exact, NULL, lam)
  out = sample_batch(sde, guided, S.CFGPlusPlus(inner), ts, key=jr.key(1), num=8, shape=(2,),
                     cond=CFGPP_LABELS, denoise_final=False, save_trajectory=True)
  want = _cfgpp_reference(sde, exact, lam, ts, out.trajectory[:, 0], CFGPP_LABELS)
  # float32 steps against a float64 loop: 12 steps of O(1) updates (VE: O(sigma_max) early ones,
  # relative 1e-6 each) leave ~1e-5 relative; a wrong renoising term moves x by O(lam) = 0.1-1.
  scale = float(sde.edm_sigma(ts[0]))  # the prior's spread: VE starts at sigma_max
  np.testing.assert_allclose(out.x, want, rtol=1e-4, atol=1e-4 * scale)


def test_cfgpp_at_lambda_zero_is_the_unconditional_sampler():
  exact = analytic.ConditionalDiffusedMixture(MIX, VP)
  ts = schedules.uniform_time(VP, 20, 1e-3)
  run = functools.partial(sample_batch, VP, ts=ts, key=jr.key(2), num=8, shape=(2,))
  for inner in (S.DDIM(eta=0.5), S.DPMSolverPP(order=2)):
    got = run(score_fn=G.ClassifierFreeGuidance(exact, NULL, 0.0), sampler=S.CFGPlusPlus(inner),
              cond=CFGPP_LABELS).x
    want = run(score_fn=exact, sampler=inner, cond=jnp.full((8,), NULL)).x
    # The pair-batched (vmapped) call against a direct one: float32 rounding of the same sums.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cfgpp_is_cfg_at_gamma_lambda_over_one_minus_exp_minus_h():
  """On a grid of equal steps h in half log-SNR, a CFG++ DDIM step at lam is a CFG DDIM step at
  gamma = lam / (1 - e^{-h}): the two rewrite the same update (samplers/cfgpp.py)."""
  exact = analytic.ConditionalDiffusedMixture(MIX, VP)
  ts = schedules.uniform_log_snr(VP, 16, 1e-3)
  h = np.diff(0.5 * np.asarray(VP.log_snr(ts), np.float64))
  np.testing.assert_allclose(h, h.mean(), rtol=1e-3)  # the grid's steps are equal (float32 times)
  lam = 0.3
  run = functools.partial(sample_batch, VP, ts=ts, key=jr.key(3), num=8, shape=(2,),
                          cond=CFGPP_LABELS, denoise_final=False)
  got = run(score_fn=G.ClassifierFreeGuidance(exact, NULL, lam), sampler=S.CFGPlusPlus()).x
  gamma = lam / -np.expm1(-h.mean())
  want = run(score_fn=G.ClassifierFreeGuidance(exact, NULL, gamma), sampler=S.DDIM()).x
  # gamma is 2.6 here; 1e-3 relative spread of h in float32 times moves each step's weight by
  # 1e-3 of the guidance term, ~1e-4 in x; the two forms differing would be O(0.1).
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_cfgpp_concentrates_the_class_with_lambda():
  exact = analytic.ConditionalDiffusedMixture(MIX, VP)
  y, num = 0, 1000
  ts = schedules.uniform_time(VP, 30, 1e-3)
  class_ll = []
  for lam in (0.0, 0.05, 0.2):
    x = sample_batch(VP, G.ClassifierFreeGuidance(exact, NULL, lam), S.CFGPlusPlus(S.DPMSolverPP()),
                     ts, key=jr.key(6), num=num, shape=(2,), cond=jnp.full((num,), y, jnp.int32)).x
    log_py = np.asarray(jax.vmap(lambda v: exact.class_log_probs(v, 0.0))(x))[:, y]
    class_ll.append(float(np.mean(log_py)))
  # lam 0 is the unconditional model: log p(y | x) of its samples is the prior class share's log
  # on average, far below the guided ones (measured numbers in guidance_toy.py's JSON).
  assert class_ll[0] < class_ll[1] < class_ll[2], class_ll


def test_cfgpp_arguments_are_checked():
  exact = analytic.ConditionalDiffusedMixture(MIX, VP)
  ts = schedules.uniform_time(VP, 4, 1e-3)
  with pytest.raises(TypeError, match="inner must be an instance of DDIM or DPMSolverPP"):
    S.CFGPlusPlus(S.Ancestral())
  with pytest.raises(TypeError, match="samples a guidance.ClassifierFreeGuidance"):
    sample_batch(VP, exact, S.CFGPlusPlus(), ts, key=jr.key(0), num=2, shape=(2,),
                 cond=jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match="no noise interval"):
    gated = G.ClassifierFreeGuidance(exact, NULL, 0.5, interval=G.NoiseInterval(VP, 0.1))
    sample_batch(VP, gated, S.CFGPlusPlus(), ts, key=jr.key(0), num=2, shape=(2,),
                 cond=jnp.zeros(2, jnp.int32))


# --- samples -------------------------------------------------------------------------------------

NUM = 2000
SAMPLE_TS = schedules.uniform_time(VP, 200, 1e-3)


def _energy_floor(draw, reference, seeds=range(100, 105)):
  """Mean and std of the energy distance of exact draws of the same size against ``reference``."""
  nulls = np.array([float(metrics.energy_distance(draw(jr.key(s)), reference)) for s in seeds])
  return nulls.mean(), nulls.std()


def test_classifier_guided_samples_are_exact_class_samples():
  dm = analytic.DiffusedMixture(MIX, VP)
  exact = analytic.ConditionalDiffusedMixture(MIX, VP)
  guided = G.ClassifierGuidance(dm, jax.tree_util.Partial(exact.class_log_probs), 1.0)
  y = 2
  out = sample_batch(VP, guided, S.Ancestral(), SAMPLE_TS, key=jr.key(3), num=NUM, shape=(2,),
                     cond=jnp.full((NUM,), y, jnp.int32))
  component = MIX.conditioned(y)
  reference = component.sample(jr.key(4), NUM)
  mean, std = _energy_floor(lambda k: component.sample(k, NUM), reference)
  distance = float(metrics.energy_distance(out.x, reference))
  # The floor band: within 4 standard deviations of exact-vs-exact distances at this N (200 ancestral
  # steps put the sampler's own bias below it; measured 2e-4 against a band of ~1e-3).
  assert distance < mean + 4 * std, (distance, mean, std)


def test_larger_gamma_concentrates_the_class():
  """Class log-likelihood log p(y | x) and the share of samples confidently in class y rise with gamma;
  the share inside the class's own 50% highest-density region rises from gamma = 1 to 1.5 and then
  falls: CFG pushes samples away from the other classes, past the class's mode (measured for this
  class: 0.54, 0.58, 0.58, 0.54, 0.49 at gamma = 1, 1.5, 2, 3, 4; the other numbers are reported by
  experiments/figures/guidance_toy.py)."""
  exact = analytic.ConditionalDiffusedMixture(MIX, VP)
  y = 0
  component = MIX.conditioned(y)
  truth = np.asarray(jax.vmap(component.log_prob)(component.sample(jr.key(5), NUM)))
  threshold = np.percentile(truth, 50)  # half of the exact class samples lie above it
  labels = jnp.full((NUM,), y, jnp.int32)
  hdr, confident, class_ll = [], [], []
  for gamma in (1.0, 1.5, 2.0, 4.0):
    guided = G.ClassifierFreeGuidance(exact, NULL, gamma)
    x = sample_batch(VP, guided, S.Ancestral(), SAMPLE_TS, key=jr.key(6), num=NUM, shape=(2,),
                     cond=labels).x
    hdr.append(float(np.mean(np.asarray(jax.vmap(component.log_prob)(x)) > threshold)))
    log_py = np.asarray(jax.vmap(lambda v: exact.class_log_probs(v, 0.0))(x))[:, y]
    confident.append(float(np.mean(log_py > np.log(0.9))))
    class_ll.append(float(np.mean(log_py)))
  assert class_ll[0] < class_ll[1] < class_ll[2] < class_ll[3], class_ll
  # Binomial standard error of a share near 0.8 at N = 2000 is 0.009: steps of 4 of them.
  assert all(b > a + 0.035 for a, b in zip(confident[:2], confident[1:3])), confident
  assert confident[3] >= confident[2], confident
  # The highest-density share: up by more than 3 binomial errors of a difference (0.016 each) from
  # gamma 1 to 1.5, then down again at gamma 4.
  assert hdr[1] > hdr[0] + 0.025 and hdr[3] < hdr[1] - 0.05, hdr


# --- constraints ---------------------------------------------------------------------------------

MIX3 = analytic.random_mixture(jr.key(4), 3, num_components=4, min_variance=0.02, max_variance=0.1)
KNOWN = np.array([True, False, False])
VALUE = jnp.array([float(MIX3.means[0, 0]) + 0.1, 0.0, 0.0])


def test_given_coordinates_is_bayes_rule_on_the_components():
  cond = MIX3.given_coordinates(KNOWN, VALUE)
  # Against the joint density: log p(x_u | x_k) = log p(x_k, x_u) - log p(x_k) for any x_u.
  xu = jr.normal(jr.key(7), (16, 2))
  joint = jax.vmap(lambda u: MIX3.log_prob(jnp.concatenate([VALUE[:1], u])))(xu)
  marginal = analytic.GaussianMixture(MIX3.weights, MIX3.means[:, :1], MIX3.variances[:, :1])
  want = joint - marginal.log_prob(VALUE[:1])
  # float32 log-densities of order 10: 1e-4 absolute.
  np.testing.assert_allclose(jax.vmap(cond.log_prob)(xu), want, atol=1e-4)


@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
def test_repaint_halves_the_inpainting_bias_of_replacement_at_equal_nfe(sde):
  """Plain replacement at 10N steps against RePaint at N steps x 10 resamples (the same NFE):
  distances to the exact conditional p(x_u | x_k = y) (measured: 0.036 / 0.010 on VP, 0.029 /
  0.009 on VE, floor ~0 +- 3e-4)."""
  dm = analytic.DiffusedMixture(MIX3, sde)
  exact = MIX3.given_coordinates(KNOWN, VALUE)
  reference = exact.sample(jr.key(9), NUM)
  mask = jnp.asarray(KNOWN, jnp.float32)
  t_min = 0.0 if sde is VE else 1e-3
  plain = sample_batch(sde, dm, S.Inpaint(S.Ancestral(), mask, VALUE),
                       schedules.uniform_time(sde, 500, t_min), key=jr.key(1), num=NUM, shape=(3,))
  repaint = sample_batch(sde, dm, S.RePaint(S.Inpaint(S.Ancestral(), mask, VALUE), 10),
                         schedules.uniform_time(sde, 50, t_min), key=jr.key(1), num=NUM, shape=(3,))
  assert int(plain.nfe[0]) == 501 and int(repaint.nfe[0]) == 501  # 50 x 10 + the final step
  for out in (plain, repaint):
    np.testing.assert_array_equal(out.x[:, 0], VALUE[0])  # the observed coordinate, exactly
  d_plain = float(metrics.energy_distance(plain.x[:, 1:], reference))
  d_repaint = float(metrics.energy_distance(repaint.x[:, 1:], reference))
  mean, std = _energy_floor(lambda k: exact.sample(k, NUM), reference)
  # Replacement is biased well above the floor; RePaint at least halves the excess.
  assert d_plain > mean + 10 * std, (d_plain, mean, std)
  assert d_repaint - mean < 0.5 * (d_plain - mean), (d_repaint, d_plain)


def test_posterior_sampling_pulls_towards_the_measurement():
  dm = analytic.DiffusedMixture(MIX3, VP)
  exact = MIX3.given_coordinates(KNOWN, VALUE)
  reference = exact.sample(jr.key(9), NUM)
  first = jax.tree_util.Partial(lambda x: x[:1])
  ts = schedules.uniform_time(VP, 100, 1e-3)
  free = sample_batch(VP, dm, S.Ancestral(), ts, key=jr.key(1), num=NUM, shape=(3,))
  dps = sample_batch(VP, dm, S.PosteriorSampling(S.Ancestral(), first, VALUE[:1], 0.1), ts,
                     key=jr.key(1), num=NUM, shape=(3,))
  assert int(dps.nfe[0]) == 201  # one gradient evaluation per step on top of the step's own
  err_free = float(np.mean(np.abs(np.asarray(free.x[:, 0]) - float(VALUE[0]))))
  err_dps = float(np.mean(np.abs(np.asarray(dps.x[:, 0]) - float(VALUE[0]))))
  # A soft constraint: the observed coordinate comes within 0.1 on average (measured 0.099) of y,
  # against ~1 for unconstrained samples, and the rest follows the exact conditional within a small
  # distance (measured 2.3e-3 against a floor of ~0 +- 3e-4; unconstrained samples are at ~0.5).
  assert err_dps < 0.15 < 0.5 < err_free, (err_dps, err_free)
  assert float(metrics.energy_distance(dps.x[:, 1:], reference)) < 0.01
  with pytest.raises(ValueError, match="measure_fn maps"):
    sample_batch(VP, dm, S.PosteriorSampling(S.Ancestral(), first, VALUE, 0.1), ts, key=jr.key(1),
                 num=2, shape=(3,))


def test_colorization_keeps_the_grey_image_and_samples_the_colour():
  """In COLOUR_BASIS the grey coordinate is sqrt(3) times the channel mean: after the final step the
  samples' channel mean equals the given grey image; the colour varies between samples."""
  basis = np.asarray(S.COLOUR_BASIS)
  np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-12)  # orthonormal
  np.testing.assert_allclose(basis[:, 0], np.full(3, 1 / np.sqrt(3)), atol=1e-12)  # grey first
  # Pixels of three colours: red, green or blue with a little spread, on a 2 x 2 image.
  colours = analytic.GaussianMixture.create(jnp.ones(3), 0.8 * jnp.eye(3) - 0.3, 0.01)
  image = analytic.GaussianMixture(colours.weights, jnp.tile(colours.means, (1, 4)),
                                   jnp.tile(colours.variances, (1, 4)))
  dm = analytic.DiffusedMixture(image, VP)
  score = jax.tree_util.Partial(lambda x, t: dm.score(x.reshape(-1), t).reshape(x.shape))
  grey = jnp.array([[0.1, -0.2], [0.0, 0.05]])
  out = sample_batch(VP, score, S.colorization(S.Ancestral(), grey), schedules.uniform_time(VP, 50, 1e-3),
                     key=jr.key(2), num=64, shape=(2, 2, 3))
  # float32 round trip through the orthogonal basis: a few ulps of values of order 1.
  np.testing.assert_allclose(np.asarray(out.x).mean(-1), np.broadcast_to(grey, (64, 2, 2)), atol=1e-6)
  assert float(np.std(np.asarray(out.x)[..., 0])) > 0.1  # the colour is sampled, not fixed
  with pytest.raises(ValueError, match="basis must be an orthogonal"):
    S.Inpaint(S.DDIM(), jnp.zeros(3), jnp.zeros(3), jnp.ones((3, 3)))
