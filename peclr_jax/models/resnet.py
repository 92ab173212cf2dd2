"""torchvision-style ResNet v1.5 encoders in Flax linen (reference §3.1).

Module names follow torchvision (`conv1`, `bn1`, `layer2_0/downsample_conv`, ...) and every padding is explicit and
symmetric as in PyTorch, so converted torchvision weights give the same features. Convolutions have no bias and use
torchvision's Kaiming fan-out init; BN uses PyTorch's momentum 0.1 (Flax `momentum=0.9`) and eps 1e-5.

`zero_init_last_bn` defaults to False, as torchvision (the reference starts from torchvision weights); the Flax
ImageNet example sets it, which makes every block start as the identity.

One deviation: Flax's BN running variance uses the biased batch variance, PyTorch's the unbiased one; the factor
n/(n-1) over n = batch·H·W positions is ≤ 1.0005 at the reference's batch of 256 views.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from peclr_jax.models import conv as conv_lib

ModuleDef = Any

STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision: kaiming_normal_, fan_out


def _pad(k):
  return [(k // 2, k // 2)] * 2


class _Block(nn.Module):
  channels: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  last_init: Any  # scale init of the block's last BN: ones, or zeros to start as the identity
  expansion = 1

  def shortcut(self, x):
    """Identity, or a strided 1×1 conv + BN when the shape changes (torchvision's option B)."""
    out = self.channels * self.expansion
    if self.strides == 1 and x.shape[-1] == out:
      return x
    return self.norm(name="downsample_bn")(self.conv(out, (1, 1), self.strides, name="downsample_conv")(x))


class BasicBlock(_Block):
  """3×3 → 3×3, expansion 1 (ResNet-18/34)."""

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.channels, (3, 3), self.strides, padding=_pad(3), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.channels, (3, 3), padding=_pad(3), name="conv2")(y)
    y = self.norm(scale_init=self.last_init, name="bn2")(y)
    return nn.relu(y + self.shortcut(x))


class Bottleneck(_Block):
  """1×1 → 3×3 (strided: v1.5) → 1×1, expansion 4 (ResNet-50/101/152)."""

  expansion = 4

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm(name="bn1")(self.conv(self.channels, (1, 1), name="conv1")(x)))
    y = self.conv(self.channels, (3, 3), self.strides, padding=_pad(3), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.norm(scale_init=self.last_init, name="bn3")(self.conv(self.channels * 4, (1, 1), name="conv3")(y))
    return nn.relu(y + self.shortcut(x))


class ResNet(nn.Module):
  """ResNet-`depth` trunk: stem → 4 stages → global average pool → float32 features [B, 8·width or 32·width].

  `width` is the stem's channel count (64 for the standard nets) and scales every stage, so width=8 gives tiny test
  models. `small_stem` replaces the 7×7/2 conv + max-pool with a 3×3/1 conv (output stride 8, for 32-64 px images).
  The last feature map, before pooling, is sown as `intermediates/feature_map`.
  """

  depth: int = 18
  width: int = 64
  zero_init_last_bn: bool = False
  small_stem: bool = False
  dtype: jnp.dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  conv: str = "xla"  # "xla" (lax's convolution), "cpu" (models/conv.py: the fast formulation on XLA's CPU), "auto"

  @property
  def features(self):
    return self.width * 8 * (1 if self.depth < 50 else 4)

  @nn.compact
  def __call__(self, x, train: bool):
    if self.depth not in STAGES:
      raise ValueError(f"depth must be one of {sorted(STAGES)}, got {self.depth}")
    conv = functools.partial(
      nn.Conv,
      use_bias=False,
      padding="VALID",
      kernel_init=conv_init,
      dtype=self.dtype,
      conv_general_dilated=conv_lib.impl(self.conv),
    )
    norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_eps, dtype=self.dtype
    )
    block = BasicBlock if self.depth < 50 else Bottleneck
    last = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones

    x = jnp.asarray(x, self.dtype)
    if self.small_stem:
      x = nn.relu(norm(name="bn1")(conv(self.width, (3, 3), padding=_pad(3), name="conv1")(x)))
    else:
      x = nn.relu(norm(name="bn1")(conv(self.width, (7, 7), 2, padding=_pad(7), name="conv1")(x)))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=_pad(3))
    for i, n in enumerate(STAGES[self.depth]):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = block(self.width * 2**i, strides, conv, norm, last, name=f"layer{i + 1}_{j}")(x)
    self.sow("intermediates", "feature_map", x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


MODELS = {f"resnet{d}": functools.partial(ResNet, depth=d) for d in STAGES}


def create(model, /, **kw):
  """`create("resnet50", width=8)` → ResNet(depth=50, width=8); other keywords (e.g. a module `name`) pass on."""
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
  return MODELS[model](**kw)
