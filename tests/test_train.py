"""Training: schedules and Adam against closed forms, EMA, train_step against a slow loop of
per-example gradients, frozen parameters untouched, metrics of any loss record, a two-player game
against its closed form, learning the exact GMM noise prediction, and errors."""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

from diffusion_jax import analytic, sdes, train
from diffusion_jax.nets import ScoreMLP

SDE = sdes.VPSDE()
MODEL = ScoreMLP(hidden_sizes=(32, 32), embed_dim=16)


@functools.lru_cache(maxsize=None)
def _params():
  return jax.jit(MODEL.init)(jr.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))


def test_lr_schedule_warmup_then_constant_and_cosine():
  schedule = train.make_lr_schedule(2e-3, warmup_steps=10)
  for step, want in [(0, 0.0), (5, 1e-3), (10, 2e-3), (1000, 2e-3)]:
    np.testing.assert_allclose(schedule(step), want, rtol=1e-6)  # float32 arithmetic
  cosine = train.make_lr_schedule(2e-3, warmup_steps=10, decay_steps=110)
  # After warm-up: lr/2 (1 + cos(pi (s - 10) / 100)).
  for step in [10, 35, 60, 110]:
    want = 1e-3 * (1 + np.cos(np.pi * (step - 10) / 100))
    np.testing.assert_allclose(cosine(step), want, rtol=1e-5, atol=1e-9)  # float32 cos
  np.testing.assert_allclose(train.make_lr_schedule(1e-3)(0), 1e-3)


def _adam_by_hand(grads, params, lr, clip, wd, b1=0.9, b2=0.999, eps=1e-8):
  """Two AdamW steps (Loshchilov & Hutter 2019, Alg. 2) on clipped gradients, written out."""
  m = v = np.zeros_like(params)
  for n, g in enumerate(grads, start=1):
    if clip is not None:
      g = g * min(1.0, clip / np.linalg.norm(g))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    m_hat, v_hat = m / (1 - b1**n), v / (1 - b2**n)
    params = params - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * params)
  return params


@pytest.mark.parametrize("clip, wd", [(None, 0.0), (1.0, 0.0), (0.5, 0.1)])
def test_optimizer_matches_adamw_by_hand(clip, wd):
  params = np.array([0.5, -1.0, 2.0])
  grads = [np.array([30.0, -40.0, 0.0]), np.array([0.1, 0.2, -0.3])]  # first one far above clip
  optimizer = train.make_optimizer(1e-2, grad_clip_norm=clip, weight_decay=wd)
  p, opt_state = jnp.asarray(params), optimizer.init(jnp.asarray(params))
  for g in grads:
    updates, opt_state = optimizer.update(jnp.asarray(g), opt_state, p)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(p, _adam_by_hand(grads, params, 1e-2, clip, wd), rtol=1e-5)  # float32


def test_ema_update_closed_form():
  ema, params = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([3.0, 0.0])}
  for _ in range(10):
    ema = train.ema_update(ema, params, 0.9)
  # Constant params p: ema_n = p + decay^n (ema_0 - p).
  np.testing.assert_allclose(ema["w"], np.array([3.0, 0.0]) + 0.9**10 * np.array([-2.0, -2.0]),
                             rtol=1e-6)  # float32, ten steps


@pytest.mark.parametrize("gamma", [1.0, 6.94])
def test_power_ema_weighs_update_s_by_its_closed_form_and_leaves_nothing_on_the_init(gamma):
  """EDM2's power EMA over T updates of scalar 'params' p_s = s-th basis vector: the average is
  the weight vector itself, w_s = (1 - beta(s)) (s / T)^(gamma + 1), written out here from the
  telescoping product; it sums to 1 and puts zero weight on the initial params."""
  T = 40
  decay = train.power_ema_decay(gamma)
  ema = {"w": jnp.zeros(T + 1).at[0].set(1.0)}  # component 0 tracks the init's weight
  for s in range(1, T + 1):
    ema = train.ema_update(ema, {"w": jnp.zeros(T + 1).at[s].set(1.0)}, decay(s))
  s = np.arange(1, T + 1, dtype=np.float64)
  want = (1 - (1 - 1 / s) ** (gamma + 1)) * (s / T) ** (gamma + 1)
  np.testing.assert_allclose(np.sum(want), 1.0, rtol=1e-12)  # telescoping: exact up to rounding
  # float32: 40 multiply-adds of weights <= 1 (a few ulps each)
  np.testing.assert_allclose(ema["w"][1:], want, rtol=1e-5, atol=1e-7)
  assert float(ema["w"][0]) == 0.0  # beta(1) = 0: the first update replaces the init outright
  capped = train.power_ema_decay(gamma, max_decay=0.5)
  assert float(capped(1000)) == 0.5 and float(capped(1)) == 0.0


def test_train_step_feeds_the_schedule_the_update_count():
  """A schedule ema_decay(t) sees t = step + 1 (the number of updates once this one is made): one
  that is 0 at t = 1, as the power EMA's beta(1), makes the first EMA the updated params exactly."""
  params, frozen, batch = _frozen_problem()
  optimizer = train.make_optimizer(1e-2)
  seen = []

  def schedule(t):
    seen.append(t)
    return jnp.where(t == 1, 0.0, 0.5)

  state = train.TrainState.create(params, optimizer, frozen=frozen)
  step_fn = train.make_train_step(_frozen_loss_fn, optimizer, schedule)
  first, _ = step_fn(state, batch, jr.key(0))
  jax.tree.map(np.testing.assert_array_equal, first.ema_params, first.params)
  second, _ = step_fn(first, batch, jr.key(0))
  want = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, first.ema_params, second.params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), second.ema_params, want)
  assert [int(t) for t in seen] == [1, 2]
  with pytest.raises(ValueError, match="gamma"):
    train.power_ema_decay(0.0)


def _dsm_loss_fn(params, frozen, example, key):
  """DSM with the simple weighting, written out (independent of diffusion_jax.losses)."""
  del frozen
  t_key, noise_key = jr.split(key)
  t = jr.uniform(t_key, (), minval=1e-3, maxval=SDE.T)
  noise = jr.normal(noise_key, example["x0"].shape)
  x_t = SDE.alpha(t) * example["x0"] + SDE.sigma(t) * noise
  eps_hat = MODEL.apply(params, x_t[None], t[None])[0]
  mse = jnp.mean((eps_hat - noise) ** 2)
  return {"loss": jnp.sum((eps_hat - noise) ** 2), "eps_mse": mse, "t": t}


def _frozen_loss_fn(params, frozen, example, key):
  """A regression through a trainable layer into a frozen readout, plus a noise-dependent term:
  loss = (readout . tanh(W x + b) + shift - y)^2 + 0.1 u^2 with u ~ N(0, 1) from the example key."""
  hidden = jnp.tanh(params["w"] @ example["x"] + params["b"])
  residual = frozen["readout"] @ hidden + frozen["shift"] - example["y"]
  u = jr.normal(key, ())
  return {"loss": residual**2 + 0.1 * u**2, "residual": residual, "abs_u": jnp.abs(u)}


def _frozen_problem():
  params = {"w": jr.normal(jr.key(10), (3, 2)), "b": jnp.zeros(3)}
  frozen = {"readout": jnp.array([1.0, -2.0, 0.5]), "shift": jnp.array(0.3)}
  batch = {"x": jr.normal(jr.key(11), (6, 2)), "y": jr.normal(jr.key(12), (6,))}
  return params, frozen, batch


def test_train_step_matches_per_example_gradients_averaged_by_a_slow_loop():
  """train_step == the mean of per-example gradients computed one by one, with the documented keys,
  then the optimiser and the EMA applied by hand; metrics are the batch means of every field."""
  params, frozen, batch = _frozen_problem()
  optimizer = train.make_optimizer(1e-2, grad_clip_norm=1.0)
  state = train.TrainState.create(params, optimizer, frozen=frozen).replace(
      step=jnp.asarray(7, jnp.int32))
  key = jr.key(2)
  new_state, metrics = jax.jit(train.make_train_step(_frozen_loss_fn, optimizer, 0.9))(
      state, batch, key)

  example_keys = jr.split(jr.fold_in(key, 7), 6)
  grads, records = [], []
  for i in range(6):
    example = jax.tree.map(lambda a: a[i], batch)
    loss = lambda p: _frozen_loss_fn(p, frozen, example, example_keys[i])["loss"]
    grads.append(jax.grad(loss)(params))
    records.append(_frozen_loss_fn(params, frozen, example, example_keys[i]))
  mean_grad = jax.tree.map(lambda *g: sum(g) / 6, *grads)
  updates, _ = optimizer.update(mean_grad, state.opt_state, params)
  want_params = optax.apply_updates(params, updates)
  want_ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, params, want_params)

  assert set(metrics) == {"loss", "residual", "abs_u", "grad_norm"}  # every field, nothing else
  for name in ("loss", "residual", "abs_u"):
    want = np.mean([float(r[name]) for r in records])
    np.testing.assert_allclose(metrics[name], want, rtol=1e-5, atol=1e-7)  # float32 sums
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(mean_grad), rtol=1e-5)
  assert int(new_state.step) == 8
  # Adam's first step moves a weight by lr g/(|g| + eps): a float32 relative difference of 1e-6 in
  # g (summation order) moves it by ~1e-8 (atol); p + update rounds to float32 (rtol, 2 ulps).
  close = functools.partial(np.testing.assert_allclose, rtol=2.4e-7, atol=1e-7)
  jax.tree.map(close, new_state.params, want_params)
  jax.tree.map(close, new_state.ema_params, want_ema)


def test_frozen_parameters_are_untouched_and_optimizer_state_covers_only_the_trainable_tree():
  params, frozen, batch = _frozen_problem()
  frozen_before = jax.tree.map(np.asarray, frozen)
  host = jax.tree.map(np.asarray, params)  # the steps donate the state's buffers
  optimizer = train.make_optimizer(1e-2)
  state = train.TrainState.create(params, optimizer, frozen=frozen)
  step_fn = jax.jit(train.make_train_step(_frozen_loss_fn, optimizer, 0.9), donate_argnums=0)
  for _ in range(3):
    state, _ = step_fn(state, batch, jr.key(0))
  # Bitwise the same frozen leaves after three (donating) steps.
  jax.tree.map(np.testing.assert_array_equal, state.frozen, frozen_before)
  # The optimiser state and the EMA cover the trainable tree alone: Adam's moments hold one entry
  # per trainable parameter (the optimiser works on the flattened trainable tree), none for the
  # frozen leaves.
  assert (jax.tree.structure(state.opt_state)
          == jax.tree.structure(optimizer.init(host)))
  assert jax.tree.structure(state.ema_params) == jax.tree.structure(host)
  mu = state.opt_state[1][0].mu  # flatten(chain(clip, adamw)): adamw's ScaleByAdamState
  num_trainable = sum(np.size(leaf) for leaf in jax.tree.leaves(host))
  assert mu.shape == (num_trainable,)
  # And the trainable tree did move.
  assert not np.array_equal(state.params["w"], host["w"])


def test_train_step_is_pure_and_keys_follow_the_step():
  optimizer = train.make_optimizer(1e-3)
  state = train.TrainState.create(_params(), optimizer)
  step_fn = jax.jit(train.make_train_step(_dsm_loss_fn, optimizer, ema_decay=0.9))
  batch = {"x0": jr.normal(jr.key(1), (8, 2))}
  a, ma = step_fn(state, batch, jr.key(3))
  b, mb = step_fn(state, batch, jr.key(3))
  jax.tree.map(np.testing.assert_array_equal, a, b)  # same inputs, bitwise the same outputs
  # Another step number folds in another key: other t and noise, another loss.
  _, mc = step_fn(state.replace(step=jnp.asarray(1, jnp.int32)), batch, jr.key(3))
  assert float(ma["loss"]) != float(mc["loss"])
  assert set(ma) == {"loss", "eps_mse", "t", "grad_norm"}


def _bilinear_players(scale):
  """min_x max_y a x y as two players: x minimises a x y, y minimises -a x y; a per example."""
  loss_x = lambda p, frozen, ex, key: {"loss": ex["a"] * p["x"] * p["y"], "xy": p["x"] * p["y"]}
  loss_y = lambda p, frozen, ex, key: {"loss": -ex["a"] * p["x"] * p["y"]}
  return {"x": (loss_x, optax.sgd(scale)), "y": (loss_y, optax.sgd(scale))}


@pytest.mark.parametrize("order", [None, ("x", "y")])
def test_two_player_bilinear_game_matches_its_closed_form(order):
  """Gradient play on min_x max_y abar x y with step lr (abar: the batch mean of a):
  simultaneous: (x, y) <- (x - h y, y + h x), h = lr abar: the matrix [[1, -h], [h, 1]] per step,
  which spirals out by sqrt(1 + h^2); in turn (x first): x <- x - h y, then y <- y + h x_new,
  [[1, -h], [h, 1 - h^2]], determinant 1 (bounded orbits). 50 steps against the matrix power."""
  lr, steps = 0.1, 50
  batch = {"a": jnp.array([0.5, 1.5, 1.0, 3.0])}  # abar = 1.5
  h = lr * 1.5
  step_fn = jax.jit(train.make_multi_train_step(_bilinear_players(lr), 0.5, order=order))
  optimizers = {n: opt for n, (_, opt) in _bilinear_players(lr).items()}
  state = train.TrainState.create({"x": jnp.array(1.0), "y": jnp.array(0.5)}, optimizers)
  for _ in range(steps):
    state, metrics = step_fn(state, batch, jr.key(0))
  if order is None:
    matrix = np.array([[1.0, -h], [h, 1.0]])
  else:
    matrix = np.array([[1.0, -h], [h, 1.0 - h**2]])
  want = np.linalg.matrix_power(matrix, steps) @ np.array([1.0, 0.5])
  got = np.array([state.params["x"], state.params["y"]])
  np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 over 50 steps
  if order is None:  # spirals out: |z_n| = (1 + h^2)^(n/2) |z_0|, the simultaneous-GD divergence
    np.testing.assert_allclose(np.linalg.norm(got), (1 + h**2) ** (steps / 2) * np.linalg.norm(
        [1.0, 0.5]), rtol=1e-5)
  assert set(metrics) == {"x/loss", "x/xy", "x/grad_norm", "y/loss", "y/grad_norm"}
  assert int(state.step) == steps


def test_two_player_step_differentiates_each_player_only_in_its_own_parameters():
  """x's loss depends on y and y's on x; each gradient must be wrt the player's own tree: with
  loss_x = x^2 y and loss_y = x y^2, simultaneous SGD gives x - lr 2 x y and y - lr 2 x y."""
  players = {"x": (lambda p, f, ex, k: {"loss": p["x"] ** 2 * p["y"]}, optax.sgd(0.1)),
             "y": (lambda p, f, ex, k: {"loss": p["x"] * p["y"] ** 2}, optax.sgd(0.1))}
  state = train.TrainState.create({"x": jnp.array(2.0), "y": jnp.array(3.0)},
                                  {n: o for n, (_, o) in players.items()})
  state, metrics = train.make_multi_train_step(players, 0.0)(state, {"a": jnp.zeros(2)}, jr.key(0))
  np.testing.assert_allclose([state.params["x"], state.params["y"]], [2 - 1.2, 3 - 1.2], rtol=1e-6)
  np.testing.assert_allclose(metrics["x/grad_norm"], 12.0, rtol=1e-6)  # d(x^2 y)/dx = 2 x y


def test_training_learns_the_exact_noise_prediction_of_a_gmm():
  """A few hundred steps on GMM data bring the net's eps close to the analytic E[noise | x_t]."""
  gmm = analytic.GaussianMixture.create([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], 0.05)
  exact = analytic.DiffusedMixture(gmm, SDE)
  optimizer = train.make_optimizer(3e-3, warmup_steps=20)
  step_fn = train.make_train_step(_dsm_loss_fn, optimizer, ema_decay=0.0)

  def gaussian_eps(x, t):
    # The best linear predictor: the exact eps if the data were N(mean, cov) of the mixture.
    alpha, sigma = SDE.alpha(t), SDE.sigma(t)
    cov = alpha**2 * gmm.covariance() + sigma**2 * jnp.eye(2)
    return sigma * jnp.linalg.solve(cov, x - alpha * gmm.mean())

  @jax.jit
  def eps_errors(params, key):
    # E_t E_{x_t ~ p_t} ||eps_hat(x_t, t) - eps_exact(x_t, t)||^2 over t in [0.05, 1].
    t_key, x_key = jr.split(key)
    t = jr.uniform(t_key, (2048,), minval=0.05, maxval=1.0)
    x_t = jax.vmap(lambda k, t: exact.sample(k, t, 1)[0])(jr.split(x_key, 2048), t)
    eps_exact = jax.vmap(exact.eps)(x_t, t)
    err = lambda eps: jnp.mean(jnp.sum((eps - eps_exact) ** 2, axis=-1))
    return err(MODEL.apply(params, x_t, t)), err(jax.vmap(gaussian_eps)(x_t, t))

  @jax.jit
  def fit(state, key):
    data_key, train_key = jr.split(key)

    def body(state, step_key):
      return step_fn(state, {"x0": gmm.sample(step_key, 256)}, train_key)[0], None

    return jax.lax.scan(body, state, jr.split(data_key, 400))[0]

  state = train.TrainState.create(_params(), optimizer)
  before, gaussian = map(float, eps_errors(state.params, jr.key(9)))
  after, _ = map(float, eps_errors(fit(state, jr.key(4)).params, jr.key(9)))
  # Measured: 3.3 at init, 0.086 for the linear-Gaussian predictor, 0.019 after 400 steps. Beating
  # the linear predictor by 2x needs the mixture's nonlinear structure; the Monte-Carlo error of
  # these means over 2048 points is a few percent.
  assert before > 1.0
  assert after < 0.5 * gaussian


def test_train_errors():
  optimizer = train.make_optimizer(1e-3)
  step_fn = train.make_train_step(_dsm_loss_fn, optimizer, ema_decay=0.9)
  state = train.TrainState.create(_params(), optimizer)
  bad = {"x0": jnp.zeros((4, 2)), "label": jnp.zeros((3,), jnp.int32)}
  with pytest.raises(ValueError, match="leading batch axis"):
    step_fn(state, bad, jr.key(0))
  no_loss = train.make_train_step(lambda p, f, ex, k: {"mse": jnp.sum(ex["x0"])}, optimizer, 0.9)
  with pytest.raises(ValueError, match="field 'loss'"):
    no_loss(state, {"x0": jnp.zeros((4, 2))}, jr.key(0))
  vector = train.make_train_step(lambda p, f, ex, k: {"loss": ex["x0"]}, optimizer, 0.9)
  with pytest.raises(ValueError, match="scalar per example"):
    vector(state, {"x0": jnp.zeros((4, 2))}, jr.key(0))
  with pytest.raises(ValueError, match="ema_decay"):
    train.make_train_step(_dsm_loss_fn, optimizer, ema_decay=1.5)
  with pytest.raises(TypeError, match="make_multi_train_step"):
    train.make_train_step(_dsm_loss_fn, {"a": optimizer}, ema_decay=0.9)
  with pytest.raises(ValueError, match="order must list each player"):
    train.make_multi_train_step(_bilinear_players(0.1), 0.9, order=("x",))
  with pytest.raises(ValueError, match="one entry per player"):
    train.TrainState.create({"x": jnp.zeros(())}, {"y": optimizer})
  with pytest.raises(ValueError, match="learning_rate"):
    train.make_optimizer(0.0)
  with pytest.raises(ValueError, match="decay_steps"):
    train.make_lr_schedule(1e-3, warmup_steps=10, decay_steps=5)
  with pytest.raises(ValueError, match="grad_clip_norm"):
    train.make_optimizer(1e-3, grad_clip_norm=-1.0)
