"""Keypoint regression: `--config=probe:MODE[,SIZE]` (peclr-probe, peclr_jax/probe.py).

MODE: linear | mlp | finetune | scratch | label_fraction (keypoints.MODES). SIZE: full | cpu | tiny, with the encoder
architecture and data of the pretraining config of the same size, so a pretraining run's encoder fits as is.

  peclr-pretrain --config=pretrain:peclr,cpu --workdir=runs/peclr_cpu
  peclr-probe --config=probe:linear,cpu --config.encoder=runs/peclr_cpu --workdir=runs/linear_peclr
  peclr-probe --config=probe:linear,cpu --workdir=runs/linear_random      # a frozen random-init encoder
  peclr-probe --config=probe:scratch,cpu --workdir=runs/scratch           # supervised from scratch

`cpu` runs batch 64 at 64 px: 1,000 steps for a linear or MLP probe (a minute or two on 2 cores), 4,000 for
fine-tuning and scratch (about ten minutes). `full` is the reference's linear-evaluation recipe (ResNet-50, 128 px,
batch 128, Adam 5e-4, wd 2e-4, cosine over 50 epochs) and needs an accelerator. `tiny` runs a few steps in seconds
(the tests').
"""

import ml_collections

from peclr_jax import augment, configs
from peclr_jax.configs import pretrain
from peclr_jax.keypoints import MODES


def get_config(arg="linear"):
  mode, size = configs.split_arg(arg, MODES, "linear", "full", "MODE")
  base = pretrain.get_config(f"peclr,{size}")  # its data and encoder architecture are shared
  c = ml_collections.ConfigDict()
  c.mode = mode
  c.encoder = ""  # a pretraining workdir (or its encoder/ export); empty = random init
  c.seed = 0

  c.data = base.data
  c.data.label_fraction = 1.0  # fraction of labelled ids used (nested subsets, whole FreiHAND ids)
  c.label_fractions = (0.01, 0.1, 1.0)  # mode label_fraction: one run per fraction
  c.model = base.model  # must match the encoder's; checked when it is loaded

  c.head = ml_collections.ConfigDict(
    dict(
      kind="mlp" if mode == "mlp" else "linear",  # keypoints.HEADS; mlp: Dense(hidden) -> BN -> ReLU -> Dense(63)
      hidden=512,
      zero_init=True,  # the linear head starts at the crop centre and z_rel 0 (big_vision's head_zeroinit)
      feature_norm=True,
    )
  )  # affine-free BatchNorm on the features before the head (still linear at test time)
  c.keypoints = ml_collections.ConfigDict(
    dict(
      bone="middle",  # geometry.BONES: middle (FreiHAND's scale bone, 9->10), index (Iqbal et al., 0->5)
      root="wrist",  # geometry.ROOTS: wrist, palm (midpoint of wrist and middle MCP, the released models')
      refine_root=False,  # the root-depth refinement MLP (reference §4.3)
      depth_range=(4.0, 50.0),  # clamp of the closed-form root depth, in bone lengths (the reference's, middle bone)
      w_uv=1.0,
      w_z=5.0,
      w_root=1.0,
    )
  )  # loss weights 2D : z_rel : root = 1 : 5 : 1

  c.augment = augment.default_config()
  c.augment.ops = ("rotate", "crop")  # the reference's --rotate --crop --resize; margin fixed, no colour
  c.augment.margin = 1.25
  c.augment.out_size = base.augment.out_size

  c.optim = ml_collections.ConfigDict(dict(lr=5e-4, weight_decay=2e-4, warmup_steps=0))
  c.batch_size = 128
  c.num_epochs = 50.0
  c.total_steps = -1  # > 0 overrides num_epochs
  c.random_init_bn_steps = 50  # frozen random-init encoder: estimate BN statistics on this many training batches

  c.log_every = 50
  c.ckpt_every = 1000
  c.keep_ckpts = 2

  if size == "cpu":
    # Training the whole network needs more steps than a probe: its 2-D error halves the constant's by 4,000.
    c.batch_size, c.total_steps = 64, 4000 if mode in ("finetune", "scratch", "label_fraction") else 1000
    c.optim.lr = 1e-3
    c.log_every, c.ckpt_every = 50, 500
  elif size == "tiny":
    c.batch_size, c.total_steps = 16, 4
    c.head.hidden = 32
    c.label_fractions = (0.25, 1.0)
    c.random_init_bn_steps = 2
    c.log_every, c.ckpt_every = 2, 2
  return c
