"""Heads on encoder features (reference §1.3, §3.2).

The MLP heads follow the reference: Linear(bias) → BN → ReLU → Linear(no bias). Input sizes are inferred, so the same
head fits ResNet-18/34 (512-d) and ResNet-50+ (2048-d) features; the reference hard-codes 2048 for the projection head.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLPHead(nn.Module):
  """Dense(hidden, bias) → BN → ReLU → Dense(out, no bias); float32 output."""

  hidden: int
  out: int
  dtype: jnp.dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    x = nn.BatchNorm(
      use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_eps, dtype=self.dtype, name="bn"
    )(x)
    x = nn.Dense(self.out, use_bias=False, dtype=self.dtype, name="fc2")(nn.relu(x))
    return x.astype(jnp.float32)


class ProjectionHead(MLPHead):
  """SimCLR/PeCLR projection g(h): features → 512 → 128 (PeCLR reads the 128 outputs as 64 2-D points)."""

  hidden: int = 512
  out: int = 128


class RelativeHead(nn.Module):
  """One relative-transformation regressor: [h1, h2] → 1024 → k (hpe's pairwise model)."""

  out: int
  hidden: int = 1024
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h1, h2, train: bool):
    return MLPHead(self.hidden, self.out, self.dtype, name="mlp")(jnp.concatenate([h1, h2], axis=-1), train)


class LinearProbe(nn.Module):
  """Dense(out) on features; `stop_gradient` keeps an online probe from training the encoder (SimCLR, scenic)."""

  out: int
  stop_gradient: bool = True

  @nn.compact
  def __call__(self, x):
    if self.stop_gradient:
      x = jax.lax.stop_gradient(x)
    return nn.Dense(self.out, name="fc")(x)
