"""Exact answers for Gaussian-mixture data under any linear SDE: the oracle every test checks against.

If x0 ~ sum_k w_k N(mu_k, diag(v_k)) and x_t = alpha x0 + sigma noise, then
    x_t ~ sum_k w_k N(alpha mu_k, diag(alpha^2 v_k + sigma^2)),
so samples, log-densities, scores, noise predictions and posterior means E[x0 | x_t] are closed form
at every t. With the exact score, every sampler and likelihood computation has a ground truth.

Labelled mixtures (class y = component y) give the exact conditional oracle: x_t | y is component y
diffused, N(alpha mu_y, diag(alpha^2 v_y + sigma^2)), and the noisy classifier p(y | x_t) is the
posterior responsibility of component y under p_t, so by Bayes' rule
    grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t).
``ConditionalDiffusedMixture`` is a conditional score function (field ``cond``; cond = K, the null
label, gives the unconditional score).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from diffusion_jax.sde import AbstractLinearSDE


class GaussianMixture(flax.struct.PyTreeNode):
  """sum_k weights[k] N(means[k], diag(variances[k])) in D dimensions (per-component diagonal)."""

  weights: jax.Array  # (K,)
  means: jax.Array  # (K, D)
  variances: jax.Array  # (K, D)

  @classmethod
  def create(cls, weights, means, variances) -> "GaussianMixture":
    """Validate shapes and normalise the weights."""
    weights = jnp.asarray(weights, float)
    means = jnp.asarray(means, float)
    variances = jnp.broadcast_to(jnp.asarray(variances, float), means.shape)
    if means.ndim != 2:
      raise ValueError(f"means must have shape (K, D), got {means.shape}.")
    if weights.shape != means.shape[:1]:
      raise ValueError(f"weights must have shape ({means.shape[0]},) to match means, got {weights.shape}.")
    if not bool(jnp.all(weights >= 0)) or not float(jnp.sum(weights)) > 0:
      raise ValueError("weights must be non-negative with a positive sum.")
    if not bool(jnp.all(variances > 0)):
      raise ValueError("variances must be > 0.")
    return cls(weights / jnp.sum(weights), means, variances)

  @property
  def dim(self) -> int:
    return self.means.shape[-1]

  def mean(self) -> jax.Array:
    return self.weights @ self.means

  def covariance(self) -> jax.Array:
    """Full covariance of the mixture (law of total variance)."""
    m = self.mean()
    second = jnp.einsum("k,kd,ke->de", self.weights, self.means, self.means)
    second = second + jnp.diag(self.weights @ self.variances)
    return second - jnp.outer(m, m)

  def perturbed(self, alpha, sigma) -> "GaussianMixture":
    """The law of alpha x0 + sigma noise."""
    return GaussianMixture(self.weights, alpha * self.means, alpha**2 * self.variances + sigma**2)

  def component_log_probs(self, x: jax.Array) -> jax.Array:
    """log w_k + log N(x; mu_k, diag(v_k)) for one example x of shape (D,); shape (K,)."""
    diff = x - self.means
    quad = jnp.sum(diff**2 / self.variances, axis=-1)
    logdet = jnp.sum(jnp.log(self.variances), axis=-1)
    return jnp.log(self.weights) - 0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))

  def log_prob(self, x: jax.Array) -> jax.Array:
    return jax.nn.logsumexp(self.component_log_probs(x))

  def responsibilities(self, x: jax.Array) -> jax.Array:
    return jax.nn.softmax(self.component_log_probs(x))

  def score(self, x: jax.Array) -> jax.Array:
    """grad_x log p(x) = sum_k r_k(x) (mu_k - x) / v_k."""
    r = self.responsibilities(x)
    inv_var = 1.0 / self.variances
    # The same sum as two (K,) x (K, D) products: under vmap they become matrix products, where the
    # elementwise form keeps a (batch, K, D) intermediate and runs 2-5x slower on CPU. The cancellation
    # in mu/v - x/v costs about eps_float * |mu|/v absolute, far below the score's own scale 1/sqrt(v).
    return r @ (self.means * inv_var) - x * (r @ inv_var)

  @property
  def num_components(self) -> int:
    return self.weights.shape[0]

  def sample(self, key: jax.Array, num: int) -> jax.Array:
    """``num`` exact draws, shape (num, D)."""
    return self.sample_with_components(key, num)[0]

  def sample_with_components(self, key: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
    """``num`` exact draws (num, D) with the index of the component each came from (num,) int32."""
    comp_key, noise_key = jr.split(key)
    k = jr.choice(comp_key, self.num_components, (num,), p=self.weights)
    noise = jr.normal(noise_key, (num, self.dim))
    return self.means[k] + jnp.sqrt(self.variances[k]) * noise, k.astype(jnp.int32)

  def restricted(self, keep: jax.Array) -> "GaussianMixture":
    """The mixture of the components where ``keep`` (K,) is true, renormalised (``keep`` may be
    traced)."""
    weights = jnp.where(jnp.asarray(keep, bool), self.weights, 0.0)
    return GaussianMixture(weights / jnp.sum(weights), self.means, self.variances)

  def given_coordinates(self, known: np.ndarray, value: jax.Array) -> "GaussianMixture":
    """p(x_u | x_k = value[k]): the law of the unknown coordinates given the known ones, closed form.

    ``known`` is a concrete bool mask (D,); the result lives on the D_u unknown coordinates, in
    their order. Components are diagonal, so component k given x_k is its own marginal on the
    unknown coordinates, reweighted by how well it explains the known ones:
    w'_k ~ w_k N(value_k; mu_k,known, diag(v_k,known)).
    """
    known = np.asarray(known, bool)
    if known.shape != (self.dim,):
      raise ValueError(f"known must be a bool mask of shape ({self.dim},), got {known.shape}.")
    if known.all() or not known.any():
      raise ValueError("known must mark some but not all coordinates as known.")
    k, u = np.flatnonzero(known), np.flatnonzero(~known)
    seen = GaussianMixture(self.weights, self.means[:, k], self.variances[:, k])
    weights = jax.nn.softmax(seen.component_log_probs(jnp.asarray(value)[k]))
    return GaussianMixture(weights, self.means[:, u], self.variances[:, u])

  def conditioned(self, cond: jax.Array) -> "GaussianMixture":
    """The law given class cond: component cond alone (weight one-hot), or the whole mixture for
    the null label cond = K. Works for a traced cond (the weights are masked, not sliced)."""
    cond = jnp.asarray(cond)
    one_hot = jax.nn.one_hot(cond, self.num_components, dtype=self.weights.dtype)
    weights = jnp.where(cond == self.num_components, self.weights, one_hot)
    return GaussianMixture(weights, self.means, self.variances)


class _DiffusedReadings:
  """What follows from ``marginal(t)`` (a GaussianMixture, the law of x_t): log-density, score,
  noise prediction, posterior mean and samples, for the diffused mixture and its conditionals."""

  def log_prob(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """log p_t(x)."""
    return self.marginal(t).log_prob(x)

  def score(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """The exact score grad_x log p_t(x): a ``score_fn(x, t)``."""
    return self.marginal(t).score(x)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    return self.score(x, t)

  def eps(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """The exact noise prediction E[noise | x_t = x] = -sigma(t) score."""
    return -self.sde.sigma(t) * self.score(x, t)

  def denoised(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """The exact posterior mean E[x0 | x_t = x] = (x + sigma^2 score) / alpha (Tweedie's formula)."""
    alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
    return (x + sigma**2 * self.score(x, t)) / alpha

  def sample(self, key: jax.Array, t: jax.Array, num: int) -> jax.Array:
    """``num`` exact draws of x_t."""
    return self.marginal(t).sample(key, num)


class DiffusedMixture(_DiffusedReadings, flax.struct.PyTreeNode):
  """A Gaussian mixture pushed through a linear SDE: exact quantities at every time t."""

  data: GaussianMixture
  sde: AbstractLinearSDE = flax.struct.field(pytree_node=False)

  def marginal(self, t: jax.Array) -> GaussianMixture:
    """p_t, the law of x_t."""
    return self.data.perturbed(self.sde.alpha(t), self.sde.sigma(t))

  def class_log_probs(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """The exact noisy classifier log p(y | x_t = x) for every class y (K,): the log posterior
    responsibilities of p_t's components (Dhariwal & Nichol 2021 train a network for this)."""
    return jax.nn.log_softmax(self.marginal(t).component_log_probs(x))

  def classifier_grad(self, x: jax.Array, t: jax.Array, y: jax.Array) -> jax.Array:
    """grad_x log p(y | x_t = x) = g_y(x) - sum_k p(k | x) g_k(x), g_k = (alpha mu_k - x)/var_k the
    score of component k of p_t (classifier guidance's gradient; Song et al. 2021, eq. 48)."""
    p_t = self.marginal(t)
    r = p_t.responsibilities(x)
    inv_var = 1.0 / p_t.variances
    g_y = (p_t.means[y] - x) * inv_var[y]
    return g_y - (r @ (p_t.means * inv_var) - x * (r @ inv_var))


class ConditionalDiffusedMixture(_DiffusedReadings, flax.struct.PyTreeNode):
  """The exact conditional score grad_x log p_t(x | y) of a labelled mixture (class y = component y).

  A conditional score function: ``score_fn.replace(cond=y)`` binds a class; cond = K (the null
  label, ``mixture.num_components``) gives the unconditional mixture score. x_t | y ~
  N(alpha mu_y, diag(alpha^2 v_y + sigma^2)), component y diffused through the linear SDE.
  """

  mixture: GaussianMixture
  sde: AbstractLinearSDE = flax.struct.field(pytree_node=False)
  cond: jax.Array = None  # int32 class index, or the null label for "unconditional"; None is null
  # The class of each component, (K,) int32 in 0..C-1, when a class is a group of components (the
  # tree of ``tree_mixture``); None: class y = component y, C = K. A static tuple, so it is checked
  # once and the null label C is a Python int.
  component_classes: tuple | None = flax.struct.field(pytree_node=False, default=None)

  def __post_init__(self):
    classes = self.component_classes
    if classes is not None and isinstance(self.mixture, GaussianMixture):
      if not isinstance(classes, tuple) or len(classes) != self.mixture.weights.shape[0] or \
          sorted(set(classes)) != list(range(max(classes) + 1)):
        raise ValueError("component_classes must be a tuple of one class per component, using every "
                         f"class 0..C-1, got {classes!r}.")

  @property
  def num_classes(self) -> int:
    """C; the null label, C, gives the unconditional score."""
    if self.component_classes is None:
      return self.mixture.num_components
    return max(self.component_classes) + 1

  def _cond(self) -> jax.Array:
    return jnp.asarray(self.num_classes if self.cond is None else self.cond, jnp.int32)

  def class_mixture(self) -> GaussianMixture:
    """p_0(. | y) for the bound class y (the whole mixture for the null label)."""
    if self.component_classes is None:
      return self.mixture.conditioned(self._cond())
    classes = jnp.asarray(self.component_classes, jnp.int32)
    cond = self._cond()
    return self.mixture.restricted((classes == cond) | (cond == self.num_classes))

  def marginal(self, t: jax.Array) -> GaussianMixture:
    """p_t(. | y): class y's components diffused (or the whole diffused mixture for the null label)."""
    return self.class_mixture().perturbed(self.sde.alpha(t), self.sde.sigma(t))

  def class_log_probs(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """The exact noisy classifier log p(y | x_t = x) for every class y (C,), whatever cond is bound."""
    p_t = self.mixture.perturbed(self.sde.alpha(t), self.sde.sigma(t))
    log_r = jax.nn.log_softmax(p_t.component_log_probs(x))
    if self.component_classes is None:
      return log_r
    one_hot = jax.nn.one_hot(jnp.asarray(self.component_classes), self.num_classes, dtype=bool)
    return jax.nn.logsumexp(jnp.where(one_hot, log_r[:, None], -jnp.inf), axis=0)


def random_mixture(key: jax.Array, dim: int, *, num_components: int = 4,
                   min_variance: float = 0.01, max_variance: float = 0.1, mean_scale: float = 1.0,
                   mean_offset: float = 0.0, min_weight: float = 0.5, max_weight: float = 1.5,
                   anisotropy: float | None = None) -> GaussianMixture:
  """THE test-problem factory: a random K-component mixture in any dimension, labelled by component.

  mu_k ~ mean_offset + mean_scale N(0, I); per-axis variances v_kd log-uniform in [min_variance,
  max_variance] (axis-aligned components whose axes' spreads differ at random); weights uniform in
  [min_weight, max_weight] before normalisation. With ``anisotropy`` = a >= 1 every component is
  anisotropic by exactly a: v_kd = b_k a^(f_kd), b_k log-uniform in [min_variance, max_variance] and
  f_k a random permutation of D levels evenly spaced in [-1/2, 1/2] (max/min variance ratio a).
  Components are diagonal (the oracle's closed forms are per axis); rotated covariances are not made.
  The defaults give well-separated modes at several scales. For K unequal, overlapping classes
  (a labelled problem whose classes a classifier cannot separate perfectly) bring the means
  closer than the spreads, e.g. mean_scale=0.8, min_variance=0.2, max_variance=0.5 (in 2-D with K = 3
  the Bayes classifier then errs on 5-26% of draws over seeds 0-3), and unequal
  weights, e.g. min_weight=0.2, max_weight=1.0.
  """
  _check_positive_int("dim", dim)
  _check_positive_int("num_components", num_components)
  if not 0 < min_variance <= max_variance:
    raise ValueError(f"need 0 < min_variance <= max_variance, got {min_variance!r} and "
                     f"{max_variance!r}.")
  if not 0 <= min_weight <= max_weight or not max_weight > 0:
    raise ValueError(f"need 0 <= min_weight <= max_weight with max_weight > 0, got {min_weight!r} "
                     f"and {max_weight!r}.")
  if not mean_scale >= 0:
    raise ValueError(f"mean_scale must be >= 0, got {mean_scale!r}.")
  mean_key, var_key, weight_key = jr.split(key, 3)
  means = mean_offset + mean_scale * jr.normal(mean_key, (num_components, dim))
  log_var_range = dict(minval=math.log(min_variance), maxval=math.log(max_variance))
  if anisotropy is None:
    variances = jnp.exp(jr.uniform(var_key, (num_components, dim), **log_var_range))
  else:
    if not anisotropy >= 1:
      raise ValueError(f"anisotropy must be >= 1 (a max/min variance ratio) or None, got "
                       f"{anisotropy!r}.")
    base = jnp.exp(jr.uniform(var_key, (num_components, 1), **log_var_range))
    levels = jnp.linspace(-0.5, 0.5, dim) if dim > 1 else jnp.zeros(1)
    perm_keys = jr.split(jr.fold_in(key, 3), num_components)
    f = jax.vmap(lambda k: jr.permutation(k, levels))(perm_keys)
    variances = base * anisotropy**f
  weights = jr.uniform(weight_key, (num_components,), minval=min_weight, maxval=max_weight)
  return GaussianMixture.create(weights, means, variances)


def _check_positive_int(name: str, value) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}.")


def eight_gaussians(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
  """Eight equal Gaussians on a circle: the standard 2-D toy with a known density."""
  angles = jnp.arange(8) * (2 * math.pi / 8)
  means = radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
  return GaussianMixture.create(jnp.ones(8), means, std**2)


def benchmark_mixture(dim: int) -> GaussianMixture:
  """The standard problem of a given dimension, shared by the likelihood tests, benchmarks and
  figures: ``eight_gaussians()`` in 2-D, ``random_mixture(key(dim), dim)`` otherwise."""
  _check_positive_int("dim", dim)
  if dim == 2:
    return eight_gaussians()
  return random_mixture(jr.key(dim), dim)


def tree_mixture(depth: int = 5, *, trunk: float = 1.0, width: float = 0.1,
                 shrink: float = 0.72) -> tuple[GaussianMixture, tuple[int, ...]]:
  """Two classes shaped as branching trees, with their component classes: the autoguidance toy.

  In the spirit of the 2-D toy of Karras et al. 2024 (Fig. 1): from the origin, class 0 grows to
  the right and class 1 upwards, each from a trunk that splits in two perpendicular branches at
  every end (an H-tree), ``depth`` levels deep; the two trees cross in the upper right quadrant.
  A branch of length L is one Gaussian elongated along it (variance L^2/12 along, the variance of
  a uniform segment, and width^2 across); lengths and widths shrink by ``shrink`` per level, and
  each level carries the same share of its class's mass, spread evenly over its 2^level branches,
  so the outer twigs are thin, light and many. The mass sits on thin filaments with empty space
  between them: exactly what guidance that narrows towards each class's bulk loses. Components
  are axis-aligned (diagonal), so the oracle's closed forms hold at every noise level. Returns
  (mixture, component_classes).
  """
  _check_positive_int("depth", depth)
  means, variances, weights, classes = [], [], [], []
  for label, direction in ((0, (1.0, 0.0)), (1, (0.0, 1.0))):
    # (start point, unit direction, length, width, level)
    frontier = [(np.array([0.0, 0.0]), np.array(direction), trunk, width, 0)]
    while frontier:
      start, unit, length, w, level = frontier.pop()
      centre = start + 0.5 * length * unit
      along = np.abs(unit)
      means.append(centre)
      variances.append(along * length**2 / 12 + (1 - along) * w**2)
      weights.append(1.0 / (depth * 2**level))
      classes.append(label)
      if level + 1 < depth:
        end = start + length * unit
        perp = np.array([unit[1], unit[0]])
        for sign in (1.0, -1.0):
          frontier.append((end, sign * perp, length * shrink, w * shrink, level + 1))
  return (GaussianMixture.create(np.array(weights), np.array(means), np.array(variances)),
          tuple(classes))
