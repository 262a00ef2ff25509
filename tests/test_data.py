"""Toy 2-D data: determinism, shard-independent batches, and each distribution's defining geometry."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import analytic, data

N = 4000
DATASETS = {
    "eight_gaussians": data.eight_gaussians(),
    "checkerboard": data.checkerboard(),
    "two_moons": data.two_moons(),
    "swiss_roll": data.swiss_roll(),
    "gaussian_mixture": data.gaussian_mixture(analytic.GaussianMixture.create(
        [0.2, 0.8], [[-1.0, 0.0], [2.0, 1.0]], [[0.1, 0.4], [0.3, 0.05]])),
}


@pytest.fixture(scope="module", params=sorted(DATASETS))
def named(request):
  dataset = DATASETS[request.param]
  return request.param, dataset, jax.jit(dataset.sample, static_argnums=1)


def test_deterministic_given_key_and_shapes(named):
  _, dataset, sample_fn = named
  x = np.asarray(sample_fn(jr.key(0), N))
  assert x.shape == (N, 2) and dataset.shape == (2,) and np.all(np.isfinite(x))
  np.testing.assert_array_equal(x, sample_fn(jr.key(0), N))  # bitwise: same program, same key
  # Eager and jitted code may fuse differently: equal up to float32 rounding.
  np.testing.assert_allclose(x, dataset.sample(jr.key(0), N), rtol=1e-6, atol=1e-6)
  assert not np.allclose(x, sample_fn(jr.key(1), N))


@pytest.mark.parametrize("name", ["eight_gaussians", "checkerboard"])  # the logic is generic
def test_batch_rows_do_not_depend_on_the_split(name):
  """Any [start, stop) slice of the step-s batch equals those rows of the whole batch."""
  dataset = DATASETS[name]
  batch_fn = jax.jit(dataset.batch, static_argnames=("batch_size", "start", "stop"))
  whole = batch_fn(jr.key(3), 5, batch_size=16)["x0"]
  parts = [batch_fn(jr.key(3), 5, batch_size=16, start=a, stop=b)["x0"] for a, b in [(0, 6), (6, 16)]]
  # Bitwise, although each part is another compiled program: this is what multi-host input and
  # exact resumption rely on.
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  assert not np.allclose(batch_fn(jr.key(3), 6, batch_size=16)["x0"], whole)  # steps differ


def test_eight_gaussians_sit_on_the_ring():
  x = np.asarray(DATASETS["eight_gaussians"].sample(jr.key(0), N))
  angles = np.arange(8) * 2 * math.pi / 8
  centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], -1)
  d = np.linalg.norm(x[:, None] - centres[None], axis=-1)
  nearest = np.argmin(d, axis=1)
  # Offsets from the nearest centre are N(0, 0.1^2 I): per-axis std 0.1 (MC error ~1.1% at n=4000;
  # modes 1.4 apart make misassignment negligible).
  offsets = x - centres[nearest]
  np.testing.assert_allclose(offsets.std(axis=0), 0.1, rtol=0.05)
  # Equal weights: each count is Binomial(4000, 1/8), std 21; allow 5 std.
  np.testing.assert_allclose(np.bincount(nearest, minlength=8), N / 8, atol=105)


def test_checkerboard_fills_the_dark_squares_uniformly():
  x = np.asarray(DATASETS["checkerboard"].sample(jr.key(0), N))
  assert np.all(np.abs(x) <= 2.0)
  cells = np.floor(x).astype(int) + 2  # column and row index 0..3
  assert np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)  # only dark squares
  counts = np.bincount(cells[:, 1] * 4 + cells[:, 0], minlength=16)
  dark = [r * 4 + c for r in range(4) for c in range(4) if (r + c) % 2 == 0]
  np.testing.assert_allclose(counts[dark], N / 8, atol=105)  # Binomial(4000, 1/8): 5 std
  # Uniform within a square: the fractional parts have mean 1/2 and variance 1/12.
  frac = x - np.floor(x)
  np.testing.assert_allclose(frac.mean(axis=0), 0.5, atol=0.025)  # 5 std of a mean, 0.289/sqrt(4000)
  np.testing.assert_allclose(frac.var(axis=0), 1 / 12, rtol=0.05)


def test_two_moons_lie_on_two_half_circles():
  x = np.asarray(DATASETS["two_moons"].sample(jr.key(0), N)) / 1.5 + np.array([0.5, 0.25])
  # Undo the scale and centring: the upper moon is the unit circle's upper half around (0, 0),
  # the lower one the lower half around (1, 0.5).
  r_upper = np.linalg.norm(x, axis=1)
  r_lower = np.linalg.norm(x - np.array([1.0, 0.5]), axis=1)
  dist = np.minimum(np.abs(r_upper - 1.0), np.abs(r_lower - 1.0))
  # Jitter N(0, 0.05^2) in output units = 0.033 here; radial error |N| has mean 0.8 * 0.033.
  assert np.median(dist) < 0.05
  upper = np.abs(r_upper - 1.0) < np.abs(r_lower - 1.0)
  # Two equally likely moons: Binomial(4000, 1/2) has std 32; allow 5 std.
  assert abs(upper.sum() - N / 2) < 160


def test_swiss_roll_radius_grows_with_the_angle():
  x = np.asarray(DATASETS["swiss_roll"].sample(jr.key(0), N)) / 0.2
  r = np.linalg.norm(x, axis=1)
  # u (cos u, sin u) with u in [1.5 pi, 4.5 pi]: the radius is u, the angle u mod 2 pi.
  assert r.min() > 1.5 * math.pi - 1.5 and r.max() < 4.5 * math.pi + 1.5  # jitter 0.25 here
  # Unwrap the polar angle onto the branch of u nearest to the radius; the residual r - u is the
  # radial part of the N(0, 0.25^2) jitter (tangential jitter moves u by only 0.25 / r <= 0.05),
  # and the turns are 2 pi apart, so a wrong branch would show up as a residual of ~6.
  angle = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * math.pi)
  u = angle + 2 * math.pi * np.round((r - angle) / (2 * math.pi))
  residual = r - u
  assert np.all(np.abs(residual) < 1.5)
  np.testing.assert_allclose(residual.std(), 0.25, rtol=0.1)  # MC error of a std ~1.1% at n=4000


def test_gaussian_mixture_moments_match_the_analytic_ones():
  dataset = DATASETS["gaussian_mixture"]
  x = np.asarray(jax.jit(dataset.sample, static_argnums=1)(jr.key(0), 20_000))
  # MC error of a mean: sqrt(var / n) <= sqrt(2.2 / 20000) = 0.01; of a covariance entry ~0.02.
  np.testing.assert_allclose(x.mean(axis=0), dataset.mixture.mean(), atol=0.05)
  np.testing.assert_allclose(np.cov(x.T), dataset.mixture.covariance(), atol=0.08)


def test_bad_requests():
  dataset = DATASETS["checkerboard"]
  with pytest.raises(ValueError, match="num must be an int >= 1"):
    dataset.sample(jr.key(0), 0)
  with pytest.raises(ValueError, match="num must be an int >= 1"):
    dataset.sample(jr.key(0), 4.0)
  with pytest.raises(ValueError, match="start < stop <= batch_size"):
    dataset.batch(jr.key(0), 0, 8, start=4, stop=12)
  with pytest.raises(ValueError, match="batch_size, start and stop must be ints"):
    dataset.batch(jr.key(0), 0, 8.0)
  with pytest.raises(ValueError, match="shape must be a tuple of ints >= 1"):
    data.ToyDataset(lambda key: jnp.zeros(2), (2, 0))
  with pytest.raises(TypeError, match="mixture must be an analytic.GaussianMixture"):
    data.labelled_mixture(DATASETS["checkerboard"])
  assert data.ToyDataset(lambda key: jnp.zeros(3), 3).shape == (3,)  # an int n is (n,)


# --- the labelled mixture ------------------------------------------------------------------------

LABELLED_MIX = analytic.GaussianMixture.create(
    [0.5, 0.3, 0.2], [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], [[0.3, 0.1], [0.1, 0.4], [0.2, 0.2]])
LABELLED = data.labelled_mixture(LABELLED_MIX)


def test_labelled_batches_carry_the_component_as_label():
  batch = jax.jit(LABELLED.batch, static_argnames=("batch_size",))(jr.key(4), 3, batch_size=30_000)
  x, y = np.asarray(batch["x0"], np.float64), np.asarray(batch["label"])
  assert batch["label"].dtype == jnp.int32 and LABELLED.num_classes == 3 and LABELLED.shape == (2,)
  # Class frequencies are the weights: Binomial SE <= sqrt(0.25 / 30000) = 0.003; 5 SE.
  np.testing.assert_allclose(np.bincount(y, minlength=3) / len(y), LABELLED_MIX.weights, atol=0.015)
  for k in range(3):
    xk = x[y == k]
    mean, var = np.asarray(LABELLED_MIX.means[k]), np.asarray(LABELLED_MIX.variances[k])
    # x0 | label = k is component k: 5 standard errors for the mean and for the variance.
    assert np.all(np.abs(xk.mean(0) - mean) < 5 * np.sqrt(var / len(xk)))
    assert np.all(np.abs(xk.var(0) - var) < 5 * var * np.sqrt(2 / len(xk)))


def test_labelled_batch_is_a_pure_function_of_key_step_and_rows():
  batch_fn = jax.jit(LABELLED.batch, static_argnames=("batch_size", "start", "stop"))
  whole = batch_fn(jr.key(3), 5, batch_size=16)
  parts = [batch_fn(jr.key(3), 5, batch_size=16, start=a, stop=b) for a, b in [(0, 7), (7, 16)]]
  for name in ("x0", "label"):
    np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), whole[name])  # bitwise
  # sample() draws the x0 of example() for the same key, without the label.
  keys = jr.split(jr.key(6), 8)
  np.testing.assert_array_equal(jax.vmap(LABELLED.sample_fn)(keys), jax.vmap(LABELLED.example)(keys)["x0"])


def test_sample_class_draws_one_component():
  x = np.asarray(LABELLED.sample_class(jr.key(7), 1, 20_000), np.float64)
  mean, var = np.asarray(LABELLED_MIX.means[1]), np.asarray(LABELLED_MIX.variances[1])
  assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / len(x)))  # 5 standard errors
  with pytest.raises(ValueError, match=r"label must lie in 0..2"):
    LABELLED.sample_class(jr.key(7), 3, 10)
