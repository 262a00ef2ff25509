"""Tuning a frozen network: a ``Tuner`` names the small tree that is trained and how it changes
the network; the frozen weights are read, never written.

    prediction = tuner.apply(base_fn, base_params, tuned, x, t, cond, key=..., train=...)

``TunedModelFn(base_fn, tuner)`` is an ordinary ``model_fn`` over the parameters
``{"base": frozen, "tuned": trainable}``, so a tuned network goes wherever a network goes: a loss
built with ``combine_fn=combine`` differentiates the trainable tree only (``diffusion_jax.train``
with the frozen tree as ``TrainState.frozen``), and ``NetworkScore`` over it feeds guidance, every
sampler and the likelihood. ``base_fn`` is the raw network (``nets.ModuleModelFn``); a
preconditioning (``EDMPrecond``) wraps the tuned model as it wraps the network.

The tuners (the lecture's prompt tuning and representation tuning, and the adapters in use):
- ``PromptTuning``: one new condition embedding for a label, the network frozen (textual
  inversion, Gal et al. 2022).
- ``FineTune``: every weight (DreamBooth, Ruiz et al. 2022; its prior preservation is a matter of
  the training batches: the frozen model's own samples of other classes next to the new images).
- ``LoRA``: low-rank updates W + (alpha / r) A B of chosen kernels, merged into the weights or
  applied as a separate path (Hu et al. 2021).
- ``FiLM``: per-channel scale and shift of each residual block's output for chosen labels
  (Perez et al. 2018's feature-wise modulation as an adapter).
- ``ControlNet``: a trainable copy of the encoder fed a spatial control, joined by zero
  convolutions (Zhang et al. 2023; ``nets.ControlNet``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Protocol

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import _checks
from diffusion_jax.nets import controlnet as controlnet_lib
from diffusion_jax.nets.conv import Conv2D
from diffusion_jax.nets.model_fn import ModuleModelFn
from diffusion_jax.nets import unet as unet_lib
from diffusion_jax.nets.unet import ResBlock, UNet


class Tuner(Protocol):
  """What is trained, and how it enters the network."""

  def init(self, key: jax.Array, base_params) -> Any:
    """The trainable tree at step 0; the tuned network then equals the frozen one (or, for prompt
    tuning, differs only for the tuned label)."""

  def apply(self, base_fn, base_params, tuned, x, t, cond, *, key=None, train=False) -> jax.Array:
    """The tuned network's batched prediction."""


class TunedModelFn(flax.struct.PyTreeNode):
  """``model_fn(params, x, t, cond, *, key, train)`` of a frozen network and a tuner, with
  ``params = {"base": frozen, "tuned": trainable}`` (``combine``)."""

  base_fn: Any = flax.struct.field(pytree_node=False)
  tuner: Any = flax.struct.field(pytree_node=False)

  def __call__(self, params, x, t, cond=None, *, key=None, train: bool = False) -> jax.Array:
    if not isinstance(params, dict) or set(params) != {"base", "tuned"}:
      keys = sorted(params) if isinstance(params, dict) else type(params).__name__
      raise ValueError(f"params of a tuned model must be {{'base': frozen, 'tuned': trainable}} "
                       f"(tuning.combine), got {keys}.")
    return self.tuner.apply(self.base_fn, params["base"], params["tuned"], x, t, cond, key=key,
                            train=train)


def combine(tuned, base) -> dict:
  """The ``combine_fn(params, frozen)`` of the losses: the tuned model's parameters."""
  return {"base": base, "tuned": tuned}


def num_params(tree) -> int:
  """The number of scalars in a parameter tree."""
  return int(sum(np.size(leaf) for leaf in jax.tree.leaves(tree)))


def _get(tree, path: tuple[str, ...]):
  for part in path:
    if not isinstance(tree, dict) or part not in tree:
      raise ValueError(f"the parameters have no entry {'/'.join(path)!r} (missing {part!r}).")
    tree = tree[part]
  return tree


def _replace(tree, path: tuple[str, ...], value):
  """A copy of nested dicts ``tree`` with ``tree[path] = value`` (the other leaves shared; missing
  levels created)."""
  if not path:
    return value
  return {**tree, path[0]: _replace(tree.get(path[0], {}), path[1:], value)}


def _module_rngs(key):
  return None if key is None else {"dropout": key}


@dataclasses.dataclass(frozen=True)
class PromptTuning:
  """Textual inversion for a label-conditional network: the embedding row of ``label`` is replaced
  by a trained vector v, E(label) <- v (Gal et al. 2022, one new "word"), and nothing else changes,
  so every other label's prediction is computed from the same weights and rows as before.

  ``per_block=True`` learns one vector per residual block instead (Voynov et al. 2023's P+, a
  token per layer): block b sees the embedding MLP of (noise embedding + v_b) for the label; for
  every other label each block's embedding is the frozen one, computed from the same row.
  ``init_labels``: the vectors start at the mean of these labels' rows (Gal et al. start from a
  coarse descriptor's embedding); empty: at the row's current value.
  ``table``: the path of the (K + 1, D) label table in the parameters (a U-Net's, for per_block).
  """

  label: int
  init_labels: tuple[int, ...] = ()
  per_block: bool = False
  table: tuple[str, ...] = ("params", "label_embedding", "embedding")

  def _table(self, base_params):
    table = _get(base_params, self.table)
    if not 0 <= self.label < table.shape[0]:
      raise ValueError(f"label must index the label table's {table.shape[0]} rows, got "
                       f"{self.label!r}.")
    return table

  def init(self, key, base_params):
    del key
    table = self._table(base_params)
    if self.init_labels:
      start = jnp.mean(jnp.asarray(table)[np.asarray(self.init_labels)], axis=0)
    else:
      start = jnp.array(table[self.label])
    if not self.per_block:
      return {"embedding": start}
    blocks = _resblock_widths(base_params)
    if not blocks:
      raise ValueError("per_block prompt tuning needs a U-Net's residual blocks; the parameters "
                       "have none.")
    return {"blocks": {name: start for name in blocks}}

  def merge(self, base_params, tuned):
    """The frozen parameters with the label's row replaced (per_block=False)."""
    table = self._table(base_params)
    return _replace(base_params, self.table,
                    jnp.asarray(table).at[self.label].set(tuned["embedding"]))

  def apply(self, base_fn, base_params, tuned, x, t, cond, *, key=None, train=False):
    if not self.per_block:
      return base_fn(self.merge(base_params, tuned), x, t, cond, key=key, train=train)
    if not isinstance(base_fn, ModuleModelFn) or not isinstance(base_fn.module, UNet):
      raise ValueError("per_block prompt tuning runs a U-Net's embedding per block: base_fn "
                       "must be nets.as_model_fn(unet).")
    unet = base_fn.module
    embedding = _Embedding(unet)
    layers = {k: v for k, v in base_params["params"].items()
              if k in ("label_embedding", "emb_dense0", "emb_dense1", "fourier")}
    table = jnp.asarray(self._table(base_params))
    t_in = jnp.asarray(t, x.dtype)

    def block_embedding(vector):
      own = {**layers, "label_embedding": {"embedding": table.at[self.label].set(vector)}}
      return embedding.apply({"params": own}, t_in, cond)

    def per_block(next_fn, args, kwargs, context):
      path = context.module.path
      if (context.method_name == "__call__" and isinstance(context.module, ResBlock)
          and len(path) == 1 and path[0] in tuned["blocks"]):
        args = (args[0], block_embedding(tuned["blocks"][path[0]]), *args[2:])
      return next_fn(*args, **kwargs)

    with nn.intercept_methods(per_block):
      return base_fn(base_params, x, t, cond, key=key, train=train)


class _Embedding(nn.Module):
  """A U-Net's time-and-condition embedding alone, with the U-Net's layer names."""

  unet: UNet

  @nn.compact
  def __call__(self, t, cond):
    return unet_lib.embed(self.unet, t, cond)


@dataclasses.dataclass(frozen=True)
class FineTune:
  """Every weight trainable, starting from the frozen ones (DreamBooth's fine-tuning, Ruiz et al.
  2022): the frozen tree stays as the reference the tuned one started from."""

  def init(self, key, base_params):
    del key
    return jax.tree.map(jnp.array, base_params)

  def apply(self, base_fn, base_params, tuned, x, t, cond, *, key=None, train=False):
    del base_params
    return base_fn(tuned, x, t, cond, key=key, train=train)


# The U-Net's attention projections and its embedding layers (the label's way in): LoRA's default.
LORA_DEFAULT_TARGETS = r"(^|/)(qkv|proj|emb_dense\d|emb_proj)/kernel$"


def _kernel_paths(base_params, targets: str) -> list[tuple[str, ...]]:
  pattern = re.compile(targets)
  found = []

  def visit(tree, path):
    for name, value in tree.items():
      if isinstance(value, dict):
        visit(value, (*path, name))
      elif (name == "kernel" and np.ndim(value) in (2, 4)
            and pattern.search("/".join((*path, name)))):
        found.append((*path, name))

  visit(base_params, ())
  return found


@dataclasses.dataclass(frozen=True)
class LoRA:
  """Low-rank adaptation (Hu et al. 2021): each target kernel W (fan_in, fan_out) becomes
  W + (alpha / rank) A B with A (fan_in, rank) Gaussian and B (rank, fan_out) zero, so the tuned
  network starts as the frozen one. A convolution's kernel (kh, kw, C_in, C_out) gets
  A (kh, kw, C_in, rank): a rank-``rank`` convolution followed by a 1x1 one.

  ``merged=True`` computes the merged kernels and runs the frozen network on them (one network's
  cost); ``merged=False`` keeps the low-rank path separate, y = W x + (alpha / rank) B (A x), which
  leaves the frozen weights as they are (the form for training and for swapping adapters).
  ``targets``: a regular expression searched in each kernel's path "params/<module>/.../kernel".
  ``alpha``: None is alpha = rank (a scale of 1).
  """

  rank: int = 4
  alpha: float | None = None
  targets: str = LORA_DEFAULT_TARGETS
  merged: bool = False

  @property
  def scale(self) -> float:
    return 1.0 if self.alpha is None else self.alpha / self.rank

  def init(self, key, base_params):
    _checks.check_count("rank", self.rank)
    paths = _kernel_paths(base_params, self.targets)
    if not paths:
      raise ValueError(f"targets={self.targets!r} matches no kernel of the parameters.")
    tuned = {}
    for i, path in enumerate(paths):
      kernel = _get(base_params, path)
      fan_in = int(np.prod(kernel.shape[:-1]))
      a = jax.random.normal(jax.random.fold_in(key, i), (*kernel.shape[:-1], self.rank))
      pair = {"a": a / math.sqrt(fan_in), "b": jnp.zeros((self.rank, kernel.shape[-1]))}
      tuned = _replace(tuned, path[:-1], pair)
    return tuned

  def _pairs(self, tuned):
    out = {}

    def visit(tree, path):
      if set(tree) == {"a", "b"}:
        out[path] = tree
        return
      for name, value in tree.items():
        visit(value, (*path, name))

    visit(tuned, ())
    return out

  def merge(self, base_params, tuned):
    """The frozen parameters with each target kernel W replaced by W + (alpha / rank) A B."""
    params = base_params
    for path, pair in self._pairs(tuned).items():
      kernel = _get(base_params, (*path, "kernel"))
      delta = jnp.tensordot(pair["a"], pair["b"], axes=1)
      params = _replace(params, (*path, "kernel"), kernel + self.scale * delta.astype(kernel.dtype))
    return params

  def apply(self, base_fn, base_params, tuned, x, t, cond, *, key=None, train=False):
    if self.merged:
      return base_fn(self.merge(base_params, tuned), x, t, cond, key=key, train=train)
    # The module paths below exclude the "params" collection.
    pairs = {path[1:]: pair for path, pair in self._pairs(tuned).items()}

    def low_rank(next_fn, args, kwargs, context):
      y = next_fn(*args, **kwargs)
      pair = pairs.get(context.module.path) if context.method_name == "__call__" else None
      if pair is None:
        return y
      h = args[0]
      if isinstance(context.module, Conv2D):
        m = context.module
        pad = (m.kernel_size - 1) // 2
        h = jax.lax.conv_general_dilated(h, pair["a"].astype(h.dtype), (m.strides, m.strides),
                                         ((pad, pad), (pad, pad)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
      elif isinstance(context.module, nn.Dense):
        h = h @ pair["a"].astype(h.dtype)
      else:
        raise TypeError(f"LoRA targets Conv2D and Dense kernels; {'/'.join(context.module.path)} "
                        f"is a {type(context.module).__name__}.")
      return y + self.scale * (h @ pair["b"].astype(h.dtype))

    with nn.intercept_methods(low_rank):
      return base_fn(base_params, x, t, cond, key=key, train=train)


def _resblock_widths(base_params) -> dict[str, int]:
  """{block name: output channels} of the U-Net's residual blocks (the modules with a conv1)."""
  return {name: int(layers["conv1"]["kernel"].shape[-1])
          for name, layers in _get(base_params, ("params",)).items()
          if isinstance(layers, dict) and "conv1" in layers}


@dataclasses.dataclass(frozen=True)
class FiLM:
  """Feature-wise linear modulation adapters (Perez et al. 2018): each residual block's output h
  of an example whose label is ``labels[j]`` becomes h (1 + gamma_j) + beta_j, per channel, with
  gamma, beta (len(labels), C) starting at zero; examples with any other label pass through
  unchanged (the adapter selects the frozen output for them, it does not multiply by one).
  """

  labels: tuple[int, ...]

  def init(self, key, base_params):
    del key
    if not self.labels:
      raise ValueError("labels must name at least one label to adapt.")
    widths = _resblock_widths(base_params)
    if not widths:
      raise ValueError("FiLM adapts residual blocks; the parameters have none (a U-Net's blocks "
                       "have a conv1).")
    n = len(self.labels)
    return {name: {"scale": jnp.zeros((n, c)), "shift": jnp.zeros((n, c))}
            for name, c in widths.items()}

  def apply(self, base_fn, base_params, tuned, x, t, cond, *, key=None, train=False):
    labels = jnp.asarray(cond)
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != (x.shape[0],):
      raise ValueError(f"FiLM needs integer labels of shape ({x.shape[0]},) as cond, got "
                       f"{labels.dtype}{labels.shape}.")
    match = labels[:, None] == jnp.asarray(self.labels)[None, :]  # (B, n)
    selected, index = match.any(axis=1), jnp.argmax(match, axis=1)

    def modulate(next_fn, args, kwargs, context):
      y = next_fn(*args, **kwargs)
      path = context.module.path
      if (context.method_name != "__call__" or not isinstance(context.module, ResBlock)
          or len(path) != 1 or path[0] not in tuned):
        return y
      film = tuned[path[0]]
      gamma = film["scale"][index][:, None, None, :].astype(y.dtype)
      beta = film["shift"][index][:, None, None, :].astype(y.dtype)
      return jnp.where(selected[:, None, None, None], y * (1 + gamma) + beta, y)

    with nn.intercept_methods(modulate):
      return base_fn(base_params, x, t, cond, key=key, train=train)


@dataclasses.dataclass(frozen=True)
class ControlNet:
  """A ControlNet on a frozen U-Net (Zhang et al. 2023; ``nets.ControlNet``): the condition is
  {"control": (B, h, w, C_c), "label": the U-Net's condition (optional)}; the trainable tree is
  the copy (started at the frozen encoder's weights), its hint network and zero convolutions.
  Before training the tuned output is the frozen one, bit for bit.

  ``example_shape``: one image's (H, W, C); ``control_shape``: one control's (h, w, C_c).
  """

  unet: UNet
  example_shape: tuple[int, ...]
  control_shape: tuple[int, ...]
  hint_channels: int = 16

  @property
  def network(self) -> controlnet_lib.ControlNet:
    return controlnet_lib.ControlNet(self.unet, hint_channels=self.hint_channels)

  def init(self, key, base_params):
    from diffusion_jax.nets import init as inits

    cond = {"control": jnp.zeros((1, *self.control_shape))}
    if self.unet.num_classes:
      cond["label"] = jnp.zeros((1,), jnp.int32)
    params = inits.init_params(self.network, key, jnp.zeros((1, *self.example_shape)),
                               jnp.ones((1,)), cond)
    return controlnet_lib.copy_encoder(params, base_params)

  def apply(self, base_fn, base_params, tuned, x, t, cond, *, key=None, train=False):
    if not isinstance(base_fn, ModuleModelFn) or base_fn.module != self.unet:
      raise ValueError("a ControlNet tunes the U-Net it was built on: base_fn must be "
                       "nets.as_model_fn(unet) of the same unet.")
    if not isinstance(cond, dict) or "control" not in cond:
      raise ValueError("a ControlNet's cond must be a dict with a 'control' entry (and 'label' "
                       f"for a conditional U-Net), got {type(cond).__name__}.")
    residuals = self.network.apply(tuned, x, t, cond, train=train, rngs=_module_rngs(key))
    return self.unet.apply(base_params, x, t, cond.get("label"), train=train, residuals=residuals,
                           rngs=_module_rngs(key))


def average_pool(x: jax.Array, size: int) -> jax.Array:
  """(B, H, W, C) images averaged over blocks to (B, size, size, C): a coarse spatial control
  (e.g. the 4x4 pooling of 8x8 digits averages 2x2 blocks). ``size`` must divide H and W."""
  b, h, w, c = x.shape
  if h % size or w % size:
    raise ValueError(f"size must divide the images' height and width {(h, w)}, got {size!r}.")
  return x.reshape(b, size, h // size, size, w // size, c).mean(axis=(2, 4))
