"""Study configs: `python -m peclr_jax.study --config=configs/study.py:STUDY[,SIZE] --workdir=runs/STUDY`.

STUDY: objectives (SimCLR vs PeCLR vs relative vs random init with the default augmentations: the research
result), ablation (per-augmentation x objective, linear protocol), composition (combinations of >= 2 augmentations,
each with its best objective from the ablation), cross_dataset (pretrain on two rendered domains A + B, probe on A,
test on B, against supervised on A), supervised (scratch vs PeCLR + fine-tune per ResNet depth and label fraction).
SIZE: cpu (reduced, for 2 cores), tiny (tests), full (the papers' scale; needs an accelerator).

  python -m peclr_jax.study --config=configs/study.py:objectives,cpu --workdir=runs/objectives
  python -m peclr_jax.study --config=configs/study.py:ablation,cpu --workdir=runs/ablation
  python -m peclr_jax.study --config=configs/study.py:composition,cpu --workdir=runs/composition \
      --config.best_from=runs/ablation/best_objectives.json

Each run is a pretrain or probe command with the overrides below (see `<workdir>/commands.sh`); re-running the
command resumes. Results: `<workdir>/results.{md,json,png}`.

Expected at cpu (2 cores, embedded data, 2 runs at a time; wall times measured with other work on the same cores):
objectives 49 min, PeCLR 10.48 px < SimCLR 10.74 < relative 10.94 < random init 11.30 (linear 2D EPE); ablation
25 min, composition 18 min, cross_dataset 10 min, supervised 45 min. The README's Results section has
the tables.
"""

import ml_collections

from peclr_jax import configs

STUDIES = ("objectives", "ablation", "composition", "cross_dataset", "supervised")


def get_config(arg="ablation,cpu"):
  study, size = configs.split_arg(arg, STUDIES, "ablation,cpu", "cpu", "STUDY")
  c = ml_collections.ConfigDict()
  c.study, c.size = study, size
  c.parallel = 1  # runs at once (separate processes)
  c.dry_run = False  # write commands.sh and the (partial) results only
  c.data_overrides = ()  # ((key, value), ...) applied to every run, e.g. (("data.root", "/data/freihand"),)
  # Steps per run (-1: the configs' epochs). cpu: sized so each study takes well under 60 minutes on 2 cores.
  cpu_steps = {"objectives": (1500, 1000), "ablation": (100, 200), "composition": (100, 200),
               "cross_dataset": (200, 200), "supervised": (100, 150)}[study]
  c.pretrain_steps, c.probe_steps = {"full": (-1, -1), "cpu": cpu_steps, "tiny": (2, 2)}[size]
  if size == "cpu":
    c.parallel = 2  # one run's compile overlaps the other's steps
  c.probe_mode = "linear"
  # Study 1.
  c.augmentations = ("crop", "scale", "rotate", "color_jitter", "color_drop", "blur", "noise", "cut_out", "sobel")
  c.objectives = ("simclr", "peclr", "relative")
  # Study 2: study 1's choice per augmentation ("aug=objective,..." or the ablation's best_objectives.json).
  c.best = ""
  c.best_from = "runs/ablation/best_objectives.json"
  c.compose = ("crop", "scale", "rotate", "color_jitter")  # the reference's four
  # Study 3: two embedded domains (options of `python -m peclr_jax.data.synthetic`).
  c.domain_a = (("distance", (0.3, 0.5)), ("skin", (0.0, 0.5)), ("backgrounds", "gradient,plain"), ("seed", 1))
  c.domain_b = (("distance", (0.5, 0.8)), ("skin", (0.5, 1.0)), ("backgrounds", "clutter,noise,shapes"), ("seed", 2))
  c.domain_train, c.domain_eval = {"full": (32000, 4000), "cpu": (2000, 500), "tiny": (32, 8)}[size]
  c.cross_probe_modes = ("linear", "finetune")
  # Study 4.
  c.models = ("resnet18", "resnet50", "resnet152", "hourglass") if size == "full" else ("resnet18", "resnet50",
                                                                                        "hourglass")
  c.ops = ("rotate", "crop", "scale", "color_jitter")
  c.label_fractions = (0.01, 0.1, 1.0)
  if size == "tiny":
    c.augmentations = ("crop", "color_jitter")
    c.models = ("resnet18",)
    c.label_fractions = (0.5, 1.0)
  return c
