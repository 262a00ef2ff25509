"""ControlNet (Zhang et al. 2023, "Adding conditional control to text-to-image diffusion models"):
a trainable copy of a frozen U-Net's encoder and middle, fed a spatial control, joined to the
frozen U-Net by zero-initialised 1x1 convolutions.

    F_c(x, t, y, c) = F(x, t, y; skips + Z_i(copy_i(x + H(c))), middle + Z_mid(copy_mid(...)))

H is the hint network (the control resized to the image, a 3x3 convolution, SiLU and a zero
convolution into the stem's width), Z the zero convolutions. With H's last layer and every Z at
exactly zero, the residuals are zero and the tuned model's output is the frozen model's, bit for
bit; training then grows the control's influence from nothing. The copy's layers carry the U-Net's
names, so ``copy_encoder`` starts them at the frozen weights (``diffusion_jax.tuning.ControlNet``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax import _checks
from diffusion_jax.nets import init as inits
from diffusion_jax.nets import unet as unet_lib
from diffusion_jax.nets.conv import Conv2D


def resize_control(control: jax.Array, height: int, width: int) -> jax.Array:
  """A (B, h, w, C) control repeated (nearest neighbour) to (B, height, width, C); h, w divide."""
  b, h, w, _ = control.shape
  if height % h or width % w:
    raise ValueError(f"control's spatial size {(h, w)} must divide the image's {(height, width)}.")
  return jnp.repeat(jnp.repeat(control, height // h, axis=1), width // w, axis=2)


class ControlNet(nn.Module):
  """The residuals a ControlNet adds to ``unet``'s skip connections and middle output.

  ``__call__(x, t, cond, *, train=False)`` -> list of arrays: one per skip connection of ``unet``
  (finest first) and one for the middle, the ``residuals`` of ``UNet.__call__``. ``cond`` is a
  dict: "control" (B, h, w, C_c) with h, w dividing the image's size (e.g. a 4x4 average pooling)
  and, for a conditional U-Net, "label" (its condition; absent or None: the null label).

  Attributes:
    unet: the frozen network (read for its fields only; its layers are rebuilt here as the copy).
    hint_channels: the hidden width of the hint network.
  """

  unet: unet_lib.UNet
  hint_channels: int = 16

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, cond: dict, *,
               train: bool = False) -> list[jax.Array]:
    net = self.unet
    _checks.check_count("hint_channels", self.hint_channels)
    t = net.check_input(x, t)
    if not isinstance(cond, dict) or "control" not in cond:
      raise ValueError(f"cond must be a dict with a 'control' entry (and optionally 'label'), got "
                       f"{type(cond).__name__}.")
    control = jnp.asarray(cond["control"], x.dtype)
    if control.ndim != 4 or control.shape[0] != x.shape[0]:
      raise ValueError(f"control must be (B, h, w, C) with B = {x.shape[0]}, got {control.shape}.")
    deterministic = not train or net.dropout == 0.0 or not self.has_rng("dropout")
    emb = unet_lib.embed(net, t, cond.get("label"))
    g = resize_control(control, x.shape[1], x.shape[2])
    g = nn.silu(Conv2D(self.hint_channels, 3, dtype=net.dtype, name="hint0")(g))
    g = Conv2D(net.model_channels, 3, kernel_init=inits.zeros, dtype=net.dtype, name="hint_out")(g)
    h, skips = unet_lib.encode(net, x, emb, deterministic, stem_offset=g)

    def zero_conv(y, name):
      return Conv2D(y.shape[-1], 1, kernel_init=inits.zeros, dtype=net.dtype, name=name)(y)

    return [zero_conv(s, f"zero_skip{i}") for i, s in enumerate(skips)] + [zero_conv(h, "zero_mid")]


def copy_encoder(control_params, unet_params):
  """The ControlNet's parameters with every layer the U-Net also has (stem, encoder, middle,
  embeddings) set to the U-Net's weights: the trainable copy starts where the frozen model is."""
  own, base = control_params["params"], unet_params["params"]
  missing = sorted(k for k in own if not k.startswith(("hint", "zero_")) and k not in base)
  if missing:
    raise ValueError(f"the U-Net's parameters lack the ControlNet copy's layers {missing}; the "
                     "ControlNet must be built on the U-Net the parameters belong to.")
  copied = {k: (jax.tree.map(jnp.array, base[k]) if k in base else v) for k, v in own.items()}
  return {**control_params, "params": copied}
