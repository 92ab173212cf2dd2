"""Encoders (torchvision-style ResNets, the latent 2.5-D hourglass) and the heads of the objectives and probes."""

from peclr_jax.models.heads import LinearProbe, MLPHead, ProjectionHead, RelativeHead
from peclr_jax.models.hourglass import Hourglass25D
from peclr_jax.models.resnet import MODELS, ResNet, create

ENCODERS = (*MODELS, "hourglass")


def encoder(model, name=None):
  """The encoder a config's `model` describes: a ResNet (`resnet18`...`resnet152`) or `hourglass`."""
  if model.name == "hourglass":
    return Hourglass25D(width=model.width, stacks=model.get("stacks", 2), name=name)
  return create(model.name, width=model.width, small_stem=model.small_stem, zero_init_last_bn=model.zero_init_last_bn,
                conv_grad=model.get("conv_grad", "xla"), name=name)


__all__ = ["ENCODERS", "MODELS", "Hourglass25D", "LinearProbe", "MLPHead", "ProjectionHead", "RelativeHead",
           "ResNet", "create", "encoder"]
