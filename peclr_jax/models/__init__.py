"""Encoders (torchvision-style ResNets) and the heads used by the objectives and probes."""

from peclr_jax.models.heads import LinearProbe, MLPHead, ProjectionHead, RelativeHead
from peclr_jax.models.resnet import MODELS, ResNet, create

__all__ = ["MODELS", "LinearProbe", "MLPHead", "ProjectionHead", "RelativeHead", "ResNet", "create"]
