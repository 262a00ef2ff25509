"""Every sampler against the exact Gaussian-mixture score of ``analytic.DiffusedMixture``.

Recovery at high NFE on every SDE of the harness (two-sample distance at the floor, mixture
weights, moments), the fitted convergence order of every deterministic sampler in float64, coarse
grids that must still move the noise towards the data, the Langevin step rules (the annealed cap
against the closed form of the discretised chain, the per-example corrector rule), the
Langevin-vs-annealed-Langevin weights of Song & Ermon 2019, exact identities between samplers,
and the NFE each one reports. The SDE and sampler lists are ``harness.py``'s.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import harness as H
from diffusion_jax import analytic, metrics, schedules, sdes
from diffusion_jax import samplers as S
from diffusion_jax.samplers.annealed_langevin import annealed_step_size
from diffusion_jax.samplers.langevin import langevin_step_size
from diffusion_jax.sampling import sample, sample_batch

GMM = H.GMM_2D
VP, SUBVP, VE = sdes.VPSDE(), sdes.SubVPSDE(), sdes.VESDE()
NUM = 2000
grid, t_min_of = H.grid, H.t_min_of


def assert_within(actual, expected, tol):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert np.all(np.abs(actual - expected) <= tol), (actual, expected, tol)


@pytest.fixture(scope="module")
def reference():
  """Exact data, and the null distribution of the energy distance between two exact sets of NUM."""
  data = GMM.sample(jr.key(1), NUM)
  nulls = np.array([float(metrics.energy_distance(GMM.sample(jr.key(100 + i), NUM), data))
                    for i in range(8)])
  return data, nulls


# The steps each sampler needs to reach the floor here (first-order samplers need many).
HIGH_NFE_STEPS = {"euler": 4000, "ddim": 500, "heun": 50, "dpm_solver_2m": 50, "dpm_solver_3m": 50,
                  "unipc_2": 50, "unipc_1": 100, "ipndm": 50, "euler_maruyama": 500,
                  "reverse_diffusion": 500, "ancestral": 500, "ancestral_beta": 500, "ddim_eta1": 500,
                  "edm_stochastic": 100, "pc": 250, "chain": 50}
HIGH_NFE = [(c.name, c.sampler, c.grid, HIGH_NFE_STEPS[c.name]) for c in H.ALL] + [
    ("pc_expected_norms", S.PredictorCorrector(S.ReverseDiffusion(), S.Langevin(expected_norms=True)),
     "t", 250),
    ("annealed_langevin", None, "lambda", 30),  # step_lr depends on the SDE, set below
    ("adaptive", S.AdaptiveODE(), "one", 1),
]


def high_nfe_sampler(name, sampler, sde):
  if name == "annealed_langevin":
    # Song & Ermon's rule step_i = step_lr sigma_i^2/sigma_L^2, here step_i = sigma_i^2 (inside the
    # 2 sigma^2 cap), and their 100 steps per level: fewer steps per level leave the weights
    # unequilibrated. With 0.05 sigma_i^2 the chain cannot follow sub-VP's marginal over these 30
    # log-SNR levels (measured: energy 0.023 against a band of 4e-3; VP, VE, cosine passed), as the
    # samplers benchmark found for every SDE at 5 steps a level.
    return S.AnnealedLangevin(step_lr=float(sde.sigma(t_min_of(sde))) ** 2, num_steps=100)
  return sampler


@pytest.mark.slow
@pytest.mark.parametrize("sde", H.SDES, ids=H.SDE_IDS)
@pytest.mark.parametrize("name,sampler,kind,steps", HIGH_NFE, ids=[c[0] for c in HIGH_NFE])
def test_recovers_the_data_at_high_nfe(name, sampler, kind, steps, sde, reference):
  data, nulls = reference
  dm = analytic.DiffusedMixture(GMM, sde)
  sampler = high_nfe_sampler(name, sampler, sde)
  out = sample_batch(sde, dm, sampler, grid(sde, kind, steps), key=jr.key(0), num=NUM, shape=(2,))
  assert np.all(np.asarray(out.success))
  x = np.asarray(out.x)
  # Two-sample distance at the floor: within 4 standard deviations of the exact-vs-exact energy
  # distance at this N (the null spread is ~1e-3 at N = 2000).
  distance = float(metrics.energy_distance(out.x, data))
  assert distance < nulls.mean() + 4 * nulls.std(), (distance, nulls)
  # Mixture weights: soft assignment by the data's responsibilities; binomial standard error 0.01,
  # 4 standard errors.
  weights = np.asarray(jax.vmap(GMM.responsibilities)(out.x)).mean(0)
  np.testing.assert_allclose(weights, GMM.weights, atol=4 * np.sqrt(0.21 / NUM))
  # Moments: mean within 4 standard errors per coordinate; covariance within 10% of its scale
  # (sampling error of a covariance at N = 2000 is about 3%).
  cov = np.asarray(GMM.covariance())
  assert_within(x.mean(0), GMM.mean(), 4 * np.sqrt(np.diag(cov) / NUM))
  np.testing.assert_allclose(np.cov(x.T), cov, atol=0.1 * np.abs(cov).max())


# --- convergence order, float64 -------------------------------------------------------------------

ORDER_NUM = 16


@pytest.fixture(scope="module")
def order_reference():
  """A float64 adaptive solve at rtol = atol = 1e-10 per SDE: error ~1e-9, below every error fitted
  (the smallest is ~1e-4; a 2000-step Heun agrees with it to 5e-6, Heun's own error there)."""
  with H.float64():
    return {H.sde_id(sde): sample_batch(
        sde, H.problem(sde), S.AdaptiveODE(rtol=1e-10, atol=1e-10, max_steps=100_000),
        grid(sde, "one", 1), key=jr.key(0), num=ORDER_NUM, shape=(2,), denoise_final=False).x
            for sde in (VP, VE)}


@pytest.mark.slow
@H.x64
@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
@pytest.mark.parametrize("case", H.DETERMINISTIC, ids=H.ids(H.DETERMINISTIC))
def test_convergence_order(case, sde, order_reference):
  """The slope of log path error against log N, on log-SNR grids, against the declared order.

  Band (p - 0.3, p + 0.4): over a factor 8 in N the next-order term still shifts the slope (the
  float64 fits measured 0.98-1.04, 2.10-2.11, 2.89-3.07 for orders 1, 2, 3), and the multistep
  solvers' low-order warm-up steps pull the coarse end down (3M's local slopes rise 2.4 -> 3.3).
  """
  with H.float64():
    dm = H.problem(sde)
    ref = order_reference[H.sde_id(sde)]
    steps = {1: [64, 128, 256, 512], 2: [16, 32, 64, 128], 3: [8, 16, 32, 64]}[case.order]
    errors = []
    for n in steps:
      x = sample_batch(sde, dm, H.without_warm_down(case.sampler), grid(sde, "lambda", n), key=jr.key(0), num=ORDER_NUM,
                       shape=(2,), denoise_final=False).x
      # The median over examples: an example near the boundary between two modes can switch sides
      # on a coarse grid, and one such O(1) error would dominate a mean.
      errors.append(float(jnp.median(jnp.sqrt(jnp.sum((x - ref) ** 2, -1)))))
    order = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert case.order - 0.3 < order < case.order + 0.4, (order, errors)


# --- coarse grids ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sde", H.SDES, ids=H.SDE_IDS)
@pytest.mark.parametrize("case", H.ALL, ids=H.ids(H.ALL))
def test_ten_step_grids_move_the_noise_towards_the_data(case, sde, reference):
  """On a 10-step grid of the sampler's own kind the samples are finite and closer to the data, in
  energy distance, than the prior draws they started from: a diverging step, a sign error or a NaN
  fails, where the finiteness check this replaces passed the first two. (On 5-step grids uniform in
  t, Heun on cosine VP ends at energy 3.2 and Euler-Maruyama on VE at 182, 10x the prior's: real
  coarse-grid failures, not asserted here.)"""
  data, _ = reference
  num = 256
  dm = analytic.DiffusedMixture(GMM, sde)
  out = sample_batch(sde, dm, case.sampler, grid(sde, case.grid, 10), key=jr.key(0), num=num,
                     shape=(2,))
  assert np.all(np.asarray(out.success))
  prior = sde.prior_sample(jr.key(5), (num, 2))
  d_out = float(metrics.energy_distance(out.x, data[:num]))
  d_prior = float(metrics.energy_distance(prior, data[:num]))
  assert d_out < d_prior, (d_out, d_prior)


# --- Langevin step rules --------------------------------------------------------------------------


def _gaussian_chain(sampler, sigma_data, num=4000):
  """Chains from 0 at one level of a VE SDE whose data is N(0, sigma_data^2): p_t = N(0, sigma_data^2 + sigma^2)."""
  sde = sdes.VESDE(sigma_min=0.01, sigma_max=50.0)
  gmm = analytic.GaussianMixture.create([1.0], [[0.0]], [[sigma_data**2]])
  dm = analytic.DiffusedMixture(gmm, sde)
  ts = jnp.array([float(sde.time_at_sigma(2.0)), float(sde.time_at_sigma(1.0))])  # level sigma = 1
  fn = jax.jit(jax.vmap(lambda k: sample(sde, dm, sampler, ts, jnp.zeros(1), key=k,
                                         denoise_final=False).x[0]))
  return np.asarray(fn(jr.split(jr.key(0), num)))


def _stationary_variance(e, s2):
  """x <- (1 - e/s2) x + sqrt(2 e) z on N(0, s2): v = 2 e / (1 - (1 - e/s2)^2)."""
  return 2 * e / (1 - (1 - e / s2) ** 2)


def test_annealed_cap_is_where_one_step_forgets_and_the_chain_matches_its_closed_form():
  """With the cap active (eps = 2 sigma^2, i.e. step e = eps/2 = sigma^2 = 1) on p_t = N(0, 1.5):
  the factor 1 - e/1.5 = 1/3 and the stationary variance 2.25 of the discretised chain."""
  np.testing.assert_allclose(annealed_step_size(jnp.array([1.0, 0.1]), 0.01, 1e6), [2.0, 0.02],
                             rtol=1e-6)  # the cap binds: 2 sigma^2
  x = _gaussian_chain(S.AnnealedLangevin(step_lr=1e6, num_steps=60), np.sqrt(0.5))
  v = _stationary_variance(1.0, 1.5)
  # 4000 chains: the standard error of a variance is v sqrt(2/N) = 0.05; 5 of them.
  assert abs(np.var(x) - v) < 5 * v * np.sqrt(2 / x.size), (np.var(x), v)
  # The old reasoning ("eps/2 <= sigma^2 for stability") would have the chain at its own target
  # variance 1.5 there; it is the discretised chain's 2.25, 15 standard errors away.
  assert abs(np.var(x) - 1.5) > 10 * v * np.sqrt(2 / x.size)


@pytest.mark.parametrize("ratio", [1.9, 2.1])
def test_langevin_contracts_below_eps_4_sigma2_and_diverges_above(ratio):
  """Step e = eps/2 = ratio * s2 on p_t = N(0, s2 = 1.25): |1 - e/s2| = |1 - ratio|; 0.9 contracts
  to the closed-form variance, 1.1 grows as 1.1^(2 n) (eps = 2 e = 4.2 s2 beyond the boundary 4 s2)."""
  s2 = 1.25
  num_steps = 150
  x = _gaussian_chain(S.Langevin(step_size=ratio * s2, num_steps=num_steps), 0.5)
  if ratio < 2:
    v = _stationary_variance(ratio * s2, s2)
    # 0.9^300 = 2e-14 of the start is left: stationary. 5 standard errors of a variance.
    assert abs(np.var(x) - v) < 5 * v * np.sqrt(2 / x.size), (np.var(x), v)
  else:
    # Variance 2 e sum 1.21^j ~ 2e 1.21^150 / 0.21 ~ 1e13: far beyond any stationary value.
    assert not np.all(np.isfinite(x)) or np.var(x) > 1e10, np.var(x)


@pytest.mark.slow
@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
def test_the_per_example_corrector_rule_reaches_the_floor_in_2d(sde, reference):
  """Langevin(expected_norms=True): eps = 2 snr^2 sigma^2, per example, at the two-sample floor in 2-D,
  where the per-example norm rule of Song et al. does not get there (measured energy 0.22 VP)."""
  data, nulls = reference
  dm = analytic.DiffusedMixture(GMM, sde)
  ts = grid(sde, "t", 250)
  band = nulls.mean() + 4 * nulls.std()
  good = S.PredictorCorrector(S.ReverseDiffusion(), S.Langevin(expected_norms=True))
  norms = S.PredictorCorrector(S.ReverseDiffusion(), S.Langevin())
  distance = lambda s: float(metrics.energy_distance(
      sample_batch(sde, dm, s, ts, key=jr.key(0), num=NUM, shape=(2,)).x, data))
  assert distance(good) < band
  assert distance(norms) > 10 * band  # the failure the new rule fixes is real


def test_the_per_example_corrector_does_not_couple_examples():
  dm = analytic.DiffusedMixture(GMM, VP)
  ts = grid(VP, "t", 10)
  run = lambda s, n: np.asarray(sample_batch(VP, dm, S.PredictorCorrector(S.ReverseDiffusion(), s), ts,
                                             key=jr.key(0), num=n, shape=(2,)).x)
  per_example = S.Langevin(expected_norms=True)
  np.testing.assert_allclose(run(per_example, 3), run(per_example, 7)[:3], rtol=1e-5, atol=1e-6)
  batched = S.Langevin(axis_name="batch")
  assert not np.allclose(run(batched, 3), run(batched, 7)[:3], rtol=1e-3)  # averaged norms couple


def test_langevin_gets_the_weights_wrong_and_annealed_langevin_right():
  """Song & Ermon 2019, Fig. 3: p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I), chains started uniformly."""
  gmm = analytic.GaussianMixture.create([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], 1.0)
  sde = sdes.VESDE(sigma_min=0.01, sigma_max=20.0)
  dm = analytic.DiffusedMixture(gmm, sde)
  num = 1000
  x_init = jr.uniform(jr.key(0), (num, 2), minval=-8.0, maxval=8.0)
  keys = jr.split(jr.key(1), num)
  # Plain Langevin with the data score (sigma_min = 0.01), 1000 steps of size 0.1 at the end of the grid.
  plain = S.Langevin(step_size=0.1, num_steps=1000)
  ts_plain = jnp.array([0.1, 0.0])
  # Annealed: 10 geometric levels from sigma = 20 to 1 (their setting), 100 steps each.
  ts_annealed = sde.time_at_sigma(jnp.geomspace(20.0, 1.0, 11))
  annealed = S.AnnealedLangevin(step_lr=0.1, num_steps=100)

  def run(sampler, ts):
    fn = jax.jit(jax.vmap(lambda x, k: sample(sde, dm, sampler, ts, x, key=k, denoise_final=False).x))
    return fn(x_init, keys)

  def weight_of_small_mode(x):
    return float(jnp.mean(x.sum(-1) < 0))

  w_plain, w_annealed = weight_of_small_mode(run(plain, ts_plain)), weight_of_small_mode(run(annealed, ts_annealed))
  se = np.sqrt(0.2 * 0.8 / num)  # binomial standard error of the weight, 0.013
  assert abs(w_annealed - 0.2) < 4 * se, w_annealed
  # Plain Langevin keeps the split of the uniform start between the two basins, about 1/2.
  assert abs(w_plain - 0.5) < 4 * np.sqrt(0.25 / num), w_plain


def one_step(sampler, sde, x, t=0.6, t_next=0.45, key=jr.key(3)):
  dm = analytic.DiffusedMixture(GMM, sde)
  ts = jnp.array([t, t_next])
  state = sampler.init(sde, dm, ts, x)
  return sampler.step(sde, dm, ts[0], ts[1], x, state, key=key)


X = jnp.array([0.4, -1.3])


def test_ancestral_is_ddpm_for_vp():
  """Ho et al. 2020, Alg. 2 on the exact discrete schedule of the grid, with the same noise."""
  sde = VP
  n = 20
  alphas_cumprod = sdes.alphas_cumprod(sde, n)
  betas = sdes.betas_from_alphas_cumprod(alphas_cumprod)
  i = 12  # step from t = 13/20 to 12/20
  t, t_next = (i + 1) / n, i / n
  eps = analytic.DiffusedMixture(GMM, sde).eps(X, t)
  beta_tilde = (1 - alphas_cumprod[i - 1]) / (1 - alphas_cumprod[i]) * betas[i]
  noise = jr.normal(jr.key(3), X.shape)
  expected = (X - betas[i] / np.sqrt(1 - alphas_cumprod[i]) * eps) / np.sqrt(1 - betas[i])
  x_next, aux, _ = one_step(S.Ancestral(), sde, X, t, t_next)
  np.testing.assert_allclose(aux.mean, expected, rtol=1e-4)  # float32 round-off through 1/sqrt(1-beta)
  np.testing.assert_allclose(x_next, expected + np.sqrt(beta_tilde) * noise, rtol=1e-4, atol=1e-5)


def test_ancestral_is_ncsn_for_ve():
  """Song et al. 2021, App. F: x + (s_i^2 - s_{i-1}^2) score + sqrt(s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2) z."""
  sde = VE
  t, t_next = 0.6, 0.45
  s, s_next = float(sde.sigma(t)), float(sde.sigma(t_next))
  score = analytic.DiffusedMixture(GMM, sde).score(X, t)
  noise = jr.normal(jr.key(3), X.shape)
  expected = X + (s**2 - s_next**2) * score + np.sqrt(s_next**2 * (s**2 - s_next**2) / s**2) * noise
  np.testing.assert_allclose(one_step(S.Ancestral(), sde, X, t, t_next)[0], expected, rtol=1e-5)


@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
def test_reverse_diffusion_is_score_sde_for_ve(sde):
  t, t_next = 0.6, 0.45
  score = analytic.DiffusedMixture(GMM, sde).score(X, t)
  noise = jr.normal(jr.key(3), X.shape)
  if isinstance(sde, sdes.VESDE):  # score_sde: f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2)
    g2 = sde.sigma(t) ** 2 - sde.sigma(t_next) ** 2
    expected = X + g2 * score + jnp.sqrt(g2) * noise
  else:  # score_sde with DDPM's discrete beta: f = (sqrt(1 - beta) - 1) x, G = sqrt(beta)
    beta = 1 - sde.alpha(t) ** 2 / sde.alpha(t_next) ** 2
    expected = X - (jnp.sqrt(1 - beta) - 1) * X + beta * score + jnp.sqrt(beta) * noise
  np.testing.assert_allclose(one_step(S.ReverseDiffusion(), sde, X, t, t_next)[0], expected, rtol=1e-4)


@pytest.mark.parametrize("sde", [VP, SUBVP, VE], ids=["vp", "subvp", "ve"])
def test_sampler_identities(sde):
  """Exact equalities that follow from the papers' algebra, step by step with the same noise."""
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)  # float32 rounding
  ddim = one_step(S.DDIM(), sde, X)[0]
  close(one_step(S.DPMSolverPP(order=1), sde, X)[0], ddim)  # first-order DPM-Solver++ is DDIM
  close(one_step(S.IPNDM(order=1), sde, X)[0], ddim)  # Euler in x/alpha, sigma/alpha is DDIM
  close(one_step(S.DDIM(eta=1.0), sde, X)[0], one_step(S.Ancestral(), sde, X)[0])  # eta = 1 is DDPM
  close(one_step(S.EDMStochastic(s_churn=0.0), sde, X)[0], one_step(S.Heun(), sde, X)[0])


@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
def test_unip_with_expm1_is_dpm_solver_2m(sde):
  """Zhao et al. 2023: UniP-2 with B(h) = e^h - 1 and no corrector is DPM-Solver++(2M)."""
  dm = analytic.DiffusedMixture(GMM, sde)
  ts = grid(sde, "lambda", 12)
  x_init = jr.normal(jr.key(0), (2,)) * sde.prior_std()
  run = lambda s: sample(sde, dm, s, ts, x_init, key=jr.key(0), denoise_final=False).x
  np.testing.assert_allclose(run(S.UniPC(use_corrector=False)), run(S.DPMSolverPP(order=2)),
                             rtol=1e-4, atol=1e-5)  # float32 rounding over 12 steps


def test_langevin_with_a_fixed_step_keeps_p_t():
  """Unadjusted Langevin started in p_t stays near p_t (its bias is O(step) / the variance)."""
  sde = VP
  t = 0.3
  dm = analytic.DiffusedMixture(GMM, sde)
  x = dm.sample(jr.key(0), t, NUM)
  langevin = S.Langevin(step_size=1e-3, num_steps=200)
  ts = jnp.array([t + 0.1, t])
  out = jax.jit(jax.vmap(lambda x, k: sample(sde, dm, langevin, ts, x, key=k, denoise_final=False).x))(
      x, jr.split(jr.key(1), NUM))
  exact = dm.marginal(t)
  # Moments of p_t within 4 standard errors (the chain moved: 200 steps of 1e-3 diffuse ~0.6).
  cov = np.asarray(exact.covariance())
  assert_within(np.asarray(out).mean(0), exact.mean(), 4 * np.sqrt(np.diag(cov) / NUM))
  np.testing.assert_allclose(np.cov(np.asarray(out).T), cov, atol=0.1 * np.abs(cov).max())
  assert float(jnp.mean(jnp.abs(out - x))) > 0.1  # it did move


NFE_CASES = [
    (S.EulerMaruyama(), False, 2), (S.Heun(), False, 4), (S.Heun(), True, 5),
    (S.PredictorCorrector(S.ReverseDiffusion(), S.Langevin(num_steps=2)), False, 6),
    (S.AnnealedLangevin(num_steps=3), True, 7), (S.UniPC(), False, 2), (S.EDMStochastic(), False, 4),
    (S.AdaptiveODE(), False, None),
]


@pytest.mark.parametrize("sampler,denoise,expected", NFE_CASES, ids=lambda v: type(v).__name__)
def test_reported_nfe_counts_every_evaluation(sampler, denoise, expected):
  """Count evaluations at run time with a callback and compare with what ``sample`` reports."""
  sde = VP
  dm = analytic.DiffusedMixture(GMM, sde)
  calls = []

  def counted_score(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return dm.score(x, t)

  ts = jnp.array([1.0, 0.5, 1e-3])
  fn = jax.jit(lambda x: sample(sde, jax.tree_util.Partial(counted_score), sampler, ts, x,
                                key=jr.key(0), denoise_final=denoise).nfe)
  nfe = int(fn(jnp.array([0.3, -0.2])))
  jax.effects_barrier()
  assert nfe == len(calls)
  if expected is not None:
    assert nfe == expected


def test_bad_hyperparameters():
  with pytest.raises(ValueError, match="order"):
    S.DPMSolverPP(order=4)
  with pytest.raises(ValueError, match="order"):
    S.UniPC(order=0)
  with pytest.raises(ValueError, match="eta"):
    S.DDIM(eta=-0.1)
  with pytest.raises(ValueError, match="snr"):
    S.Langevin(snr=0.0)
  with pytest.raises(ValueError, match="num_steps"):
    S.AnnealedLangevin(num_steps=0)
  with pytest.raises(ValueError, match="s_tmax"):
    S.EDMStochastic(s_tmin=2.0, s_tmax=1.0)
  with pytest.raises(ValueError, match="solver"):
    S.AdaptiveODE(solver="tsit5")
  with pytest.raises(ValueError, match="steps"):
    S.Chain(S.DDIM(eta=1.0), S.IPNDM(), steps=0)
  with pytest.raises(TypeError, match="then"):
    S.Chain(S.DDIM(eta=1.0), "ipndm")
  with pytest.raises(ValueError, match="more than steps=3"):
    sample(VP, analytic.DiffusedMixture(GMM, VP), S.Chain(S.DDIM(), S.IPNDM(), steps=3),
           grid(VP, "t", 3), X, key=jr.key(0))


@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
def test_chain_is_its_parts_in_sequence(sde):
  """Chain(first, then, steps=2) = first's two steps (same step keys), then ``then`` on the rest of the grid."""
  dm = analytic.DiffusedMixture(GMM, sde)
  ts = grid(sde, "lambda", 8)
  x_init = jr.normal(jr.key(0), (2,)) * sde.prior_std()
  key = jr.key(5)
  chained = sample(sde, dm, S.Chain(S.DDIM(eta=1.0), S.IPNDM(), steps=2), ts, x_init, key=key,
                   denoise_final=False)
  x = x_init
  for i in range(2):  # ``sample`` gives step i the key fold_in(key, i)
    x = one_step(S.DDIM(eta=1.0), sde, x, ts[i], ts[i + 1], jr.fold_in(key, i))[0]
  rest = sample(sde, dm, S.IPNDM(), ts[2:], x, key=key, denoise_final=False)
  np.testing.assert_allclose(chained.x, rest.x, rtol=1e-5, atol=1e-5)  # float32 rounding
  assert int(chained.nfe) == 8
  assert S.Chain(S.DDIM(eta=1.0), S.IPNDM()).stochastic and not S.Chain(S.DDIM(), S.IPNDM()).stochastic


def test_an_ancestral_first_step_shrinks_the_prior_mismatch():
  """x_T ~ N(0, 1) is not p_T: with beta_max = 8, alpha(T) = 0.13 and p_T's mean is 0.2, not 0.

  A deterministic solver carries that into the weights (which mode a path ends in is fixed by x_T):
  the upper mode of a 0.5/0.5 mixture gets about 0.42. One ancestral step first keeps only about
  alpha(T) sigma(t_1) / (alpha(t_1) sigma(T)) of x_T and removes a large part of the bias.
  """
  sde = sdes.VPSDE(beta_max=8.0)
  gmm = analytic.GaussianMixture.create([0.5, 0.5], [[0.0], [3.0]], [[0.1], [0.1]])
  dm = analytic.DiffusedMixture(gmm, sde)
  ts = schedules.time_quadratic(sde, 10, 1e-3)
  num = 20_000
  se = 0.5 / np.sqrt(num)  # standard error of a fraction near 1/2

  def upper_bias(sampler):
    x = sample_batch(sde, dm, sampler, ts, key=jr.key(0), num=num, shape=(1,), denoise_final=False).x
    return float(jnp.mean(x[:, 0] > 1.5)) - 0.5

  ode = upper_bias(S.IPNDM())
  chained = upper_bias(S.Chain(S.DDIM(eta=1.0), S.IPNDM()))
  assert ode < -10 * se  # the mismatch is real and far outside sampling noise (measured -0.080)
  # Measured -0.045: the bias shrinks by ~0.55 +- 0.05; 0.75 leaves 4 standard errors of the ratio.
  assert abs(chained) < 0.75 * abs(ode)


def test_langevin_rule_sets_the_signal_to_noise_ratio():
  score = jr.normal(jr.key(0), (16,))
  noise = jr.normal(jr.key(1), (16,))
  snr = 0.16
  step = langevin_step_size(score, noise, snr)
  # Song et al. 2021, App. G: the ratio |step score| / |sqrt(2 step) noise| of drift to noise is snr.
  ratio = jnp.linalg.norm(step * score) / jnp.linalg.norm(jnp.sqrt(2 * step) * noise)
  np.testing.assert_allclose(ratio, snr, rtol=1e-5)
