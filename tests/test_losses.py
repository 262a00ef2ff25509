"""Denoising score matching: closed-form expected loss, exact score is optimal, zero gradient at the truth."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import analytic, losses, sdes
from diffusion_jax.parameterization import EDMPrecond, Prediction
import harness as H

N = 20_000
D = 2
M_TRUE, V_TRUE = jnp.array([0.8, -0.5]), 0.3


def batched(fn):
  """A batched model_fn(params, x, t, cond, *, key, train) from a per-example fn(params, x, t)."""
  return lambda params, x, t, cond, *, key=None, train=False: jax.vmap(fn, (None, 0, 0))(params, x, t)


def gaussian_score_model(sde):
  """score(x_t) = -(x_t - alpha m) / (alpha^2 v + sigma^2): exact for data N(m, v I)."""

  def model_fn(params, x, t, cond, *, key=None, train=False):
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    return -(x - alpha * params["m"]) / (alpha**2 * jnp.exp(params["log_v"]) + sigma**2)

  return model_fn


TRUE = {"m": M_TRUE, "log_v": jnp.log(V_TRUE)}


def data(key, n=N):
  return M_TRUE + jnp.sqrt(V_TRUE) * jr.normal(key, (n, D))


@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.VESDE(sigma_max=10.0)], ids=["vp", "ve"])
def test_expected_loss_of_exact_score_has_closed_form(sde):
  # For Gaussian data, E ||sigma s*(x_t) + noise||^2 = D alpha^2 v / (alpha^2 v + sigma^2).
  model_fn = gaussian_score_model(sde)
  x0 = data(jr.key(0))
  noise = jr.normal(jr.key(1), x0.shape)
  for t in (0.1, 0.5):
    out = jax.vmap(lambda x, z: losses.dsm_loss_at(model_fn, TRUE, x, None, t, z, sde=sde,
                                                   prediction=Prediction.SCORE))(x0, noise)
    a2v = float(sde.alpha(t)) ** 2 * V_TRUE
    expected = D * a2v / (a2v + float(sde.sigma(t)) ** 2)
    se = float(jnp.std(out.loss)) / np.sqrt(N)
    assert abs(float(jnp.mean(out.loss)) - expected) < 4 * se  # 4 Monte-Carlo standard errors


@pytest.mark.parametrize("weighting", list(losses.Weighting))
@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.SubVPSDE(), sdes.VESDE(sigma_max=10.0)],
                         ids=["vp", "subvp", "ve"])
def test_gradient_vanishes_at_the_true_parameters(sde, weighting):
  model_fn = gaussian_score_model(sde)
  x0 = data(jr.key(2))
  keys = jr.split(jr.key(3), N)

  def per_example_grad(params):
    fn = lambda p, x, k: losses.dsm_loss(model_fn, p, x, None, k, sde=sde, prediction=Prediction.SCORE,
                                         weighting=weighting, t_min=1e-2).loss
    return jax.vmap(jax.grad(fn), (None, 0, 0))(params, x0, keys)

  grads = jax.jit(per_example_grad)
  for params, should_vanish in ((TRUE, True), ({**TRUE, "m": M_TRUE + 0.3}, False)):
    g = jnp.concatenate([grads(params)["m"], grads(params)["log_v"][:, None]], axis=1)
    z = np.abs(np.asarray(jnp.mean(g, 0) / (jnp.std(g, 0) / np.sqrt(N))))
    if should_vanish:
      assert np.all(z < 4.5), z  # mean gradient within 4.5 standard errors of zero (3 coordinates)
    else:
      assert np.any(z > 10), z  # and clearly not zero away from the truth: the test has power


SDES = list(H.SDES)


@pytest.mark.parametrize("sde", SDES, ids=H.SDE_IDS)
def test_exact_gmm_score_beats_perturbed_scores(sde):
  dm = analytic.DiffusedMixture(analytic.eight_gaussians(), sde)
  x0 = dm.data.sample(jr.key(4), N)
  keys = jr.split(jr.key(5), N)
  exact = batched(lambda p, x, t: dm.score(x, t))
  scaled = batched(lambda p, x, t: 1.2 * dm.score(x, t))
  shifted = batched(lambda p, x, t: dm.score(x, t) + 0.2 / sde.sigma(t))

  def mean_loss(model_fn):
    f = lambda x, k: losses.dsm_loss(model_fn, None, x, None, k, sde=sde,
                                     prediction=Prediction.SCORE).loss
    return jax.jit(jax.vmap(f))(x0, keys)

  base = mean_loss(exact)
  for other in (scaled, shifted):
    diff = mean_loss(other) - base  # same keys: common random numbers
    assert float(jnp.mean(diff)) > 5 * float(jnp.std(diff)) / np.sqrt(N)


def test_loss_is_the_same_for_every_reading_of_the_exact_model():
  sde = sdes.VPSDE()
  dm = analytic.DiffusedMixture(analytic.eight_gaussians(), sde)
  x0 = dm.data.sample(jr.key(6), 64)
  keys = jr.split(jr.key(7), 64)
  readings = {
      Prediction.SCORE: dm.score,
      Prediction.EPS: dm.eps,
      Prediction.X0: dm.denoised,
      Prediction.V: lambda x, t: sde.alpha(t) * dm.eps(x, t) - sde.sigma(t) * dm.denoised(x, t),
  }
  values = {}
  for pred, fn in readings.items():
    f = lambda x, k: losses.dsm_loss(batched(lambda p, y, t: fn(y, t)), None, x, None, k, sde=sde,
                                     prediction=pred, weighting=losses.Weighting.LIKELIHOOD).loss
    values[pred] = jax.vmap(f)(x0, keys)
  for pred in readings:
    # Conversions divide by sigma and alpha (>= 3e-3 and 7e-3 here): float32 error grows accordingly.
    np.testing.assert_allclose(values[pred], values[Prediction.EPS], rtol=2e-3, atol=1e-3)


def test_likelihood_weighting_is_g2_over_sigma2():
  sde = sdes.VPSDE()
  t = jnp.array(0.4)
  beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
  np.testing.assert_allclose(losses.weight(sde, t, losses.Weighting.LIKELIHOOD),
                             beta / sde.sigma(t) ** 2, rtol=1e-4)  # jvp-derived g^2 in float32


def test_ncsn_loss():
  sde = sdes.VESDE(sigma_min=0.01, sigma_max=10.0)
  dm = analytic.DiffusedMixture(analytic.eight_gaussians(), sde)
  x0 = dm.data.sample(jr.key(8), N)
  keys = jr.split(jr.key(9), N)

  def run(model_fn):
    f = lambda x, k: losses.ncsn_loss(model_fn, None, x, None, k, sde=sde, num_scales=10)
    return jax.jit(jax.vmap(f))(x0, keys)

  exact = run(batched(lambda p, x, t: dm.score(x, t)))
  # Times are exactly the ladder's levels.
  ladder_ts = np.linspace(1.0, 0.0, 10)
  assert np.all(np.min(np.abs(np.asarray(exact.t)[:, None] - ladder_ts), axis=1) < 1e-5)
  diff = run(batched(lambda p, x, t: 0.8 * dm.score(x, t))).loss - exact.loss
  assert float(jnp.mean(diff)) > 5 * float(jnp.std(diff)) / np.sqrt(N)


def test_noise_shape_mismatch():
  sde = sdes.VPSDE()
  with pytest.raises(ValueError, match="noise must have the shape of x0"):
    losses.dsm_loss_at(batched(lambda p, x, t: x), None, jnp.ones(3), None, 0.5, jnp.ones(2),
                       sde=sde)


# --- loss_fn(params, frozen, example, key): conditions, frozen parameters, the dropout key ---------


def dict_model_fn(params, x, t, cond, *, key=None, train=False):
  """A batched jnp network reading a dict condition {"tokens", "mask"}: eps = w x t + pooled tokens."""
  del key, train
  mask = cond["mask"].astype(x.dtype)
  pooled = jnp.sum(params["table"][cond["tokens"]] * mask[..., None], axis=1) / jnp.maximum(
      jnp.sum(mask, axis=1, keepdims=True), 1.0)
  return params["w"] * x * t[:, None] + pooled


def test_dsm_loss_fn_reads_a_dict_condition_against_a_slow_reference():
  sde = sdes.VPSDE()
  params = {"w": jnp.array([0.5, -1.0]), "table": jr.normal(jr.key(10), (7, 2))}
  loss_fn = losses.make_dsm_loss_fn(dict_model_fn, sde, t_min=1e-3, cond_key="text")
  num = 4
  examples = {"x0": jr.normal(jr.key(11), (num, 2)),
              "text": {"tokens": jr.randint(jr.key(12), (num, 3), 0, 7),
                       "mask": jnp.arange(3)[None] < jnp.array([1, 2, 3, 2])[:, None]}}
  keys = jr.split(jr.key(13), num)
  out = jax.jit(jax.vmap(loss_fn, (None, None, 0, 0)))(params, None, examples, keys)
  table, w = np.asarray(params["table"], np.float64), np.asarray(params["w"], np.float64)
  for n in range(num):
    # The documented keys: t_key, noise_key, dropout_key = split(key, 3).
    t_key, noise_key, _ = jr.split(keys[n], 3)
    t = float(jr.uniform(t_key, (), minval=1e-3, maxval=1.0))
    noise = np.asarray(jr.normal(noise_key, (2,)), np.float64)
    log_alpha = -0.5 * (0.1 * t + 0.5 * 19.9 * t**2)  # VP closed form (Song et al. 2021, eq. 33)
    alpha, sigma = np.exp(log_alpha), np.sqrt(1 - np.exp(2 * log_alpha))
    x_t = alpha * np.asarray(examples["x0"][n], np.float64) + sigma * noise
    tokens = np.asarray(examples["text"]["tokens"][n])[np.asarray(examples["text"]["mask"][n])]
    eps_hat = w * x_t * t + table[tokens].mean(0)
    # float32 network and noising against float64 by hand.
    np.testing.assert_allclose(out.loss[n], np.sum((eps_hat - noise) ** 2), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.t[n], t, rtol=1e-6)


def test_dsm_loss_passes_a_dropout_key_and_train():
  seen = []

  def model_fn(params, x, t, cond, *, key=None, train=False):
    seen.append((key is not None, train, cond))
    return x

  example = {"x0": jnp.ones(2), "label": jnp.int32(1)}
  losses.make_dsm_loss_fn(model_fn, sdes.VPSDE(), cond_key="label")(None, None, example, jr.key(0))
  (has_key, train, cond), = seen
  assert has_key and train and cond.shape == (1,) and int(cond[0]) == 1  # unit batch axis added


def test_dropout_network_sees_the_loss_key():
  """A dropout network under the loss: the loss depends on the key's dropout part, and without a
  key (or train=False) it equals the deterministic network."""
  from diffusion_jax.nets import ScoreMLP, as_model_fn
  net = ScoreMLP(hidden_sizes=(32,), embed_dim=8, dropout_rate=0.5)
  model_fn = as_model_fn(net)
  params = jax.jit(net.init)(jr.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))
  sde, x0, noise, t = sdes.VPSDE(), jnp.array([0.3, -0.2]), jnp.array([1.0, 0.5]), 0.4
  at = jax.jit(lambda key, train: losses.dsm_loss_at(model_fn, params, x0, None, t, noise, sde=sde,
                                                     key=key, train=train).loss,
               static_argnames="train")
  a, b = at(jr.key(1), True), at(jr.key(2), True)
  assert float(a) != float(b)
  np.testing.assert_array_equal(at(jr.key(1), True), a)  # same key, same dropout mask
  np.testing.assert_array_equal(at(jr.key(1), False), at(None, True))  # no dropout either way


def test_frozen_parameters_are_read_through_combine_fn_and_not_differentiated():
  sde = sdes.VPSDE()
  model_fn = gaussian_score_model(sde)
  combine = lambda params, frozen: {"m": params["m"], "log_v": frozen["log_v"]}
  loss_fn = losses.make_dsm_loss_fn(model_fn, sde, prediction=Prediction.SCORE, combine_fn=combine)
  whole = losses.make_dsm_loss_fn(model_fn, sde, prediction=Prediction.SCORE)
  example, key = {"x0": jnp.array([0.2, 0.1])}, jr.key(3)
  trainable, frozen = {"m": M_TRUE + 0.1}, {"log_v": jnp.log(V_TRUE)}
  np.testing.assert_array_equal(loss_fn(trainable, frozen, example, key).loss,
                                whole({**trainable, **frozen}, None, example, key).loss)
  grads = jax.grad(lambda p: loss_fn(p, frozen, example, key).loss)(trainable)
  assert set(grads) == {"m"}
  with pytest.raises(ValueError, match="combine_fn"):
    whole(trainable, frozen, example, key)


def test_loss_fn_errors():
  sde = sdes.VPSDE()
  loss_fn = losses.make_dsm_loss_fn(dict_model_fn, sde, cond_key="label")
  with pytest.raises(ValueError, match="cond_key='label' is not an entry of the example"):
    loss_fn(None, None, {"x0": jnp.ones(2)}, jr.key(0))
  with pytest.raises(ValueError, match="example must be a dict with an 'x0' entry"):
    loss_fn(None, None, jnp.ones(2), jr.key(0))
  with pytest.raises(TypeError, match="weighting must be a Weighting"):
    losses.make_dsm_loss_fn(dict_model_fn, sde, weighting="simple")
  with pytest.raises(ValueError, match=r"t_min must be a float in \[0, T=1.0\)"):
    losses.make_dsm_loss_fn(dict_model_fn, sde, t_min=1.5)
  with pytest.raises(TypeError, match="sde must be an AbstractLinearSDE"):
    losses.make_edm_loss_fn(dict_model_fn, sdes.VPSDE)
  with pytest.raises(ValueError, match="p_std must be a finite float > 0"):
    losses.make_edm_loss_fn(dict_model_fn, sde, p_std=0.0)
  with pytest.raises(ValueError, match="differs from the model_fn's EDMPrecond.sigma_data"):
    losses.make_edm_loss_fn(EDMPrecond(dict_model_fn, sde, 0.5), sde, sigma_data=1.0)


# --- EDM --------------------------------------------------------------------------------------------


def vp_time_at_log_snr(lam):
  """VP's inverse log-SNR in closed form: alpha^2 = sigmoid(lam), and -2 log alpha is the quadratic
  beta_min t + (beta_max - beta_min) t^2 / 2 (an independent route to schedules.time_at_log_snr)."""
  c = np.log1p(np.exp(-lam))  # -log sigmoid(lam) = -2 log alpha
  a, b = 0.5 * (20.0 - 0.1), 0.1
  return (-b + np.sqrt(b**2 + 4 * a * c)) / (2 * a)


def test_edm_loss_matches_a_slow_reference():
  sde, sd = sdes.VPSDE(), 0.5
  dm = analytic.DiffusedMixture(analytic.eight_gaussians(), sde)
  model_fn = batched(lambda p, x, t: dm.denoised(x, t))
  loss_fn = jax.jit(jax.vmap(losses.make_edm_loss_fn(model_fn, sde, sigma_data=sd),
                             (None, None, 0, 0)))
  num = 4
  x0 = dm.data.sample(jr.key(20), num)
  keys = jr.split(jr.key(21), num)
  out = loss_fn(None, None, {"x0": x0}, keys)
  for n in range(num):
    sigma_key, noise_key, _ = jr.split(keys[n], 3)  # the documented keys
    log_sigma = -1.2 + 1.2 * float(jr.normal(sigma_key, ()))
    t = float(np.clip(vp_time_at_log_snr(-2 * log_sigma), 1e-5, 1.0))
    log_alpha = -0.5 * (0.1 * t + 0.5 * 19.9 * t**2)
    alpha, sigma = np.exp(log_alpha), np.sqrt(-np.expm1(2 * log_alpha))
    s = sigma / alpha
    x_t = alpha * np.asarray(x0[n], np.float64) + sigma * np.asarray(jr.normal(noise_key, (2,)))
    denoised = np.asarray(dm.denoised(jnp.asarray(x_t, jnp.float32), t), np.float64)
    want = (s**2 + sd**2) / (s * sd) ** 2 * np.sum((denoised - np.asarray(x0[n])) ** 2)
    # float32 bisection for t (the weight's s moves with t), noising and oracle vs float64.
    np.testing.assert_allclose(out.t[n], t, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.edm_sigma[n], s, rtol=1e-3)
    np.testing.assert_allclose(out.loss[n], want, rtol=2e-3)


def test_edm_noise_levels_are_log_normal():
  sde = sdes.VPSDE()  # sigma~ spans [1e-3, 150]: the log-normal is cut beyond 4.7 std only
  model_fn = batched(lambda p, x, t: x)
  f = jax.jit(jax.vmap(lambda k: losses.edm_loss(model_fn, None, jnp.zeros(2), None, k, sde=sde,
                                                 p_mean=-1.2, p_std=1.2)))
  n = 20_000
  log_sigma = np.log(np.asarray(f(jr.split(jr.key(22), n)).edm_sigma, np.float64))
  # Mean: 5 standard errors 5 * 1.2 / sqrt(n) = 0.042; std: SE of a std ~ 1.2 / sqrt(2n) = 0.006, x5.
  assert abs(log_sigma.mean() + 1.2) < 0.042
  assert abs(log_sigma.std() - 1.2) < 0.03


@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.VESDE(sigma_max=20.0)], ids=["vp", "ve"])
def test_exact_denoiser_minimises_the_expected_edm_loss(sde):
  dm = analytic.DiffusedMixture(analytic.eight_gaussians(), sde)
  n = 8000
  x0 = dm.data.sample(jr.key(23), n)
  keys = jr.split(jr.key(24), n)

  # D = a E[x0 | x_t] + b + c x_t / alpha: (1, 0, 0) is the exact denoiser; one compiled program.
  def perturbed(p, x, t):
    return p[0] * dm.denoised(x, t) + p[1] + p[2] * (x / sde.alpha(t) - dm.denoised(x, t))

  loss_fn = losses.make_edm_loss_fn(batched(perturbed), sde)
  run = jax.jit(jax.vmap(loss_fn, (None, None, 0, 0)))
  base = run(jnp.array([1.0, 0.0, 0.0]), None, {"x0": x0}, keys).loss
  for p in ([1.1, 0.0, 0.0], [1.0, 0.05, 0.0], [1.0, 0.0, 0.1]):
    diff = run(jnp.array(p), None, {"x0": x0}, keys).loss - base  # common random numbers
    assert float(jnp.mean(diff)) > 5 * float(jnp.std(diff)) / np.sqrt(n), p


def test_edm_loss_of_the_preconditioned_exact_f_is_the_exact_denoiser_loss():
  """EDMPrecond around the raw network F* whose output is E[x0 | x~] gives the loss of the exact
  denoiser, example by example (the wrapper and the loss see the same x_t)."""
  from test_parameterization import gaussian_f_target
  sde, sd = sdes.SubVPSDE(), 0.6
  m, v = jnp.array([0.8, -0.5]), jnp.array([0.3, 0.3])
  gmm = analytic.GaussianMixture.create(jnp.ones(1), m[None], v[None])
  dm = analytic.DiffusedMixture(gmm, sde)
  x0 = gmm.sample(jr.key(25), 256)
  keys = jr.split(jr.key(26), 256)
  run = lambda fn: jax.jit(jax.vmap(losses.make_edm_loss_fn(fn, sde, sigma_data=sd),
                                    (None, None, 0, 0)))(None, None, {"x0": x0}, keys)
  ours = run(EDMPrecond(gaussian_f_target(m, v, sd), sde, sd))
  exact = run(batched(lambda p, x, t: dm.denoised(x, t)))
  # Per-example losses lambda ||D - x0||^2 with lambda up to 1/s^2 ~ 1e5 at sub-VP's t_min: the
  # float32 difference of the two D's (~1e-6) is amplified; relative 1e-3.
  np.testing.assert_allclose(ours.loss, exact.loss, rtol=1e-3, atol=1e-4)
