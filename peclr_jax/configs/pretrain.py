"""Self-supervised pretraining: `--config=pretrain:OBJECTIVE[,SIZE]` (peclr-pretrain, peclr_jax/pretrain.py).

OBJECTIVE: simclr | peclr | relative | hybrid (objectives.OBJECTIVES). SIZE: full (default; the reference's PeCLR
setting), cpu (a laptop run on the embedded data), tiny (seconds; the tests').

  peclr-pretrain --config=pretrain:peclr,cpu --workdir=runs/peclr_cpu
  peclr-pretrain --config=pretrain:peclr --workdir=runs/peclr --config.batch_size=512

`full` follows the reference (ResNet-50, 128 px, LARS-wrapped Adam, lr 1e-4 * sqrt(2048) with accumulation
16 x 128, 100 epochs, 10 warm-up, tau 0.5) and needs an accelerator; `cpu` runs ResNet-18 at quarter width on 64 px
crops of the embedded hands (4,000 in 4 versions), 600 steps of batch 64 (the main job's pretraining, a few minutes
on 2 cores); `tiny` runs a few steps in seconds. model.conv=auto picks the CPU formulation of the convolutions on a CPU
(peclr_jax/models/conv.py); model.dtype=bfloat16 is mixed precision, for accelerators. Every field can be overridden
as --config.key=value; unknown keys and wrong types fail before anything compiles, and every value is checked
against what the code accepts (pretrain.RULES) before any work.
"""

import ml_collections

from peclr_jax import augment, configs, optim
from peclr_jax.objectives import OBJECTIVES


def get_config(arg="peclr"):
  objective, size = configs.split_arg(arg, OBJECTIVES, "peclr", "full", "OBJECTIVE")
  c = ml_collections.ConfigDict()
  c.objective = objective
  c.seed = 5  # the reference's seed

  c.data = ml_collections.ConfigDict(
    dict(
      name="synthetic",  # inputs.SOURCES
      root="data/synthetic",  # dataset root; the synthetic set is rendered there when missing
      synthetic_train=20000,
      synthetic_eval=1000,
      synthetic_seed=0,
      synthetic_versions=1,  # images per training id (same hand and camera, new appearance; FreiHAND has 4)
      synthetic_style="lifelike",  # synthetic.STYLES: lifelike, or legacy (the first renderer)
      val_fraction=0.0,  # ids held out of pretraining (FreiHAND-style split over unique ids)
      mix_roots=(),  # more FreiHAND-layout roots mixed into the training split with equal weight
      host_size=160,  # host crop side (px); the in-jit augmentation crops and resizes from it
      host_margin=1.6,  # host crop side / hand box, leaves room for rotation, jitter and scale
      workers=0,
      threads=4,
      skip_corrupt=False,
    )
  )

  c.augment = augment.default_config()
  c.augment.ops = ("rotate", "crop", "scale", "color_jitter")  # the best PeCLR model's augmentations

  c.model = ml_collections.ConfigDict(
    dict(
      name="resnet50",
      width=64,
      small_stem=False,
      zero_init_last_bn=False,
      stacks=2,  # stacks: hourglass only
      proj_hidden=512,
      proj_out=128,
      rel_hidden=1024,
      conv="auto",  # models.CONVS: xla, cpu (models/conv.py), onednn (models/onednn.py), auto (the fastest here)
      dtype="float32",
    )
  )  # models.DTYPES: bfloat16 is mixed precision (params and optimiser state stay float32)

  c.temperature = 0.5
  # objectives.PECLR_TRANSFORMS and TRANSLATION_NORMS; objectives.RELATIVE_TRANSFORMS.
  c.peclr = ml_collections.ConfigDict(dict(transforms=("translate", "rotate"), translation_norm="reference"))
  c.relative = ml_collections.ConfigDict(dict(transforms=("rotate", "crop", "scale", "color_jitter")))
  # hybrid: a weighted sum; e.g. invariant colour + equivariant geometry (PeCLR) + relative heads.
  c.weights = ml_collections.ConfigDict(dict(contrastive=1.0, relative=1.0))

  c.optim = optim.default_config()  # LARS-wrapped Adam, lr 1e-4 * sqrt(128 * 16), wd 1e-6, 10 warm-up epochs
  c.batch_size = 128  # global batch per forward pass (optim.batch_size follows it; accum_steps multiplies)
  c.num_epochs = 100.0
  c.total_steps = -1  # > 0 overrides num_epochs (counted in forward passes)
  c.probe_lr = 1e-3  # online linear probe on stop-gradient features (2D keypoints)

  c.log_every = 50
  c.ckpt_every = 1000
  c.keep_ckpts = 3

  if size == "cpu":
    c.data.synthetic_train, c.data.synthetic_eval, c.data.synthetic_versions = 4000, 500, 4
    c.data.host_size, c.augment.out_size = 80, 64
    c.model.update(name="resnet18", width=16, proj_hidden=256, rel_hidden=256)
    c.batch_size, c.optim.accum_steps = 64, 1
    c.optim.update(base_lr=2e-4, warmup_epochs=0.5)
    c.num_epochs, c.total_steps = -1.0, 600
    c.log_every, c.ckpt_every = 25, 200
  elif size == "tiny":
    c.data.synthetic_train, c.data.synthetic_eval = 64, 16
    c.data.host_size, c.augment.out_size = 40, 32
    # conv=xla: the tests' steps are too small to gain from conv=cpu, which compiles 3 s slower.
    c.model.update(name="resnet18", width=8, small_stem=True, proj_hidden=32, proj_out=16, rel_hidden=32, conv="xla")
    c.batch_size, c.optim.accum_steps = 16, 1
    c.optim.update(warmup_epochs=0.0)
    c.num_epochs, c.total_steps = -1.0, 4
    c.log_every, c.ckpt_every = 2, 2
  return c
