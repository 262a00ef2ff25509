"""sample / sample_batch: jit, vmap, per-example reproducibility, no recompilation, outputs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from diffusion_jax import analytic, schedules, sdes
from diffusion_jax import samplers as S
from diffusion_jax.parameterization import NetworkScore, Prediction
from diffusion_jax.sampling import example_keys, sample, sample_batch

GMM = analytic.GaussianMixture.create([0.3, 0.7], [[-2.0, 1.0], [1.5, -0.5]], [[0.3, 0.1], [0.2, 0.5]])
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


def test_outputs_trajectory_and_denoising():
  x_init = jnp.array([0.3, -0.4])
  out = sample(SDE, DM, S.DDIM(), TS, x_init, key=jr.key(0), save_trajectory=True,
               denoise_final=False)
  assert out.trajectory.shape == (9, 2)
  np.testing.assert_allclose(out.trajectory[0], x_init)
  np.testing.assert_allclose(out.trajectory[-1], out.x)
  assert int(out.nfe) == 8
  # The denoised estimate is E[x0 | x] at the last evaluation (x_7 at t_7).
  np.testing.assert_allclose(out.denoised, DM.denoised(out.trajectory[-2], TS[-2]), rtol=1e-5)
  # With the Tweedie step, x is E[x0 | x_N] at t_N and costs one more evaluation.
  tweedie = sample(SDE, DM, S.DDIM(), TS, x_init, key=jr.key(0), denoise_final=True)
  np.testing.assert_allclose(tweedie.x, DM.denoised(out.x, TS[-1]), rtol=1e-5, atol=1e-6)
  assert int(tweedie.nfe) == 9


def test_deterministic_samplers_ignore_the_key():
  x_init = jnp.array([0.3, -0.4])
  a = sample(SDE, DM, S.DPMSolverPP(), TS, x_init, key=jr.key(0)).x
  b = sample(SDE, DM, S.DPMSolverPP(), TS, x_init, key=jr.key(1)).x
  np.testing.assert_array_equal(a, b)


class TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x, t):
    return nn.Dense(x.shape[-1])(jnp.concatenate([x, t[:, None]], -1))


def test_new_parameters_do_not_retrace():
  net = TinyNet()
  traces = []

  def apply_fn(params, x, t):
    traces.append(1)  # runs only while tracing
    return net.apply(params, x, t)

  params = [net.init(jr.key(i), jnp.zeros((1, 2)), jnp.zeros((1,))) for i in range(3)]
  outs = []
  for p in params:
    score_fn = NetworkScore(apply_fn=apply_fn, params=p, sde=SDE, prediction=Prediction.EPS)
    outs.append(sample_batch(SDE, score_fn, S.UniPC(), TS, key=jr.key(0), num=4, shape=(2,)).x)
  n_first = len(traces)
  assert n_first > 0
  outs.append(sample_batch(SDE, NetworkScore(apply_fn=apply_fn, params=params[0], sde=SDE), S.UniPC(),
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


def test_bad_arguments():
  x_init = jnp.zeros(2)
  with pytest.raises(ValueError, match="decreasing"):
    sample(SDE, DM, S.DDIM(), TS[::-1], x_init, key=jr.key(0))
  with pytest.raises(ValueError, match="sampler"):
    sample(SDE, DM, "ddim", TS, x_init, key=jr.key(0))
  with pytest.raises(ValueError, match="num"):
    sample_batch(SDE, DM, S.DDIM(), TS, key=jr.key(0), num=0, shape=(2,))
  with pytest.raises(ValueError, match="score_fn must be callable"):
    sample_batch(SDE, {"w": jnp.ones(2)}, S.DDIM(), TS, key=jr.key(0), num=2, shape=(2,))
