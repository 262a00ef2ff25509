"""sample / sample_examples / sample_batch: jit, vmap, per-example reproducibility, conditions,
samplers holding arrays, the finalize hook, the success flag, gradients, and bad input."""

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import harness as H
from diffusion_jax import analytic, schedules, sdes
from diffusion_jax import samplers as S
from diffusion_jax.parameterization import NetworkScore, Prediction
from diffusion_jax.sampling import example_keys, sample, sample_batch, sample_examples

GMM = H.GMM_2D
SDE = sdes.VPSDE()
DM = analytic.DiffusedMixture(GMM, SDE)
TS = schedules.uniform_log_snr(SDE, 8, 1e-3)
STOCHASTIC = S.Ancestral()


def test_vmap_of_sample_equals_a_loop_over_examples():
  keys = example_keys(jr.key(0), 4)
  x_init = jr.normal(jr.key(1), (4, 2))
  run = lambda x, k: sample(SDE, DM, STOCHASTIC, TS, x, key=k).x
  batched = jax.jit(jax.vmap(run))(x_init, keys)
  looped = jnp.stack([jax.jit(run)(x_init[i], keys[i]) for i in range(4)])
  np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-6)  # same program, fused differently


def test_examples_do_not_depend_on_batch_size_or_chunking():
  common = dict(key=jr.key(0), shape=(2,))
  small = sample_batch(SDE, DM, STOCHASTIC, TS, num=3, **common).x
  large = sample_batch(SDE, DM, STOCHASTIC, TS, num=7, **common).x
  chunk = sample_batch(SDE, DM, STOCHASTIC, TS, num=4, offset=3, **common).x
  np.testing.assert_allclose(small, large[:3], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(chunk, large[3:], rtol=1e-5, atol=1e-6)
  assert not np.allclose(large[0], large[1])  # examples differ


def test_sample_batch_is_the_jit_of_sample_examples():
  keys = example_keys(jr.key(0), 5)
  core = jax.jit(functools.partial(sample_examples, shape=(2,)))(SDE, DM, STOCHASTIC, TS, keys)
  batch = sample_batch(SDE, DM, STOCHASTIC, TS, key=jr.key(0), num=5, shape=(2,))
  np.testing.assert_array_equal(core.x, batch.x)  # the same jitted program on the same keys


def test_outputs_trajectory_and_denoising():
  x_init = jnp.array([0.3, -0.4])
  out = sample(SDE, DM, S.DDIM(), TS, x_init, key=jr.key(0), save_trajectory=True,
               denoise_final=False)
  assert out.trajectory.shape == (9, 2)
  np.testing.assert_allclose(out.trajectory[0], x_init)
  np.testing.assert_allclose(out.trajectory[-1], out.x)
  assert int(out.nfe) == 8 and bool(out.success)
  # The denoised estimate is E[x0 | x] at the last evaluation (x_7 at t_7).
  np.testing.assert_allclose(out.denoised, DM.denoised(out.trajectory[-2], TS[-2]), rtol=1e-5)
  # With the Tweedie step (the default finalize), x is E[x0 | x_N] at t_N: one more evaluation.
  tweedie = sample(SDE, DM, S.DDIM(), TS, x_init, key=jr.key(0), denoise_final=True)
  np.testing.assert_allclose(tweedie.x, DM.denoised(out.x, TS[-1]), rtol=1e-5, atol=1e-6)
  assert int(tweedie.nfe) == 9


def test_deterministic_samplers_ignore_the_key_and_accept_none():
  x_init = jnp.array([0.3, -0.4])
  a = sample(SDE, DM, S.DPMSolverPP(), TS, x_init, key=jr.key(0)).x
  b = sample(SDE, DM, S.DPMSolverPP(), TS, x_init, key=jr.key(1)).x
  c = sample(SDE, DM, S.DPMSolverPP(), TS, x_init, key=None).x
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, c)


# --- capability flags on the instance -----------------------------------------------------------


def test_predictor_corrector_follows_a_wrapped_predictors_flag():
  """PC(Chain(..., DDIM()), ...) must not denoise: Chain's flag is a property, read on the instance.

  Before the fix PC read ``type(predictor).denoise_final_default``, the property object itself,
  which is truthy, so it always took the Tweedie step (9 evaluations here instead of 8).
  """
  chain = S.Chain(S.DDIM(eta=1.0), S.DDIM())
  pc = S.PredictorCorrector(chain, S.DDIM())
  assert pc.denoise_final_default is False
  assert S.PredictorCorrector(S.Chain(S.DDIM(eta=1.0), S.Heun()), S.DDIM()).denoise_final_default
  out = sample(SDE, DM, pc, TS, jnp.array([0.3, -0.4]), key=jr.key(0))
  assert int(out.nfe) == 2 * 8  # predictor and corrector each once per step, no final step
  assert not S.PredictorCorrector(S.DDIM(), S.DDIM()).stochastic  # also read on the parts


# --- the success flag ---------------------------------------------------------------------------


def test_success_flag_reports_non_finite_samples_under_jit():
  def score_nan_late(x, t):  # a score that breaks below t = 0.2: only visible at run time
    return jnp.where(t < 0.2, jnp.nan, 1.0) * DM.score(x, t)

  good = sample_batch(SDE, DM, S.DDIM(), TS, key=jr.key(0), num=3, shape=(2,))
  bad = sample_batch(SDE, score_nan_late, S.DDIM(), TS, key=jr.key(0), num=3, shape=(2,))
  assert np.all(np.asarray(good.success)) and not np.any(np.asarray(bad.success))


def test_a_step_reporting_failure_clears_the_flag():
  class Failing(S.DDIM):  # a stand-in for an adaptive solver out of steps
    def step(self, *args, **kwargs):
      x, aux, state = super().step(*args, **kwargs)
      return x, aux.replace(success=jnp.asarray(False)), state

  assert not bool(sample(SDE, DM, Failing(), TS, jnp.zeros(2)).success)
  assert bool(sample(SDE, DM, S.DDIM(), TS, jnp.zeros(2)).success)


# --- conditions ---------------------------------------------------------------------------------


class ClassGaussianScore(flax.struct.PyTreeNode):
  """A class-conditional stand-in (the cond stream's ConditionalDiffusedMixture is built in parallel):
  class y has x0 ~ N(means[y], var I), so p_t(x | y) = N(alpha means[y], (alpha^2 var + sigma^2) I)."""

  means: jax.Array  # (K, D)
  var: float = flax.struct.field(pytree_node=False)
  sde: sdes.VPSDE = flax.struct.field(pytree_node=False)
  cond: jax.Array | None = None  # the class label, an int32 scalar per example

  def __call__(self, x, t):
    alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
    return -(x - alpha * self.means[self.cond]) / (alpha**2 * self.var + sigma**2)


COND_SCORE = ClassGaussianScore(jnp.array([[-2.0, 0.0], [0.0, 2.0], [3.0, -1.0]]), 0.05, SDE)


@pytest.mark.parametrize("sampler", [S.Ancestral(), S.DPMSolverPP()], ids=["ancestral", "dpm_2m"])
def test_a_mixed_batch_equals_one_batch_per_condition_bitwise(sampler):
  labels = jnp.array([2, 0, 1, 1, 0, 2, 2, 0], jnp.int32)
  keys = example_keys(jr.key(7), labels.shape[0])
  run = jax.jit(functools.partial(sample_examples, shape=(2,)))
  mixed = run(SDE, COND_SCORE, sampler, TS, keys, cond=labels).x
  for c in range(3):
    idx = np.flatnonzero(np.asarray(labels) == c)
    alone = run(SDE, COND_SCORE, sampler, TS, keys[idx], cond=labels[idx]).x
    np.testing.assert_array_equal(mixed[idx], alone)  # bitwise: per-example programs on CPU
  # The condition reached the score: each class ends near its own mean (var 0.05: 5 std away is 1.1).
  np.testing.assert_allclose(mixed, COND_SCORE.means[labels], atol=1.1)
  batch = sample_batch(SDE, COND_SCORE, sampler, TS, key=jr.key(7), num=8, shape=(2,), cond=labels)
  np.testing.assert_array_equal(batch.x, mixed)


# --- samplers holding arrays --------------------------------------------------------------------


def _inpaint(mask, value, inner=None):
  return S.Inpaint(S.DDIM() if inner is None else inner, jnp.asarray(mask, jnp.float32),
                   jnp.asarray(value, jnp.float32))


def test_a_sampler_holding_arrays_crosses_jit_without_retracing():
  traces = []

  def counted(x, t):
    traces.append(1)  # runs only while tracing
    return DM.score(x, t)

  fn = jax.tree_util.Partial(counted)
  run = lambda v: sample_batch(SDE, fn, _inpaint([1.0, 0.0], [v, 0.0]), TS, key=jr.key(0), num=4,
                               shape=(2,), denoise_final=True).x
  outs = [run(0.5)]
  n_first = len(traces)
  outs += [run(-1.0), run(2.0)]
  assert len(traces) == n_first  # new mask/measurement values: no new trace, no recompilation
  for out, v in zip(outs, (0.5, -1.0, 2.0)):
    np.testing.assert_array_equal(out[:, 0], v)  # the known coordinate is the measurement exactly


def test_inpaint_keeps_the_measurement_and_samples_the_rest():
  """Mechanics only: known coordinates equal y after ``finalize``; the unknown ones move.

  The replacement method is an approximation of p(x_u | x_k = y), so its moments are not asserted
  here (measured in the report of this change).
  """
  mask, value = jnp.array([0.0, 1.0]), jnp.array([0.0, -0.5])
  out = sample_batch(SDE, DM, _inpaint(mask, value, S.Ancestral()), schedules.uniform_time(SDE, 50, 1e-3),
                     key=jr.key(0), num=64, shape=(2,))
  np.testing.assert_array_equal(out.x[:, 1], -0.5)
  assert np.all(np.asarray(out.success)) and np.std(np.asarray(out.x[:, 0])) > 0.3
  # Without the final step the known coordinate is the forward marginal's draw at t_min:
  # alpha y + sigma z, within 5 sigma(t_min) of y.
  raw = sample_batch(SDE, DM, _inpaint(mask, value), TS, key=jr.key(0), num=64, shape=(2,),
                     denoise_final=False)
  assert np.all(np.abs(np.asarray(raw.x[:, 1]) - float(SDE.alpha(TS[-1])) * -0.5)
                <= 5 * float(SDE.sigma(TS[-1])))


def test_per_example_sampler_leaves_are_vmapped():
  masks = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
  values = jnp.array([[0.7, 0.0], [0.0, -1.2], [-2.0, 0.0]])
  keys = example_keys(jr.key(3), 3)
  run = jax.jit(functools.partial(sample_examples, shape=(2,), denoise_final=True),
                static_argnames="sampler_axes")
  batch = run(SDE, DM, _inpaint(masks, values), TS, keys, sampler_axes=0).x
  for n in range(3):
    # The same three keys with example n's mask shared by all: row n must be bitwise the same (the
    # same per-example program; a batch of one compiles to other XLA code, differing by an ulp).
    shared = run(SDE, DM, _inpaint(masks[n], values[n]), TS, keys).x[n]
    np.testing.assert_array_equal(batch[n], shared)
  np.testing.assert_array_equal(jnp.where(masks > 0, values, batch), batch)  # each its own mask


# --- jit and score functions --------------------------------------------------------------------


class TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x, t):
    return nn.Dense(x.shape[-1])(jnp.concatenate([x, t[:, None]], -1))


def test_new_parameters_do_not_retrace():
  net = TinyNet()
  traces = []

  def model_fn(params, x, t, cond, *, key=None, train=False):
    traces.append(1)  # runs only while tracing
    return net.apply(params, x, t)

  params = [net.init(jr.key(i), jnp.zeros((1, 2)), jnp.zeros((1,))) for i in range(3)]
  outs = []
  for p in params:
    score_fn = NetworkScore(model_fn=model_fn, params=p, sde=SDE, prediction=Prediction.EPS)
    outs.append(sample_batch(SDE, score_fn, S.UniPC(), TS, key=jr.key(0), num=4, shape=(2,)).x)
  n_first = len(traces)
  assert n_first > 0
  outs.append(sample_batch(SDE, NetworkScore(model_fn=model_fn, params=params[0], sde=SDE), S.UniPC(),
                           TS, key=jr.key(0), num=4, shape=(2,)).x)
  assert len(traces) == n_first  # one trace for all parameter sets
  assert not np.allclose(outs[0], outs[1])  # the parameters did reach the computation
  np.testing.assert_allclose(outs[0], outs[-1])


class _OpaqueScore:
  """A callable object jit cannot see into (not a pytree)."""

  def __call__(self, x, t):
    return DM.score(x, t)


@pytest.mark.parametrize("kind", ["lambda", "functools.partial", "opaque object"])
def test_any_callable_is_accepted(kind):
  score_fn = {"lambda": lambda x, t: DM.score(x, t),
              "functools.partial": functools.partial(lambda x, t, scale: scale * DM.score(x, t), scale=1.0),
              "opaque object": _OpaqueScore()}[kind]
  out = sample_batch(SDE, score_fn, S.DDIM(), TS, key=jr.key(0), num=2, shape=(2,))
  ref = sample_batch(SDE, DM, S.DDIM(), TS, key=jr.key(0), num=2, shape=(2,))
  # The same arithmetic compiled in another program: only float32 rounding can differ.
  np.testing.assert_allclose(out.x, ref.x, rtol=1e-6)


# --- gradients ----------------------------------------------------------------------------------


@H.x64
@pytest.mark.parametrize("sampler", [S.DDIM(), S.Heun(), S.DPMSolverPP(order=2), S.DPMSolverPP(order=3),
                                     S.UniPC()], ids=["ddim", "heun", "dpm_2m", "dpm_3m", "unipc"])
def test_gradient_with_respect_to_the_initial_noise_matches_finite_differences(sampler):
  with H.float64():
    ts = schedules.uniform_log_snr(SDE, 10, 1e-3)
    dm = analytic.DiffusedMixture(GMM, SDE)
    f = lambda x: sample(SDE, dm, sampler, ts, x, denoise_final=True).x
    x_init = jnp.array([0.3, -0.4])
    jac = jax.jit(jax.jacrev(f))(x_init)  # reverse mode through the scan, as a loss would use it
    h = 1e-5
    fd = jnp.stack([(f(x_init + h * e) - f(x_init - h * e)) / (2 * h) for e in jnp.eye(2)], axis=1)
    # Central differences: truncation h^2 f'''/6 ~ 1e-10 for O(1) derivatives, rounding
    # 1e-16 / h ~ 1e-11; 1e-7 relative leaves room for third derivatives up to 1e3.
    np.testing.assert_allclose(jac, fd, rtol=1e-7, atol=1e-9)
    assert float(jnp.max(jnp.abs(jac))) > 1e-2  # a real dependence, not 0 = 0


# --- bad input: one test per class --------------------------------------------------------------

X = jnp.zeros(2)


@pytest.mark.parametrize("score_fn,match", [
    (lambda x, t: jnp.zeros(3), "shape"),
    (lambda x, t: jnp.zeros(2, jnp.int32), "floating"),
    (lambda x, t: (x, x), "one array"),
    (lambda x, t: x @ jnp.ones((3, 3)), "failed"),
], ids=["shape", "dtype", "tuple", "raises"])
def test_a_wrong_score_fn_is_named(score_fn, match):
  with pytest.raises(ValueError, match=f"score_fn.*{match}|{match}.*score_fn"):
    sample(SDE, score_fn, S.DDIM(), TS, X)
  with pytest.raises(ValueError, match="score_fn"):
    sample_batch(SDE, score_fn, S.DDIM(), TS, key=jr.key(0), num=2, shape=(2,))


def test_a_non_callable_score_fn_is_named():
  with pytest.raises(TypeError, match="score_fn must be callable"):
    sample_batch(SDE, {"w": jnp.ones(2)}, S.DDIM(), TS, key=jr.key(0), num=2, shape=(2,))


def test_a_batch_given_to_sample_is_named():
  with pytest.raises(ValueError, match="ONE example"):
    sample(SDE, DM, S.DDIM(), TS, jnp.zeros((5, 2)))


@pytest.mark.parametrize("ts,match", [
    (TS[::-1], "decreasing"), (jnp.array([1.5, 0.5]), r"\[0, T"), (jnp.array([0.5, -0.1]), r"\[0, T"),
    (jnp.array([1.0, jnp.nan]), "finite"), (jnp.ones((2, 2)), "1-D"), (jnp.array([1.0]), "1-D"),
    (np.array([1.0, 0.5, 0.5]), "decreasing"), ([1.0, 0.3, 0.4], "decreasing"),
], ids=["increasing", "above_T", "negative", "nan", "2d", "one_time", "numpy_repeat", "list"])
def test_bad_time_grids(ts, match):
  with pytest.raises(ValueError, match=match):
    sample(SDE, DM, S.DDIM(), ts, X)
  with pytest.raises(ValueError, match=match):
    sample_batch(SDE, DM, S.DDIM(), ts, key=jr.key(0), num=2, shape=(2,))


@pytest.mark.parametrize("name,value", [("sampler", "ddim"), ("sampler", S.DDIM), ("sde", "vp"),
                                        ("sde", sdes.VPSDE)], ids=["str", "class", "sde_str", "sde_class"])
def test_objects_of_the_wrong_kind(name, value):
  args = {"sde": SDE, "sampler": S.DDIM()} | {name: value}
  with pytest.raises(TypeError, match=name):
    sample(args["sde"], DM, args["sampler"], TS, X)
  with pytest.raises(TypeError, match=name):
    sample_batch(args["sde"], DM, args["sampler"], TS, key=jr.key(0), num=2, shape=(2,))
  with pytest.raises(TypeError, match="predictor"):
    S.PredictorCorrector(S.ReverseDiffusion if name == "sampler" else "rd", S.Langevin())
  with pytest.raises(TypeError, match="inner"):
    S.Inpaint(value if name == "sampler" else S.DDIM, X, X)


@pytest.mark.parametrize("make,name", [
    (lambda: S.DPMSolverPP(order=2.0), "order"), (lambda: S.UniPC(order=True), "order"),
    (lambda: S.IPNDM(order=3.5), "order"), (lambda: S.Langevin(num_steps=2.0), "num_steps"),
    (lambda: S.AnnealedLangevin(num_steps=True), "num_steps"),
    (lambda: S.Chain(S.DDIM(eta=1.0), S.IPNDM(), steps=1.5), "steps"),
    (lambda: S.DPMSolverPP(lower_order_final=1), "lower_order_final"),
    (lambda: sample_batch(SDE, DM, S.DDIM(), TS, key=jr.key(0), num=2.0, shape=(2,)), "num"),
    (lambda: sample_batch(SDE, DM, S.DDIM(), TS, key=jr.key(0), num=True, shape=(2,)), "num"),
    (lambda: sample_batch(SDE, DM, S.DDIM(), TS, key=jr.key(0), num=2, shape=(2.0,)), "shape"),
], ids=["dpm_float", "unipc_bool", "ipndm_float", "langevin_float", "annealed_bool", "chain_float",
        "flag_int", "num_float", "num_bool", "shape_float"])
def test_integers_given_as_floats_or_bools(make, name):
  with pytest.raises(ValueError, match=name):
    make()


def test_numpy_integers_are_accepted():
  assert S.DPMSolverPP(order=np.int64(3)).order == 3
  assert S.Langevin(num_steps=np.int32(2)).num_steps == 2
  out = sample_batch(SDE, DM, S.DDIM(), TS, key=jr.key(0), num=np.int64(3), shape=(np.int32(2),))
  assert out.x.shape == (3, 2)


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan"), True])
def test_eta_outside_the_unit_interval(eta):
  with pytest.raises(ValueError, match="eta"):
    S.DDIM(eta=eta)


def test_a_stochastic_sampler_needs_a_key():
  with pytest.raises(ValueError, match="key is required"):
    sample(SDE, DM, S.Ancestral(), TS, X)
  with pytest.raises(ValueError, match="key is required"):
    sample_batch(SDE, DM, S.DDIM(), TS, key=None, num=2, shape=(2,))  # the prior draw needs one


def test_bad_conditions_sampler_axes_and_keys():
  labels = jnp.zeros(4, jnp.int32)
  with pytest.raises(TypeError, match="score_fn must be a conditional score"):
    sample_batch(SDE, DM, S.DDIM(), TS, key=jr.key(0), num=4, shape=(2,), cond=labels)
  with pytest.raises(ValueError, match="cond must have a leading axis of 3"):
    sample_batch(SDE, COND_SCORE, S.DDIM(), TS, key=jr.key(0), num=3, shape=(2,), cond=labels)
  with pytest.raises(ValueError, match="sampler_axes"):
    sample_batch(SDE, DM, _inpaint(X, X), TS, key=jr.key(0), num=3, shape=(2,), sampler_axes=0)
  with pytest.raises(ValueError, match="keys"):
    sample_examples(SDE, DM, S.DDIM(), TS, jr.key(0), shape=(2,))
  with pytest.raises(ValueError, match="Inpaint's mask"):
    sample(SDE, DM, _inpaint(jnp.zeros(3), jnp.zeros(3)), TS, X, key=jr.key(0))


# --- the forward simulator ----------------------------------------------------------------------


@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.VESDE()], ids=["vp", "ve"])
def test_simulate_forward_matches_the_marginal(sde):
  from diffusion_jax.simulate import simulate_forward
  num, x0, t_end = 20_000, 1.5, 0.5
  alpha0, sigma0 = sde.marginal(0.0)
  x_start = alpha0 * x0 + sigma0 * jr.normal(jr.key(0), (num,))  # x at t = 0 (VE: sigma_min noise)
  ts = jnp.linspace(0.0, t_end, 401)
  x = simulate_forward(sde, x_start, ts, key=jr.key(1), save_path=False)
  path = simulate_forward(sde, x_start[:3], ts, key=jr.key(1))
  assert path.shape == (401, 3)
  alpha, sigma = sde.marginal(t_end)
  # 5 Monte-Carlo standard errors plus the O(dt) Euler-Maruyama bias (dt = 1/800, rates up to
  # beta ~ 10: relative bias below 1%).
  assert abs(float(jnp.mean(x)) - float(alpha) * x0) < 5 * float(sigma) / np.sqrt(num) + 0.01 * abs(float(alpha) * x0)
  assert abs(float(jnp.std(x)) - float(sigma)) < 5 * float(sigma) / np.sqrt(2 * num) + 0.01 * float(sigma)
  with pytest.raises(ValueError, match="increasing"):
    simulate_forward(sde, x_start, ts[::-1], key=jr.key(1))


def test_progress_fn_hears_every_step_once_and_changes_nothing():
  """The host callback fires once per grid step for a whole vmapped batch (its argument, the step
  index, is not batched), and the samples are bitwise those drawn without it."""
  heard = []
  keys = example_keys(jr.key(0), 6)
  run = jax.jit(lambda keys, progress_fn: sample_examples(SDE, DM, S.DPMSolverPP(), TS, keys,
                                                          shape=(2,), progress_fn=progress_fn),
                static_argnums=1)
  with_bar = run(keys, heard.append)
  jax.effects_barrier()  # callbacks are asynchronous
  assert sorted(int(i) for i in heard) == list(range(len(TS) - 1))
  np.testing.assert_array_equal(with_bar.x, run(keys, None).x)
