"""Studies: the papers' experiments as sets of runs (pretrain -> probe), run in order, resumed, and tabulated.

  peclr-study --config=study:ablation,cpu --workdir=runs/ablation        # python -m peclr_jax.study

A study is a list of runs, each one command of the package's own CLIs (`python -m peclr_jax.pretrain|probe
--config=... --config.key=value ... --workdir=<study>/<run>`), written to `<workdir>/commands.sh` so any run can be
repeated by hand. A run is finished when its output exists (pretraining: `encoder/model.json`; a probe:
`eval_evaluation.json`) and is then skipped; a half-finished run resumes from its own checkpoint, so re-running the
study command after a crash or preemption continues where it stopped. `--config.parallel=N` runs up to N runs at once
(a probe starts when its encoder is ready; scheduler.py); a failed run is reported and the independent runs go on.
When every run is done, the probe results are gathered into `results.json`, `results.md` and the study's plots.
"""

import dataclasses
import itertools
import json
import os
import sys
import time

from peclr_jax import augment, cli, configs, keypoints, loop, models, report, scheduler, validate
from peclr_jax.data import synthetic
from peclr_jax.errors import ConfigError
from peclr_jax.objectives import OBJECTIVES, PECLR_TRANSFORMS, RELATIVE_TRANSFORMS

GEOMETRIC = tuple(op for op in augment.OPS if op in PECLR_TRANSFORMS)  # PeCLR undoes these (crop = translation)
RELATIVE = tuple(op for op in augment.OPS if op in RELATIVE_TRANSFORMS)  # the relative objective's heads


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # the run's directory under the study workdir
  kind: str  # "pretrain" | "probe" | "render" (a synthetic domain) | "evaluate" (a probe on another set)
  config: str = ""  # pretrain / probe: e.g. "pretrain:simclr,cpu" (peclr_jax/configs)
  overrides: tuple = ()  # ((config key, value), ...); render / evaluate: ((flag, value), ...) of their CLIs
  needs: str = ""  # probe: the pretraining run whose encoder it loads; evaluate: the probe run it scores
  tags: tuple = ()  # ((column, value), ...) for the results table
  after: tuple = ()  # runs that must be done first (e.g. the data a run reads)

  def workdir(self, root):
    return os.path.join(root, self.name)

  def output(self, root):
    """The file whose existence means the run is finished."""
    if self.kind == "evaluate":
      return os.path.join(root, self.needs, f"eval_{dict(self.overrides)['tag']}_evaluation.json")
    out = {"pretrain": "encoder/model.json", "probe": "eval_evaluation.json", "render": "synthetic.json"}[self.kind]
    return os.path.join(self.workdir(root), out)

  def done(self, root):
    return os.path.isfile(self.output(root))

  def command(self, root):
    if self.kind in ("render", "evaluate"):
      module = {"render": "data.synthetic", "evaluate": "evaluate"}[self.kind]
      args = [f"--{k}={','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}" for k, v in self.overrides]
      where = f"--out={self.workdir(root)}" if self.kind == "render" else f"--workdir={os.path.join(root, self.needs)}"
      return [sys.executable, "-m", f"peclr_jax.{module}", where, *args]
    overrides = list(self.overrides)
    if self.needs:
      overrides.append(("encoder", os.path.join(root, self.needs)))
    return [
      sys.executable,
      "-m",
      f"peclr_jax.{self.kind}",
      f"--config={self.config}",
      *(f"--config.{k}={_flag(v)}" for k, v in overrides),
      f"--workdir={self.workdir(root)}",
    ]

  def requires(self):
    return ((self.needs,) if self.needs else ()) + tuple(self.after)


def _flag(v):
  """A config override as config_flags parses it: tuples as Python literals, the rest as text."""
  if isinstance(v, (tuple, list)):
    return "(" + "".join(f"{x!r}," for x in v) + ")"
  return str(v)


# ---------------------------------------------------------------------------------------------------------------
# The studies.
# ---------------------------------------------------------------------------------------------------------------
def _pretrain(cfg, name, objective, ops, peclr=None, relative=None, extra=(), tags=()):
  """A pretraining run of `objective` with exactly the augmentations `ops`.

  PeCLR undoes `peclr` (default: the geometric ones among `ops`) and the relative heads regress `relative` (default:
  those of `ops` that have a head); "hybrid" does both.
  """
  o = [("augment.ops", tuple(ops)), ("total_steps", cfg.pretrain_steps), *cfg.data_overrides]
  if objective in ("peclr", "hybrid"):
    o.append(("peclr.transforms", tuple(op for op in ops if op in GEOMETRIC) if peclr is None else tuple(peclr)))
  if objective in ("relative", "hybrid"):
    o.append(
      ("relative.transforms", tuple(op for op in ops if op in RELATIVE) if relative is None else tuple(relative))
    )
  return Run(name, "pretrain", f"pretrain:{objective},{cfg.size}", (*o, *extra), tags=tags)


def _probe(cfg, name, needs, tags, mode=None):
  mode = mode or cfg.probe_mode
  return Run(
    name,
    "probe",
    f"probe:{mode},{cfg.size}",
    (("total_steps", cfg.probe_steps), *cfg.data_overrides),
    needs=needs,
    tags=tags,
  )


def objectives(cfg, root=""):
  """The research result: each objective with the pretraining config's own augmentations, then the linear protocol,
  against a random-init encoder (PeCLR §4.1 / seed 000 §4.1: PeCLR < SimCLR < random init in 2D EPE)."""
  runs = []
  for objective in cfg.objectives:
    tags = (("protocol", cfg.probe_mode), ("objective", objective))
    runs.append(
      Run(
        f"pretrain_{objective}",
        "pretrain",
        f"pretrain:{objective},{cfg.size}",
        (("total_steps", cfg.pretrain_steps), *cfg.data_overrides),
        tags=tags,
      )
    )
    runs.append(_probe(cfg, f"probe_{objective}", f"pretrain_{objective}", tags))
  runs.append(_probe(cfg, "probe_random_init", "", (("protocol", cfg.probe_mode), ("objective", "random init"))))
  return runs


def ablation(cfg, root=""):
  """Study 1 (seed 000 §4.2): one augmentation at a time x objective, then the linear protocol; plus random init.

  PeCLR differs from SimCLR only on geometric augmentations, so appearance-only ones are run with SimCLR alone, and the
  relative objective exists for crop / scale / rotate / colour jitter.
  """
  runs = []
  for aug in cfg.augmentations:
    for objective in cfg.objectives:
      if (objective == "peclr" and aug not in GEOMETRIC) or (objective == "relative" and aug not in RELATIVE):
        continue
      tags = (("augmentation", aug), ("objective", objective))
      pre = f"pretrain_{objective}_{aug}"
      runs.append(_pretrain(cfg, pre, objective, (aug,), tags=tags))
      runs.append(_probe(cfg, f"probe_{objective}_{aug}", pre, tags))
  runs.append(_probe(cfg, "probe_random_init", "", (("augmentation", "-"), ("objective", "random init"))))
  return runs


def composition(cfg, root=""):
  """Study 2 (seed 000 §4.3): every combination of >= 2 augmentations, each with its best objective from study 1.

  `cfg.best` ("crop=peclr,rotate=peclr,...") or else the file `cfg.best_from` (study 1's `best_objectives.json`) maps
  augmentation -> objective, restricted to `cfg.compose` (the reference's four); the pretraining objective
  of a combination is PeCLR if any member's best is PeCLR, relative if any is relative, hybrid if both, else SimCLR;
  PeCLR / relative act on the members whose best they are (the others are plain invariances).
  """
  best = {a: o for a, o in parse_best(cfg.best, cfg.best_from).items() if a in cfg.compose}
  if len(best) < 2:
    raise ConfigError(f"composition: fewer than 2 of config.compose={cfg.compose} have a best objective")
  runs = []
  for k in range(2, len(best) + 1):
    for combo in itertools.combinations(sorted(best), k):
      objs = {best[a] for a in combo}
      objective = (
        "hybrid"
        if {"peclr", "relative"} <= objs
        else "peclr"
        if "peclr" in objs
        else "relative"
        if "relative" in objs
        else "simclr"
      )
      name = "+".join(combo)
      tags = (("augmentations", name), ("objective", objective))
      runs.append(
        _pretrain(
          cfg,
          f"pretrain_{name}",
          objective,
          combo,
          tags=tags,
          peclr=[a for a in combo if best[a] == "peclr"],
          relative=[a for a in combo if best[a] == "relative"],
        )
      )
      runs.append(_probe(cfg, f"probe_{name}", f"pretrain_{name}", tags))
  return runs


def parse_best(text, path):
  if text:
    try:
      best = dict(item.split("=") for item in text.split(","))
    except ValueError:
      raise ConfigError(f"config.best={text!r}: expected aug=objective,aug=objective,...") from None
  elif os.path.isfile(path):
    with open(path) as f:
      best = json.load(f)
  else:
    raise ConfigError(
      f"composition needs study 1's choices: config.best_from={path!r} does not exist (run the "
      "ablation study first, or set --config.best=crop=peclr,rotate=peclr,...)"
    )
  bad = {a: o for a, o in best.items() if a not in augment.OPS or o not in ("simclr", "peclr", "relative")}
  if bad or len(best) < 2:
    raise ConfigError(f"composition: bad or too few augmentation=objective pairs {best}")
  return best


def supervised(cfg, root=""):
  """Study 4 (§4.5 and PeCLR): from scratch vs PeCLR-pretrained + fine-tuned per encoder, and label fractions.

  Encoders: ResNets with a linear head, and the latent 2.5-D hourglass (its vectorised pose feeds the projection head
  in pretraining; downstream its own output is trained, as in Iqbal et al.).
  """
  runs = []
  for model in cfg.models:
    m = (("model.name", model),)
    pre = f"pretrain_peclr_{model}"
    runs.append(_pretrain(cfg, pre, "peclr", cfg.ops, extra=m, tags=(("model", model),)))
    for fraction in cfg.label_fractions:
      for init, needs in (("scratch", ""), ("PeCLR", pre)):
        mode = "finetune" if needs else "scratch"
        tags = (("model", model), ("init", init), ("labels", f"{100 * fraction:g} %"))
        head = (("head.kind", "direct"),) if model == "hourglass" else ()  # Iqbal et al.: its own 2.5-D output
        runs.append(
          Run(
            f"{mode}_{model}_{100 * fraction:g}pct",
            "probe",
            f"probe:{mode},{cfg.size}",
            (("total_steps", cfg.probe_steps), ("data.label_fraction", fraction), *m, *head, *cfg.data_overrides),
            needs=needs,
            tags=tags,
          )
        )
  return runs


def cross_dataset(cfg, root):
  """Study 3 (§4.4): pretrain on domains A + B, probe on A, evaluate on B, against supervised training on A only.

  The two domains are embedded sets rendered with different options (`cfg.domain_a` / `cfg.domain_b`: camera
  distance, skin tones, backgrounds, seed); PeCLR pretrained on A alone is the control for the unlabelled B images.
  """
  data = {d: os.path.join(root, f"data_{d}") for d in "AB"}
  runs = [
    Run(
      f"data_{d}",
      "render",
      overrides=(("train", cfg.domain_train), ("eval", cfg.domain_eval), ("workers", 1), *dict(style).items()),
    )
    for d, style in (("A", cfg.domain_a), ("B", cfg.domain_b))
  ]
  on_a = (("data.name", "freihand"), ("data.root", data["A"]), *cfg.data_overrides)
  probes = [("scratch", "", "scratch", "no pretraining")]
  for pre, mix in (("A+B", (data["B"],)), ("A", ())):
    name = f"pretrain_peclr_{pre.replace('+', '')}"
    run = _pretrain(
      cfg, name, "peclr", cfg.ops, extra=(*on_a, ("data.mix_roots", mix)), tags=(("pretraining", f"PeCLR on {pre}"),)
    )
    runs.append(dataclasses.replace(run, after=("data_A", "data_B")))
    probes += [(f"{mode}_{pre.replace('+', '')}", name, mode, f"PeCLR on {pre}") for mode in cfg.cross_probe_modes]
  for run_name, needs, mode, pretraining in probes:
    tags = (("setting", f"{pretraining}, {mode} on A"),)
    runs.append(
      Run(
        run_name,
        "probe",
        f"probe:{mode},{cfg.size}",
        (("total_steps", cfg.probe_steps), *on_a),
        needs=needs,
        after=("data_A",),
        tags=tags + (("evaluated on", "A"),),
      )
    )
    runs.append(
      Run(
        f"eval_B_{run_name}",
        "evaluate",
        overrides=(("data_root", data["B"]), ("tag", "B")),
        needs=run_name,
        after=("data_B",),
        tags=tags + (("evaluated on", "B"),),
      )
    )
  return runs


STUDIES = {
  "objectives": objectives,
  "ablation": ablation,
  "composition": composition,
  "cross_dataset": cross_dataset,
  "supervised": supervised,
}


# ---------------------------------------------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------------------------------------------
METRICS = ("epe_2d_px", "pa_epe_mm", "pa_auc", "rr_epe_mm")


def gather(runs, root):
  """One row per finished probe / evaluate run: its tags, the metrics of its evaluation report and, as `anchor`, that
  report's constant anchors (a run evaluated on another set is divided by that set's)."""
  rows = []
  for r in runs:
    if r.kind not in ("probe", "evaluate") or not r.done(root):
      continue
    with open(r.output(root)) as f:
      e = json.load(f)
    m, anchor = e["metrics"], e.get("mean_pose_baseline", {})
    rows.append({"run": r.name, **dict(r.tags), **{k: m[k] for k in METRICS}, "anchor": anchor})
  return rows


def best_objectives(rows, metric="epe_2d_px"):
  """augmentation -> the objective with the lowest `metric` (study 1's rows), the input of study 2."""
  best = {}
  for row in rows:
    a = row.get("augmentation")
    if a in (None, "-"):
      continue
    if a not in best or row[metric] < best[a][1]:
      best[a] = (row["objective"], row[metric])
  return {a: o for a, (o, _) in best.items()}


def baseline(runs, root):
  """The constant-prediction anchors of the first finished probe's evaluation (2D: the split's mean keypoints), for
  rows without their own."""
  for r in runs:
    if r.kind == "probe" and r.done(root):
      with open(r.output(root)) as f:
        return json.load(f).get("mean_pose_baseline", {})
  return {}


def write_results(cfg, runs, root):
  rows, anchor = gather(runs, root), baseline(runs, root)
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump(dict(study=cfg.study, size=cfg.size, rows=rows, constant_baseline=anchor), f, indent=1)
  title = {
    "objectives": "Objectives, linear protocol",
    "ablation": "Per-augmentation ablation, linear protocol",
    "composition": "Composition search",
    "cross_dataset": "Cross-dataset: pretrain on A + B, probe on A, test on B",
    "supervised": "Supervised comparison",
  }[cfg.study]
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(report.study_table(rows, f"{title} ({cfg.size})", sort="epe_2d_px", anchor=anchor))
  if rows:
    group, series = {
      "objectives": ("protocol", "objective"),
      "ablation": ("augmentation", "objective"),
      "composition": ("augmentations", "objective"),
      "cross_dataset": ("evaluated on", "setting"),
      "supervised": ("labels", "init"),
    }[cfg.study]
    report.bars(rows, os.path.join(root, "results.png"), group, series)
  if cfg.study == "ablation":
    with open(os.path.join(root, "best_objectives.json"), "w") as f:
      json.dump(best_objectives(rows), f, indent=1)
  return rows


STEPS = validate.Rule(
  lambda v: isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1),
  "an integer >= 1, or -1 (the configs' epochs)",
)
OVERRIDES = validate.Rule(
  lambda v: (
    isinstance(v, (tuple, list))
    and all(isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str) for p in v)
  ),
  "a tuple of (key, value) pairs",
)
DOMAIN = validate.Rule(
  lambda v: OVERRIDES.allows(v) and all(k in synthetic.STYLE_FLAGS for k, _ in v),
  f"a tuple of (flag, value) pairs with flags among {', '.join(synthetic.STYLE_FLAGS)}",
)
RULES = {
  "study": validate.one_of(STUDIES),
  "size": validate.one_of(configs.SIZES),
  "parallel": validate.COUNT,
  "dry_run": validate.BOOL,
  "data_overrides": OVERRIDES,
  "pretrain_steps": STEPS,
  "probe_steps": STEPS,
  "probe_mode": validate.one_of(keypoints.FROZEN),
  "augmentations": validate.each_of(augment.OPS),
  "objectives": validate.each_of(OBJECTIVES),
  "best": validate.TEXT,
  "best_from": validate.TEXT,
  "compose": validate.each_of(augment.OPS),
  "domain_a": DOMAIN,
  "domain_b": DOMAIN,
  "domain_train": validate.COUNT,
  "domain_eval": validate.COUNT,
  "cross_probe_modes": validate.each_of((*keypoints.FROZEN, "finetune")),
  "models": validate.each_of(models.ENCODERS),
  "ops": validate.each_of(augment.OPS),
  "label_fractions": validate.each(validate.number(0, 1, lo_open=True)),
}


def _flags(fv, argv):
  cli.config_flag(fv, argv, "study:STUDY[,SIZE]")
  cli.workdir_flag(fv, "the study's folder: one workdir per run, results.md, commands.sh")


def main(argv: list[str] | None = None) -> None:
  args = cli.parse(argv, __doc__, _flags)
  cfg, root = args.config, os.path.abspath(args.workdir)
  with cli.errors():
    validate.check(cfg, RULES)
    runs = STUDIES[cfg.study](cfg, root)
    loop.make_workdir(root)
  scheduler.write_commands(runs, root)
  t0 = time.perf_counter()
  with cli.errors():
    failed = [] if cfg.dry_run else scheduler.execute(runs, root, cfg.parallel)
  rows = write_results(cfg, runs, root)
  print(f"{len(rows)} results in {root}/results.md ({time.perf_counter() - t0:.0f} s)")
  if failed:
    cli.fail(f"{len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
  main()
