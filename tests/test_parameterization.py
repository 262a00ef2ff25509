"""Score / eps / x0 / v conversions: round trips, and agreement with the exact oracle."""

import itertools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import analytic, sdes
from diffusion_jax.parameterization import EDMPrecond, NetworkScore, Prediction, convert, edm_coefficients
import harness as H

SDES, IDS = list(H.SDES), list(H.SDE_IDS)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("source, target", list(itertools.permutations(Prediction, 2)))
def test_round_trip(sde, source, target):
  x = jr.normal(jr.key(0), (5,))
  pred = jr.normal(jr.key(1), (5,))
  for t in (0.05, 0.5, 0.95):
    alpha, sigma = sde.marginal(t)
    there = convert(pred, x, alpha, sigma, source=source, target=target)
    back = convert(there, x, alpha, sigma, source=target, target=source)
    # Conversions mix x and pred with factors alpha, sigma, 1/alpha, 1/sigma, and the way back cancels
    # what the way there added (e.g. score = (alpha x0 - x) / sigma^2): float32 rounding of the
    # intermediates (eps * (|x| + |pred|)) is amplified by up to kappa = max(alpha, sigma, 1/alpha,
    # 1/sigma)^2 (sub-VP's sigma is 0.03 at t = 0.05, VE's is 33 at t = 0.95). Allow 4x that bound.
    kappa = max(float(alpha), float(sigma), 1 / float(alpha), 1 / float(sigma)) ** 2
    size = 1 + float(jnp.max(jnp.abs(x))) + float(jnp.max(jnp.abs(pred)))
    bound = 4 * np.finfo(np.float32).eps * size * kappa
    np.testing.assert_allclose(back, pred, rtol=1e-5, atol=bound)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_conversions_of_the_exact_model(sde):
  dm = analytic.DiffusedMixture(analytic.eight_gaussians(), sde)
  x, t = jnp.array([0.7, -1.1]), 0.3
  alpha, sigma = sde.marginal(t)
  eps = dm.eps(x, t)
  # score and x0 from eps reproduce the oracle's score and Tweedie posterior mean.
  np.testing.assert_allclose(convert(eps, x, alpha, sigma, source=Prediction.EPS,
                                     target=Prediction.SCORE), dm.score(x, t), rtol=1e-5)
  np.testing.assert_allclose(convert(eps, x, alpha, sigma, source=Prediction.EPS,
                                     target=Prediction.X0), dm.denoised(x, t), rtol=1e-5, atol=1e-6)
  # v = alpha eps - sigma x0 (Salimans & Ho 2022), written out here independently.
  v = convert(eps, x, alpha, sigma, source=Prediction.EPS, target=Prediction.V)
  np.testing.assert_allclose(v, alpha * eps - sigma * dm.denoised(x, t), rtol=1e-5, atol=1e-6)


def test_convert_is_jittable_and_vmappable():
  sde = sdes.VPSDE()
  xs = jr.normal(jr.key(2), (7, 3))
  ts = jnp.linspace(0.1, 0.9, 7)
  f = lambda x, t: convert(x * 0.5, x, sde.alpha(t), sde.sigma(t), source=Prediction.X0,
                           target=Prediction.SCORE)
  np.testing.assert_allclose(jax.jit(jax.vmap(f))(xs, ts),
                             jnp.stack([f(xs[i], ts[i]) for i in range(7)]), rtol=1e-6)


def test_bad_prediction_type():
  with pytest.raises(ValueError, match="source must be a Prediction"):
    convert(jnp.ones(2), jnp.ones(2), 1.0, 1.0, source="eps", target=Prediction.SCORE)


# --- the batch boundary: NetworkScore over any condition pytree ------------------------------------


def dict_model_fn(params, x, t, cond, *, key=None, train=False):
  """A batched jnp network reading a dict condition {"tokens": (B, L) int, "mask": (B, L) bool}:
  eps = w * x * t + (masked mean of the token values)."""
  del key, train
  mask = cond["mask"].astype(x.dtype)
  pooled = jnp.sum(params["table"][cond["tokens"]] * mask[..., None], axis=1) / jnp.maximum(
      jnp.sum(mask, axis=1, keepdims=True), 1.0)
  return params["w"] * x * t[:, None] + pooled


DICT_PARAMS = {"w": jnp.array([0.5, -1.0]), "table": jr.normal(jr.key(3), (7, 2))}


def test_vmap_of_network_score_equals_batched_model_fn_with_a_dict_condition():
  num = 5
  x = jr.normal(jr.key(4), (num, 2))
  t = jnp.linspace(0.1, 0.9, num)
  cond = {"tokens": jr.randint(jr.key(5), (num, 4), 0, 7),
          "mask": jnp.arange(4)[None, :] < jnp.array([1, 2, 3, 4, 2])[:, None]}
  score_fn = NetworkScore(dict_model_fn, DICT_PARAMS, sdes.VPSDE(), Prediction.EPS)
  per_example = jax.jit(jax.vmap(lambda x, t, c: score_fn.replace(cond=c).raw(x, t)))(x, t, cond)
  batched = dict_model_fn(DICT_PARAMS, x, t, cond)
  np.testing.assert_allclose(per_example, batched, rtol=1e-6, atol=1e-7)  # the same float32 ops
  # The slow reference: a loop over examples, each pooled by hand.
  table = np.asarray(DICT_PARAMS["table"])
  for n in range(num):
    tokens = np.asarray(cond["tokens"][n])[np.asarray(cond["mask"][n])]
    want = np.asarray(DICT_PARAMS["w"]) * np.asarray(x[n]) * float(t[n]) + table[tokens].mean(0)
    np.testing.assert_allclose(per_example[n], want, rtol=1e-5, atol=1e-6)  # float32
  # The condition is a leaf: a new condition does not change the static structure.
  other = score_fn.replace(cond=jax.tree.map(lambda a: a[0], cond))
  assert jax.tree.structure(other) == jax.tree.structure(score_fn.replace(cond=other.cond))


def test_network_score_gets_no_key_and_train_false():
  seen = {}

  def model_fn(params, x, t, cond, *, key=None, train=False):
    seen.update(key=key, train=train, cond_shape=jnp.shape(cond))
    return x

  NetworkScore(model_fn, None, sdes.VPSDE(), cond=jnp.int32(2)).raw(jnp.ones(3), 0.5)
  assert seen == {"key": None, "train": False, "cond_shape": (1,)}


def test_network_score_errors():
  with pytest.raises(TypeError, match="model_fn must be callable"):
    NetworkScore("net", None, sdes.VPSDE())
  with pytest.raises(TypeError, match="sde must be an AbstractLinearSDE"):
    NetworkScore(dict_model_fn, None, sdes.VPSDE)
  with pytest.raises(TypeError, match="prediction must be a Prediction"):
    NetworkScore(dict_model_fn, None, sdes.VPSDE(), "eps")
  with pytest.raises(ValueError, match="t must be a scalar time"):
    NetworkScore(lambda p, x, t, c, **kw: x, None, sdes.VPSDE()).raw(jnp.ones(2), jnp.ones(2))


# --- EDM preconditioning ---------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 80.0])
def test_edm_coefficients_give_unit_variance_input_and_target(sigma):
  """Karras et al. 2022, App. B.6: for data of variance sd^2, c_in makes the network's input and
  c_skip, c_out its training target (x0 - c_skip x~)/c_out of unit variance, with c_skip the
  minimiser of that variance. Checked from those definitions, not from Table 1's formulas."""
  sd = 0.5
  c_skip, c_out, c_in, c_noise = (float(c) for c in edm_coefficients(jnp.float32(sigma), sd))
  # x~ = x0 + sigma n with x0 ~ (0, sd^2), n ~ (0, 1) independent.
  np.testing.assert_allclose(c_in**2 * (sd**2 + sigma**2), 1.0, rtol=1e-5)
  target_var = lambda c: ((1 - c) ** 2 * sd**2 + c**2 * sigma**2)
  np.testing.assert_allclose(target_var(c_skip) / c_out**2, 1.0, rtol=1e-5)
  # c_skip minimises the target variance: the derivative vanishes there.
  h = 1e-3
  assert target_var(c_skip) <= min(target_var(c_skip - h), target_var(c_skip + h))
  np.testing.assert_allclose(np.exp(4 * c_noise), sigma, rtol=1e-5)  # c_noise = log(sigma)/4


def gaussian_f_target(m, v, sigma_data):
  """The raw network F whose EDM-wrapped output is E[x0 | x~] for data N(m, diag(v)), written in
  F's own inputs (u = c_in x~, c_noise): F = (E[x0 | x~] - c_skip x~) / c_out."""

  def raw_model_fn(params, u, c_noise, cond, *, key=None, train=False):
    del params, cond, key, train
    s = jnp.exp(4.0 * c_noise)[:, None]  # EDM's sigma~ back from c_noise = log(s)/4
    x_tilde = u * jnp.sqrt(s**2 + sigma_data**2)  # undo c_in
    posterior_mean = m + v / (v + s**2) * (x_tilde - m)  # x~ | x0 ~ N(x0, s^2): Gaussian conjugacy
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s * sigma_data / jnp.sqrt(s**2 + sigma_data**2)
    return (posterior_mean - c_skip * x_tilde) / c_out

  return raw_model_fn


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_edm_precond_of_the_exact_f_is_the_exact_posterior_mean(sde):
  m, v = jnp.array([0.6, -1.2, 0.1]), jnp.array([0.3, 0.05, 1.5])
  gmm = analytic.GaussianMixture.create(jnp.ones(1), m[None], v[None])
  dm = analytic.DiffusedMixture(gmm, sde)
  sigma_data = 0.7
  model_fn = EDMPrecond(gaussian_f_target(m, v, sigma_data), sde, sigma_data)
  ts = jnp.array([0.02, 0.1, 0.4, 0.8])
  x = jr.normal(jr.key(6), (4, 3)) * 2.0
  ours = model_fn(None, x, ts, None)
  exact = jax.vmap(dm.denoised)(x, ts)  # Tweedie on x_t through the mixture's closed-form score
  # float32: the posterior mean is recovered from F through c_skip, c_out (each O(1) here); the
  # oracle divides by alpha(t) >= 0.02 (VP at t = 0.8).
  np.testing.assert_allclose(ours, exact, rtol=1e-4, atol=1e-4)
  # Through NetworkScore as an x0 model: the score is the mixture's score.
  # score = (alpha x0 - x)/sigma^2 turns x0's float32 rounding (~1e-6) into 1e-6 alpha/sigma^2
  # (sub-VP's sigma^2 is 4e-5 at t = 0.02), so compare sigma^2 score, the scale-free part.
  score_fn = NetworkScore(model_fn, None, sde, Prediction.X0)
  var = sde.sigma(ts)[:, None] ** 2
  np.testing.assert_allclose(var * jax.vmap(score_fn)(x, ts), var * jax.vmap(dm.score)(x, ts),
                             rtol=1e-4, atol=1e-4)


def test_edm_precond_errors():
  with pytest.raises(ValueError, match="sigma_data must be a finite float > 0"):
    EDMPrecond(dict_model_fn, sdes.VPSDE(), 0.0)
  with pytest.raises(TypeError, match="sde must be an AbstractLinearSDE"):
    EDMPrecond(dict_model_fn, "vp", 0.5)
