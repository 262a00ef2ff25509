"""The speed benchmark's batched forms of the mixture score equal the library's per-example score.

benchmarks/sampler_speed.py compares wall times over three layouts of the same noise prediction; the
comparison means something only if the layouts compute the same function, here checked against
analytic.DiffusedMixture.score, the exact score the other tests verify.
"""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

from diffusion_jax import analytic, sdes

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "samplers.py"
_SPEC = importlib.util.spec_from_file_location("bench_samplers", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench  # its dataclasses look their module up there
_SPEC.loader.exec_module(bench)

# float32 rounding of sums over D = 3 terms and of the expanded quadratic form, whose terms can be
# ~50x the score itself near t = 0 (variances down to 0.05): measured <= 1e-6 relative to the largest
# score entry; 2e-5 leaves a 20x margin and is still far below any real mistake (a wrong sign or a
# missing term moves entries by O(1) relative).
RTOL = 2e-5


def _problem():
  return analytic.DiffusedMixture(bench.make_problem(3), sdes.VPSDE())


def _close(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) < RTOL


@pytest.mark.parametrize("layout", ["kdb", "gemm"])
@pytest.mark.parametrize("t", [1e-3, 0.5, 1.0])
def test_batched_forms_equal_the_per_example_score(layout, t):
  dm = _problem()
  x = 1.5 * jr.normal(jr.key(0), (257, 3)) + 1.0
  ref = jax.vmap(dm.score, (0, None))(x, t)
  got = jax.jit(jax.vmap(bench.score_in_layout(dm, layout), (0, None)))(x, t)
  assert _close(got, ref)


@pytest.mark.parametrize("layout", ["kdb", "gemm"])
def test_per_example_times_take_the_plain_vmap(layout):
  # With t batched too, the custom vmap rule falls back to vmapping the one-row form.
  dm = _problem()
  x = jr.normal(jr.key(1), (64, 3)) + 1.0
  t = jnp.linspace(1e-3, 1.0, 64)
  ref = jax.vmap(dm.score)(x, t)
  assert _close(jax.vmap(bench.score_in_layout(dm, layout))(x, t), ref)
  # Unbatched, one example.
  assert _close(bench.score_in_layout(dm, layout)(x[0], t[0]), ref[0])


def test_unknown_layout_is_rejected():
  with pytest.raises(ValueError, match="layout"):
    bench.BatchedScore(_problem(), "dkb")

