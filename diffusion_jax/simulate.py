"""Simulation of the forward SDE: the reference that marginals, samplers and figures are checked against."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr

from diffusion_jax import _checks
from diffusion_jax.sde import AbstractSDE


def simulate_forward(sde: AbstractSDE, x0: jax.Array, ts: jax.Array, *, key: jax.Array,
                     save_path: bool = True) -> jax.Array:
  """Euler-Maruyama on dx = f(x, t) dt + g(t) dw along an increasing grid: x_{i+1} = x_i + f dt + g sqrt(dt) z_i.

  (Kloeden & Platen 1992, Sec. 9.1; strong order 1/2, weak order 1.) One example ``x0``; returns
  the path, shape (len(ts), *x0.shape), with x0 first (``save_path=False``: only the end point).
  Step i draws z_i from fold_in(key, i). The drift and diffusion act elementwise, so ``x0`` may also
  hold many paths at once (shape (num, ...)), all stepped with one draw of that shape.
  """
  _checks.check_instance("sde", sde, AbstractSDE, "sdes.VPSDE()")
  arr = _checks.concrete_or_none(ts)
  if arr is not None and (arr.ndim != 1 or arr.shape[0] < 2 or not (arr.size and (arr >= 0).all()
                                                                  and (arr <= sde.T).all()
                                                                  and (arr[1:] > arr[:-1]).all())):
    raise ValueError(f"ts must be a strictly increasing 1-D grid of >= 2 times in [0, T={sde.T}], "
                     f"got {arr}.")
  ts = jnp.asarray(ts, jnp.result_type(float))
  x0 = jnp.asarray(x0, ts.dtype)

  def step(x, i):
    t, dt = ts[i], ts[i + 1] - ts[i]
    noise = jr.normal(jr.fold_in(key, i), x.shape, x.dtype)
    x = x + sde.drift(x, t) * dt + sde.diffusion(t) * jnp.sqrt(dt) * noise
    return x, (x if save_path else None)

  x, xs = jax.lax.scan(step, x0, jnp.arange(ts.shape[0] - 1))
  return jnp.concatenate([x0[None], xs]) if save_path else x
