"""Studies: `--config=study:STUDY[,SIZE]` (peclr-study, peclr_jax/study.py).

STUDY (study.STUDIES): objectives (SimCLR vs PeCLR vs relative vs random init with the default augmentations: the
research result), ablation (per-augmentation x objective, linear protocol), composition (combinations of >= 2
augmentations, each with its best objective from the ablation), cross_dataset (pretrain on two rendered domains
A + B, probe on A, test on B, against supervised on A), supervised (scratch vs PeCLR + fine-tune per encoder and
label fraction). SIZE: cpu (reduced, for 2 cores; the default), tiny (the tests'), full (the papers' scale; needs an
accelerator).

  peclr-study --config=study:objectives,cpu --workdir=runs/objectives
  peclr-study --config=study:ablation,cpu --workdir=runs/ablation
  peclr-study --config=study:composition,cpu --workdir=runs/composition \
      --config.best_from=runs/ablation/best_objectives.json

Each cell runs once per `seeds` (3 at cpu) and results.md gives mean +- std over seeds and the study's comparisons
as paired differences with 95 % intervals. Each run is a pretrain, probe, knn or equivariance command with the
overrides below (see `<workdir>/commands.sh`); re-running the
command resumes. Results: `<workdir>/results.{md,json,png}`; docs/results.md has the measured tables and times.
"""

import ml_collections

from peclr_jax import augment, configs
from peclr_jax.study import STUDIES


def get_config(arg="ablation,cpu"):
  study, size = configs.split_arg(arg, STUDIES, "ablation,cpu", "cpu", "STUDY")
  c = ml_collections.ConfigDict()
  c.study, c.size = study, size
  c.parallel = 1  # runs at once (separate processes)
  c.dry_run = False  # write commands.sh and the (partial) results only
  c.data_overrides = ()  # ((key, value), ...) applied to every run, e.g. (("data.root", "/data/freihand"),)
  # Steps per run (-1: the configs' epochs). cpu: sized so each study takes well under 60 minutes on 2 cores.
  cpu_steps = {
    "objectives": (1500, 1000),
    "ablation": (100, 200),
    "composition": (100, 200),
    "cross_dataset": (200, 200),
    "supervised": (100, 150),
  }[study]
  c.pretrain_steps, c.probe_steps = {"full": (-1, -1), "cpu": cpu_steps, "tiny": (2, 2)}[size]
  if size == "cpu":
    c.parallel = 2  # one run's compile overlaps the other's steps
  c.probe_mode = "linear"
  # Every run once per seed (the pretraining and probe `seed`: initialisation, augmentation, data order).
  c.seeds = {"full": (0, 1, 2), "cpu": (0, 1, 2), "tiny": (0,)}[size]
  # The objectives study also runs these on each encoder: knn (kNN and ridge probes), equivariance.
  c.measures = ("knn", "equivariance") if study == "objectives" else ()
  # Study 1.
  c.augmentations = augment.OPS
  c.objectives = ("simclr", "peclr", "relative")
  # Study 2: study 1's choice per augmentation ("aug=objective,..." or the ablation's best_objectives.json).
  c.best = ""
  c.best_from = "runs/ablation/best_objectives.json"
  c.compose = ("crop", "scale", "rotate", "color_jitter")  # the reference's four
  # Study 3: two embedded domains (flags of peclr-synthetic, synthetic.STYLE_FLAGS).
  c.domain_a = (("distance", (0.3, 0.5)), ("skin", (0.0, 0.5)), ("backgrounds", "gradient,plain"), ("seed", 1))
  c.domain_b = (("distance", (0.5, 0.8)), ("skin", (0.5, 1.0)), ("backgrounds", "clutter,noise,shapes"), ("seed", 2))
  c.domain_train, c.domain_eval = {"full": (32000, 4000), "cpu": (2000, 500), "tiny": (32, 8)}[size]
  c.cross_probe_modes = ("linear", "finetune")
  # Study 4.
  c.models = (
    ("resnet18", "resnet50", "resnet152", "hourglass") if size == "full" else ("resnet18", "resnet50", "hourglass")
  )
  c.ops = ("rotate", "crop", "scale", "color_jitter")
  c.label_fractions = (0.01, 0.1, 1.0)
  if size == "tiny":
    c.augmentations = ("crop", "color_jitter")
    c.models = ("resnet18",)
    c.label_fractions = (0.5, 1.0)
  return c
