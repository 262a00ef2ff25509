"""The lecture's baseline families (diffusion_jax.baselines) against answers computed another way:
the discretised logistic against quadrature of its density and against normalisation; the
PixelCNN's ordering against its Jacobian and its exact likelihood against a sum over every image
of a 2x2 three-level world; the VAE's ELBO and IWAE bounds against log p(x) by Gauss-Hermite
quadrature over a one-dimensional latent; the flow's log-density against the Jacobian's
log-determinant by autodiff, against a closed-form Gaussian, and its inverse against its input;
the GAN's losses and R1 penalty by hand and by finite differences, and its two-player game on a
1-D Gaussian that a linear generator can match exactly.
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax.baselines import discretized, flow, gan, pixelcnn, vae
from diffusion_jax.data.images import model_to_levels


def _centres(levels, num_levels):
  return -1.0 + (2.0 * np.asarray(levels) + 1.0) / num_levels


def _perturbed(params):
  """params + 0.1 N(0, 1): the zero-initialised last layers (gated blocks, couplings) made live."""
  return jax.tree.map(lambda p: p + 0.1 * jr.normal(jr.key(1), p.shape), params)


# ---------------------------------------------------------------- discretised logistic mixture


def test_discretized_logistic_is_its_density_integrated_over_each_cell():
  L, mu, log_s = 17, 0.13, np.log(0.2)
  k = np.arange(L)
  got = np.exp(np.asarray(discretized.logistic_cell_logprob(
      jnp.asarray(_centres(k, L), jnp.float32), mu, log_s, L)))
  # Trapezoid quadrature of the logistic density over each cell; the end cells run to +-40 s.
  s = np.exp(log_s)
  edges = np.concatenate([[mu - 40 * s], -1.0 + 2.0 * np.arange(1, L) / L, [mu + 40 * s]])
  want = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    y = np.linspace(lo, hi, 20001)
    pdf = np.exp(-(y - mu) / s) / (s * (1 + np.exp(-(y - mu) / s)) ** 2)
    want.append(np.trapezoid(pdf, y))
  # float32 log-sigmoids against a 20,001-point float64 trapezoid: agreement to 1e-5.
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_discretized_mixture_sums_to_one_and_is_finite_far_from_its_mean():
  L, K = 5, 3
  rng = np.random.default_rng(0)
  logits, means, log_scales = (jnp.asarray(rng.normal(size=(K,)), jnp.float32) for _ in range(3))
  x = jnp.asarray(_centres(np.arange(L), L), jnp.float32)
  p = jnp.exp(discretized.mixture_logprob(x, *(jnp.broadcast_to(v, (L, K)) for v in
                                               (logits, means, log_scales)), L))
  # Five float32 terms of size ~0.2: summing to one within float32 rounding.
  np.testing.assert_allclose(float(p.sum()), 1.0, atol=1e-6)
  # A very narrow component 1.5 away: both CDFs round to 1 in float32, the log must not.
  far = discretized.logistic_cell_logprob(jnp.float32(0.2), -1.3, -6.0, 5)
  assert np.isfinite(float(far)) and float(far) < -100


def test_discretized_sample_frequencies_match_probabilities():
  L, K, n = 5, 2, 40000
  logits = jnp.array([0.3, -0.2]); means = jnp.array([-0.4, 0.5]); log_scales = jnp.log(jnp.array([0.3, 0.15]))
  draws = discretized.mixture_sample(jr.key(0), *(jnp.broadcast_to(v, (n, K)) for v in
                                                 (logits, means, log_scales)), L)
  levels = np.round((np.asarray(draws) + 1.0) * L / 2 - 0.5).astype(int)
  freq = np.bincount(levels, minlength=L) / n
  x = jnp.asarray(_centres(np.arange(L), L), jnp.float32)
  p = np.exp(np.asarray(discretized.mixture_logprob(
      x, *(jnp.broadcast_to(v, (L, K)) for v in (logits, means, log_scales)), L)))
  # Binomial standard error sqrt(p(1-p)/n) <= 0.0025 at n = 40,000; 4 of them.
  np.testing.assert_allclose(freq, p, atol=0.01)


def test_discretized_rejects_mismatched_parameters():
  with pytest.raises(ValueError, match="num_mixtures"):
    discretized.split_params(jnp.zeros((2, 7)), 3)
  with pytest.raises(ValueError, match="num_levels"):
    discretized.logistic_cell_logprob(0.0, 0.0, 0.0, 1)


# ---------------------------------------------------------------- PixelCNN


@pytest.fixture(scope="module")
def pixel_model():
  module = pixelcnn.PixelCNN(features=8, num_blocks=2, num_mixtures=2)
  return module, _perturbed(module.init(jr.key(0), jnp.zeros((1, 4, 4, 1))))


def test_pixelcnn_output_depends_only_on_earlier_pixels(pixel_model):
  module, params = pixel_model
  x = jr.uniform(jr.key(2), (1, 4, 4, 1), minval=-1, maxval=1)
  jac = jax.jacfwd(lambda v: module.apply(params, v))(x)  # (1,4,4,1,6, 1,4,4,1)
  dep = np.abs(np.asarray(jac)).reshape(16, -1, 16).max(axis=1) > 0  # [out pixel, in pixel]
  earlier = np.tril(np.ones((16, 16), bool), k=-1)
  assert not (dep & ~earlier).any(), "an output reads its own pixel or a later one"
  # No blind spot: with two blocks, pixel (2, 2) reads every pixel of the two rows above it
  # within the stacks' reach and the pixels to its left.
  assert dep[10, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]].all()


def test_pixelcnn_likelihood_is_normalised_over_every_image(pixel_model):
  module, params = pixel_model
  L = 3
  images = np.array(list(itertools.product(range(L), repeat=4))).reshape(-1, 2, 2, 1)
  x = jnp.asarray(_centres(images, L), jnp.float32)
  logp = pixelcnn.log_likelihood(module, params, x, L)
  # 81 images; float32 log-probabilities summed in float64: one within 1e-5.
  np.testing.assert_allclose(np.exp(np.asarray(logp, np.float64)).sum(), 1.0, atol=1e-5)


def test_pixelcnn_samples_follow_its_likelihood(pixel_model):
  module, params = pixel_model
  L, n = 3, 20000
  draws = jax.jit(lambda k: pixelcnn.sample(module, params, k, (n, 1, 2, 1), L))(jr.key(3))
  levels = np.round((np.asarray(draws) + 1.0) * L / 2 - 0.5).astype(int).reshape(n, 2)
  freq = np.bincount(levels[:, 0] * L + levels[:, 1], minlength=L * L) / n
  grid = np.array(list(itertools.product(range(L), repeat=2))).reshape(-1, 1, 2, 1)
  p = np.exp(np.asarray(pixelcnn.log_likelihood(
      module, params, jnp.asarray(_centres(grid, L), jnp.float32), L)))
  # Binomial standard error <= sqrt(0.25/20000) = 0.0035; 4 of them.
  np.testing.assert_allclose(freq, p, atol=0.014)


# ---------------------------------------------------------------- VAE


class _MLPEncoder(nn.Module):
  latent_dim: int = 1

  @nn.compact
  def __call__(self, x):
    h = nn.tanh(nn.Dense(16)(x.reshape(x.shape[0], -1)))
    mean, log_var = jnp.split(nn.Dense(2 * self.latent_dim)(h), 2, -1)
    return mean, log_var


class _MLPDecoder(nn.Module):
  num_mixtures: int = 1

  @nn.compact
  def __call__(self, z):
    h = nn.tanh(nn.Dense(16)(z))
    return nn.Dense(2 * 3 * self.num_mixtures)(h).reshape(z.shape[0], 1, 2, 1, 3 * self.num_mixtures)


def test_vae_bounds_sit_below_the_exact_log_likelihood_and_tighten_with_k():
  L = 5
  module = vae.VAE(_MLPEncoder(), _MLPDecoder())
  params = module.init(jr.key(0), jnp.zeros((1, 1, 2, 1)), jnp.zeros((1, 1)))
  x = jnp.asarray(_centres(np.array([[1, 3], [0, 4], [2, 2]]), L), jnp.float32).reshape(3, 1, 2, 1)
  # log p(x) = log E_{z~N(0,1)} p(x|z) by 200-node Gauss-Hermite quadrature in z.
  nodes, weights = np.polynomial.hermite_e.hermegauss(200)
  weights = weights / weights.sum()
  z = jnp.asarray(nodes, jnp.float32)[:, None]
  dec = jax.vmap(lambda xi: vae._decoder_logprob(module, params, jnp.broadcast_to(xi, (200, 1, 2, 1)),
                                                  z, L))(x)  # (3, 200)
  exact = np.log(np.exp(np.asarray(dec, np.float64)) @ weights)
  n = 4000  # Monte Carlo repeats of each bound
  keys = jr.split(jr.key(1), n)
  elbo = np.asarray(jax.vmap(lambda k: vae.elbo(module, params, x, k, L)["elbo"])(keys)).mean(0)
  iwae = np.asarray(jax.vmap(lambda k: vae.iwae_bound(module, params, x, k, L, 32))(keys)).mean(0)
  # A random encoder is far from the posterior: the gaps are tenths of a nat, against Monte Carlo
  # standard errors of ~0.01 nats at n = 4000.
  assert (elbo < iwae).all() and (iwae < exact + 0.02).all(), (elbo, iwae, exact)
  assert (exact - iwae < exact - elbo).all()


def test_vae_elbo_is_reconstruction_minus_beta_kl():
  module = vae.VAE(vae.ConvEncoder(latent_dim=4, features=(8,)), vae.ConvDecoder((4, 4, 1), (8,)))
  params = module.init(jr.key(0), jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4)))
  x = jnp.asarray(_centres(np.random.default_rng(0).integers(0, 17, (2, 4, 4, 1)), 17), jnp.float32)
  out = vae.elbo(module, params, x, jr.key(1), 17, beta=4.0)
  # KL(N(m, v) || N(0, 1)) by Monte Carlo from the encoder's Gaussian, 200k draws.
  mean, log_var = module.apply(params, x, method=vae.VAE.encode)
  zs = mean + jnp.exp(0.5 * log_var) * jr.normal(jr.key(2), (200000, *mean.shape))
  mc = jnp.mean(vae._gaussian_logpdf(zs, mean, log_var) - vae._gaussian_logpdf(zs, 0.0, jnp.zeros_like(zs)), 0)
  # Standard error of the KL estimate ~ sqrt(2 KL / 2e5) < 0.01 for these KLs.
  np.testing.assert_allclose(out["kl"], mc, atol=0.02)
  np.testing.assert_allclose(out["elbo"], out["reconstruction"] - 4.0 * out["kl"], rtol=1e-6)
  draws = vae.sample(module, params, jr.key(3), 5, 17)
  assert draws.shape == (5, 4, 4, 1)
  np.testing.assert_allclose(np.asarray(discretized.to_cell_centre(draws, 17)), draws, atol=1e-6)


# ---------------------------------------------------------------- flow


@pytest.fixture(scope="module")
def glow():
  module = flow.Glow(num_scales=2, num_steps=2, hidden=8)
  return module, _perturbed(module.init(jr.key(0), jnp.zeros((1, 4, 4, 1))))


def test_flow_inverse_undoes_forward(glow):
  module, params = glow
  x = jr.normal(jr.key(2), (3, 4, 4, 1))
  zs, _ = module.apply(params, x)
  assert [z.shape[1:] for z in zs] == module.latent_shapes((4, 4, 1))
  back = module.apply(params, zs, method=flow.Glow.inverse)
  # float32 through 2 levels x 2 steps of affine maps and 1x1 inverses: 1e-5.
  np.testing.assert_allclose(back, x, atol=1e-5)


def test_flow_log_density_is_the_change_of_variables(glow):
  module, params = glow
  x = jr.normal(jr.key(3), (2, 4, 4, 1))

  def flat(v):  # one image -> its concatenated latents
    zs, _ = module.apply(params, v[None].reshape(1, 4, 4, 1))
    return jnp.concatenate([z.reshape(-1) for z in zs])

  for i in range(2):
    jac = jax.jacfwd(flat)(x[i].reshape(-1))
    z = flat(x[i].reshape(-1))
    want = jnp.sum(-0.5 * (z ** 2 + np.log(2 * np.pi))) + jnp.linalg.slogdet(jac)[1]
    # A 16x16 float32 Jacobian's log-determinant: agreement to 1e-4 nats.
    np.testing.assert_allclose(flow.log_density(module, params, x[i:i + 1])[0], want, atol=1e-4)


def test_flow_with_identity_couplings_is_a_closed_form_gaussian():
  module = flow.Glow(num_scales=1, num_steps=1, hidden=8)
  params = module.init(jr.key(0), jnp.zeros((1, 2, 2, 1)))  # zero couplings, identity actnorm
  w = np.asarray(params["params"]["steps_0_0_1"]["kernel"])
  scale = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
  params["params"]["steps_0_0_0"]["log_scale"] = jnp.log(scale)
  x = jr.normal(jr.key(4), (5, 2, 2, 1))
  # z = x_sq diag(s) W D, x_sq the squeezed pixel (a row), D = diag(1, 1, g, g) the zero coupling's
  # scale g = sigmoid(2) on the second half: x_sq ~ N(0, C) with C^-1 = A A^T, A = diag(s) W D.
  g = 1.0 / (1.0 + np.exp(-2.0))
  a = np.diag(scale) @ w @ np.diag([1.0, 1.0, g, g])
  prec = a @ a.T
  xs = np.asarray(flow.squeeze(x)).reshape(5, 4)
  want = -0.5 * np.einsum("ni,ij,nj->n", xs, prec, xs) - 2 * np.log(2 * np.pi) + 0.5 * np.linalg.slogdet(prec)[1]
  # float32: 1e-5 relative.
  np.testing.assert_allclose(flow.log_density(module, params, x), want, rtol=1e-5)


def test_flow_samples_and_dequantisation_have_the_right_support(glow):
  module, params = glow
  draws = flow.sample(module, params, jr.key(5), 3, (4, 4, 1))
  assert draws.shape == (3, 4, 4, 1) and np.isfinite(np.asarray(draws)).all()
  x = jnp.asarray(_centres(np.arange(16).reshape(1, 4, 4, 1), 17), jnp.float32)
  u = flow.dequantize(jr.key(6), x, 17)
  np.testing.assert_array_equal(model_to_levels(np.asarray(u), 17), np.arange(16).reshape(1, 4, 4, 1))
  with pytest.raises(ValueError, match="divisible"):
    flow.check_image_shape(module, (6, 6, 1))


# ---------------------------------------------------------------- GAN


class _LinearGenerator(nn.Module):
  latent_dim: int = 1

  @nn.compact
  def __call__(self, z):
    return nn.Dense(1)(z)  # G(z) = a z + b: can match a 1-D Gaussian exactly


class _QuadraticDiscriminator(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], 1)
    return nn.Dense(1)(jnp.concatenate([x, x ** 2], -1))[:, 0]  # tells Gaussians apart


def test_gan_discriminator_loss_and_r1_penalty_by_hand():
  g, dnet = gan.Generator((8, 8, 1), latent_dim=4, features=(8, 8)), gan.Discriminator((8, 8))
  params = {"generator": g.init(jr.key(0), jnp.zeros((1, 4))),
            "discriminator": dnet.init(jr.key(1), jnp.zeros((1, 8, 8, 1)))}
  x = jr.uniform(jr.key(2), (8, 8, 1), minval=-1, maxval=1)
  losses = gan.make_losses(g, dnet, r1_gamma=3.0)
  out = losses["discriminator"](params, None, {"x0": x}, jr.key(3))
  fake = g.apply(params["generator"], jr.normal(jr.key(3), (1, 4)))
  d = lambda v: dnet.apply(params["discriminator"], v[None])[0]  # noqa: E731
  sig = jax.nn.sigmoid
  want_adv = -np.log(sig(d(x))) - np.log(1 - sig(d(fake[0])))
  np.testing.assert_allclose(out["adversarial"], want_adv, rtol=1e-5)
  # R1 by central differences along a random unit direction u: (u . grad D)^2 summed over an
  # orthonormal basis would be |grad|^2; one direction checks the gradient itself.
  u = jr.normal(jr.key(4), x.shape); u = u / jnp.linalg.norm(u)
  eps = 1e-3
  fd = (d(x + eps * u) - d(x - eps * u)) / (2 * eps)
  grad = jax.grad(d)(x)
  # float32 central difference at eps 1e-3 on a piecewise-linear (leaky ReLU) net: 2e-3.
  np.testing.assert_allclose(fd, jnp.vdot(grad, u), atol=2e-3)
  np.testing.assert_allclose(out["r1"], jnp.sum(grad ** 2), rtol=1e-5)
  np.testing.assert_allclose(out["loss"], out["adversarial"] + 1.5 * out["r1"], rtol=1e-6)
  gen = losses["generator"](params, None, {"x0": x}, jr.key(5))
  assert gan.sample(g, params, jr.key(6), 3).shape == (3, 8, 8, 1) and np.isfinite(gen["loss"])
  with pytest.raises(ValueError, match="generator_loss"):
    gan.make_losses(g, dnet, generator_loss="wasserstein")


def test_gan_game_learns_a_gaussian():
  import optax

  from diffusion_jax import train

  g, dnet = _LinearGenerator(), _QuadraticDiscriminator()
  params = {"generator": g.init(jr.key(0), jnp.zeros((1, 1))),
            "discriminator": dnet.init(jr.key(1), jnp.zeros((1, 1)))}
  losses = gan.make_losses(g, dnet, r1_gamma=1.0)
  opt = {"generator": optax.adam(1e-2, b1=0.5), "discriminator": optax.adam(1e-2, b1=0.5)}
  step = jax.jit(train.make_multi_train_step(
      {k: (losses[k], opt[k]) for k in losses}, 0.0, order=("discriminator", "generator")))
  state = train.TrainState.create(params, opt)
  data_key = jr.key(7)
  for i in range(1500):
    batch = {"x0": 2.0 + 0.5 * jr.normal(jr.fold_in(data_key, i), (64, 1))}
    state, _ = step(state, batch, jr.key(8))
  x = np.asarray(gan.sample(g, state.params, jr.key(9), 20000))
  # The data are N(2, 0.5^2) and the generator starts near N(0, a^2): after 1,500 alternating
  # steps its mean and scale are the data's within 0.1 (the game's residual oscillation; Monte
  # Carlo error of 20,000 draws is 0.004).
  assert abs(x.mean() - 2.0) < 0.1 and abs(x.std() - 0.5) < 0.1, (x.mean(), x.std())
