"""Encoders (torchvision-style ResNets, the latent 2.5-D hourglass) and the heads of the objectives and probes."""

import jax.numpy as jnp

from peclr_jax import validate
from peclr_jax.models.conv import MODES as CONVS
from peclr_jax.models.heads import LinearProbe, MLPHead, ProjectionHead, RelativeHead
from peclr_jax.models.hourglass import Hourglass25D
from peclr_jax.models.resnet import MODELS, ResNet, create

ENCODERS = (*MODELS, "hourglass")
DTYPES = ("float32", "bfloat16")  # compute dtypes; parameters, BN statistics and optimiser state stay float32

# config.model, as the pretraining and probe configs share it (the heads' sizes are pretraining's).
RULES = {
  "name": validate.one_of(ENCODERS),
  "width": validate.COUNT,
  "small_stem": validate.BOOL,
  "zero_init_last_bn": validate.BOOL,
  "stacks": validate.COUNT,
  "proj_hidden": validate.COUNT,
  "proj_out": validate.COUNT,
  "rel_hidden": validate.COUNT,
  "conv": validate.one_of(CONVS),
  "dtype": validate.one_of(DTYPES),
}


def dtype(model):
  """The compute dtype a config's `model.dtype` names (float32 when absent: older exported encoders)."""
  name = model.get("dtype", "float32")
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype={name!r}: expected one of {', '.join(DTYPES)}")
  return jnp.dtype(name)


def conv_mode(model):
  """The convolution a config's `model.conv` names (models/conv.py; xla when absent: older exported encoders)."""
  name = model.get("conv", "xla")
  if name not in CONVS:
    raise ValueError(f"config.model.conv={name!r}: expected one of {', '.join(CONVS)}")
  return name


def encoder(model, name=None):
  """The encoder a config's `model` describes: a ResNet (`resnet18`...`resnet152`) or `hourglass`."""
  if model.name == "hourglass":
    return Hourglass25D(
      width=model.width, stacks=model.get("stacks", 2), dtype=dtype(model), conv=conv_mode(model), name=name
    )
  return create(
    model.name,
    width=model.width,
    small_stem=model.small_stem,
    zero_init_last_bn=model.zero_init_last_bn,
    conv=conv_mode(model),
    dtype=dtype(model),
    name=name,
  )


__all__ = [
  "CONVS",
  "DTYPES",
  "ENCODERS",
  "MODELS",
  "RULES",
  "Hourglass25D",
  "LinearProbe",
  "MLPHead",
  "ProjectionHead",
  "RelativeHead",
  "ResNet",
  "conv_mode",
  "create",
  "dtype",
  "encoder",
]
