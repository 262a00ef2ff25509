"""Guidance as transforms of score functions: each guider is a ``score_fn(x, t)`` built from others.

Every guider is a registered pytree whose strength and noise-level interval are leaves, so a new
strength reuses the compiled sampler, and whose ``cond`` field is the class (or any condition) it
guides towards, bound per example by ``sample_examples(..., cond=...)`` like any conditional score.
A guider is therefore used with every sampler unchanged. Each is written as

    guided = base + w * direction,

so that w = 0 is exactly (bitwise) the unguided model:

- ``ClassifierFreeGuidance`` (Ho & Salimans 2022): base = s(x | c), direction = s(x | c) - s(x | null).
  In the lecture's form, guided = gamma s(x | c) + (1 - gamma) s(x | null) with gamma = 1 + w;
  Ho & Salimans write eps~ = (1 + w) eps(c) - w eps(null). diffusers' and Stable Diffusion's
  ``guidance_scale`` is gamma = 1 + w (their 7.5 is w = 6.5). The conditional and the unconditional
  score are evaluated as one call of the network on a batch of two conditions.
- ``ClassifierGuidance`` (Dhariwal & Nichol 2021; Song et al. 2021, eq. 48): base = s(x), the
  unconditional score, direction = grad_x log p(c | x_t, t) of a noise-conditional classifier,
  w = ``scale``. With the exact classifier, scale 1 gives the exact conditional score (Bayes' rule).
- ``Autoguidance`` (Karras et al. 2024): base = s_main(x | c), direction = s_main(x | c) -
  s_guide(x | c), where the guide is a weaker (smaller or shorter-trained) version of the main model.
  Karras et al. write D = w D_main + (1 - w) D_guide: their w is our gamma = 1 + w.

The noise-level interval of Kynkaanniemi et al. (2024) applies to every guider: with
``interval=NoiseInterval(sde, sigma_lo, sigma_hi)`` the guidance acts only where the EDM noise level
sigma(t)/alpha(t) lies in (sigma_lo, sigma_hi] and the guider is its unguided base elsewhere.
The interval is in noise levels, not in fractions of the sampler's steps (diffusers' form), so it
means the same thing for every grid and step count.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import _checks
from diffusion_jax.sde import AbstractLinearSDE


def _check_real(name: str, value) -> None:
  # Only concrete values are checked: __post_init__ also runs when JAX rebuilds the pytree with
  # tracers or placeholders as leaves.
  if not _checks.is_concrete(value):
    return
  if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0 or \
      not np.issubdtype(np.asarray(value).dtype, np.number) or not np.isfinite(value):
    raise ValueError(f"{name} must be a finite real scalar, got {value!r}.")


def _check_conditional(name: str, score_fn) -> None:
  if not callable(score_fn):
    raise TypeError(f"{name} must be a score function score_fn(x, t), got {type(score_fn).__name__}.")
  if not (hasattr(score_fn, "replace") and hasattr(score_fn, "cond")):
    raise TypeError(f"{name} must be a conditional score (a pytree with a field `cond`, bound by "
                    f"{name}.replace(cond=...)), such as parameterization.NetworkScore or "
                    f"analytic.ConditionalDiffusedMixture; got {type(score_fn).__name__}.")


class NoiseInterval(flax.struct.PyTreeNode):
  """Guidance only where sigma_lo < sigma(t)/alpha(t) <= sigma_hi (Kynkaanniemi et al. 2024).

  sigma(t)/alpha(t) is EDM's noise level for every linear SDE (``sde.edm_sigma``): the interval
  means the same for VP, sub-VP and VE and for every grid. The bounds are leaves (new bounds reuse
  the compiled code); sigma_hi = inf leaves the interval open above. Kynkaanniemi et al. use
  (0.28, 5.42] for EDM2 on ImageNet-512 (data std 0.5).
  """

  sde: AbstractLinearSDE = flax.struct.field(pytree_node=False)
  sigma_lo: Any = 0.0
  sigma_hi: Any = math.inf

  def __post_init__(self):
    _checks.check_instance("sde", self.sde, AbstractLinearSDE, "sdes.VPSDE()")
    for name in ("sigma_lo", "sigma_hi"):
      value = getattr(self, name)
      if _checks.is_concrete(value) and (jnp.ndim(value) != 0 or not float(value) >= 0.0
                                         or math.isnan(float(value))):
        raise ValueError(f"{name} must be a noise level >= 0 (a scalar), got {value!r}.")
    if (_checks.is_concrete(self.sigma_lo) and _checks.is_concrete(self.sigma_hi)
        and not float(self.sigma_lo) < float(self.sigma_hi)):
      raise ValueError(f"need sigma_lo < sigma_hi, got sigma_lo={self.sigma_lo!r} and "
                       f"sigma_hi={self.sigma_hi!r}.")

  def contains(self, t: jax.Array) -> jax.Array:
    """Whether the guidance acts at time t (a bool scalar)."""
    level = self.sde.edm_sigma(t)
    return (level > self.sigma_lo) & (level <= self.sigma_hi)


def _check_interval(interval) -> None:
  if interval is not None:
    _checks.check_instance("interval", interval, NoiseInterval, "NoiseInterval(sde, 0.3, 5.0)")


def _strength(w: jax.Array, interval: NoiseInterval | None, t: jax.Array) -> jax.Array:
  """w inside the interval, exactly 0 outside it (so the guider is its base, bitwise)."""
  w = jnp.asarray(w, jnp.result_type(t, float))
  if interval is None:
    return w
  return jnp.where(interval.contains(t), w, jnp.zeros_like(w))


class ClassifierFreeGuidance(flax.struct.PyTreeNode):
  """gamma s(x | c) + (1 - gamma) s(x | null), computed as s(x | c) + (gamma - 1)(s(x | c) - s(x | null)).

  ``score_fn`` is one conditional network trained with condition dropout
  (``conditions.with_condition_dropout``), so ``score_fn.replace(cond=null_cond)`` is its
  unconditional score. gamma = 1 is the conditional model (bitwise: the difference is multiplied
  by an exact zero), gamma = 0 the unconditional one, gamma > 1 guidance. ``with_weight(w)``
  builds it from Ho & Salimans' w (gamma = 1 + w). With ``pair_batch`` (the default) both scores
  come from one call of ``score_fn`` vmapped over the pair (c, null): one network evaluation on a
  batch of two. ``cond`` is bound per example by the samplers; ``null_cond`` has one condition's
  structure and shapes (for class labels, ``conditions.null_label(num_classes)``).
  """

  score_fn: Any
  null_cond: Any
  gamma: Any = 1.0
  cond: Any = None
  interval: NoiseInterval | None = None
  pair_batch: bool = flax.struct.field(pytree_node=False, default=True)

  def __post_init__(self):
    _check_conditional("score_fn", self.score_fn)
    _check_real("gamma", self.gamma)
    _check_interval(self.interval)

  @classmethod
  def with_weight(cls, score_fn, null_cond, w, **kwargs) -> "ClassifierFreeGuidance":
    """Ho & Salimans' form (1 + w) s(x | c) - w s(x | null): gamma = 1 + w (diffusers' guidance_scale)."""
    _check_real("w", w)
    return cls(score_fn, null_cond, 1.0 + w, **kwargs)

  def _cond(self):
    if self.cond is None:
      raise ValueError("ClassifierFreeGuidance needs a condition to guide towards: bind one with "
                       ".replace(cond=c) or pass cond=... to sample_batch / sample_examples.")
    return self.cond

  def parts(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(s(x | c), s(x | null)) at one example."""
    cond = self._cond()
    if self.pair_batch:
      pair = jax.tree.map(lambda c, n: jnp.stack([jnp.asarray(c), jnp.asarray(n, jnp.result_type(c))]),
                          cond, self.null_cond)
      both = jax.vmap(lambda c: self.score_fn.replace(cond=c)(x, t))(pair)
      return both[0], both[1]
    return (self.score_fn.replace(cond=cond)(x, t),
            self.score_fn.replace(cond=self.null_cond)(x, t))

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    conditional, unconditional = self.parts(x, t)
    w = _strength(jnp.asarray(self.gamma) - 1.0, self.interval, t)
    return conditional + w * (conditional - unconditional)


class ClassifierGuidance(flax.struct.PyTreeNode):
  """s(x) + scale * grad_x log p(c | x_t = x, t): an unconditional score steered by a noisy classifier.

  ``classifier(x, t)`` returns the log-probabilities of every class for one example (shape (K,)):
  a classifier of noised data, trained on x_t ~ p_t (Dhariwal & Nichol 2021), such as
  ``analytic.DiffusedMixture.class_log_probs`` (exact for a labelled mixture) or the project's
  trained noise-conditional classifier. ``score_fn`` is the unconditional score s(x) =
  grad log p_t(x). The gradient is one reverse-mode pass through the classifier. scale = 1 with the
  exact classifier is the exact conditional score grad log p_t(x | c); scale > 1 sharpens it
  towards p(c | x)^scale.
  """

  score_fn: Any
  classifier: Any
  scale: Any = 1.0
  cond: Any = None
  interval: NoiseInterval | None = None

  def __post_init__(self):
    for name in ("score_fn", "classifier"):
      if not callable(getattr(self, name)):
        raise TypeError(f"{name} must be callable, got {type(getattr(self, name)).__name__}.")
    _check_real("scale", self.scale)
    _check_interval(self.interval)

  def classifier_grad(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """grad_x log p(c | x_t = x, t) for the bound class c."""
    if self.cond is None:
      raise ValueError("ClassifierGuidance needs a class to guide towards: bind one with "
                       ".replace(cond=c) or pass cond=... to sample_batch / sample_examples.")
    return jax.grad(lambda v: self.classifier(v, t)[self.cond])(x)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    w = _strength(self.scale, self.interval, t)
    return self.score_fn(x, t) + w * self.classifier_grad(x, t)


class Autoguidance(flax.struct.PyTreeNode):
  """gamma s_main(x | c) + (1 - gamma) s_guide(x | c) (Karras et al. 2024, eq. 2 with their w = gamma).

  Computed as s_main + (gamma - 1)(s_main - s_guide), so gamma = 1 is the main model, bitwise. The
  guide is a deliberately weaker model of the same task and condition (fewer parameters, fewer
  training steps): the difference points away from the errors the weaker model makes more of,
  without the narrowing towards class prototypes that an unconditional guide brings. ``cond`` is
  bound to both models; with cond None both are called as they are (unconditional autoguidance).
  """

  score_fn: Any
  guide_fn: Any
  gamma: Any = 1.0
  cond: Any = None
  interval: NoiseInterval | None = None

  def __post_init__(self):
    for name in ("score_fn", "guide_fn"):
      if not callable(getattr(self, name)):
        raise TypeError(f"{name} must be a score function score_fn(x, t), got "
                        f"{type(getattr(self, name)).__name__}.")
    _check_real("gamma", self.gamma)
    _check_interval(self.interval)

  def _bound(self, name: str) -> Callable:
    fn = getattr(self, name)
    if self.cond is None:
      return fn
    _check_conditional(name, fn)
    return fn.replace(cond=self.cond)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    main = self._bound("score_fn")(x, t)
    guide = self._bound("guide_fn")(x, t)
    w = _strength(jnp.asarray(self.gamma) - 1.0, self.interval, t)
    return main + w * (main - guide)


__all__ = ["Autoguidance", "ClassifierFreeGuidance", "ClassifierGuidance", "NoiseInterval"]
