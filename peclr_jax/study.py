"""Studies: the papers' experiments as sets of runs (pretrain -> probe), run in order, resumed, and tabulated.

  peclr-study --config=study:ablation,cpu --workdir=runs/ablation        # python -m peclr_jax.study

A study is a list of runs, each one command of the package's own CLIs (`python -m peclr_jax.pretrain|probe|knn|
equivariance --config=... --config.key=value ... --workdir=<study>/<run>`), written to `<workdir>/commands.sh` so any
run can be repeated by hand. Every run but the rendering of data is repeated for each of `config.seeds` (run names
end in `_s<seed>`): the seed is the `seed` of pretraining and of the probe, so it moves the initialisation, the
augmentation draws and the data order; a probe reads the encoder of its own seed. A run is finished when its output
exists (pretraining: `encoder/model.json`; a probe: `eval_evaluation.json`) and is then skipped; a half-finished
run resumes from its own checkpoint, so re-running the study command after a crash or preemption continues where it
stopped. `--config.parallel=N` runs up to N runs at once
(a probe starts when its encoder is ready; scheduler.py); a failed run is reported and the independent runs go on.
When every run is done, the probe results are gathered into `results.json`, `results.md` and the study's plots:
each cell's mean +- standard deviation over seeds, and the comparisons the study exists for as paired differences
over seeds with 95 % t-intervals (stats.py); a difference is marked significant when its interval excludes 0.
"""

import dataclasses
import itertools
import json
import os
import sys
import time

from peclr_jax import augment, cli, configs, keypoints, loop, models, report, scheduler, stats, validate
from peclr_jax.data import synthetic
from peclr_jax.errors import ConfigError
from peclr_jax.objectives import OBJECTIVES, PECLR_TRANSFORMS, RELATIVE_TRANSFORMS

MEASURES = ("knn", "equivariance")  # the tools that train nothing, run on each encoder of the objectives study
GEOMETRIC = tuple(op for op in augment.OPS if op in PECLR_TRANSFORMS)  # PeCLR undoes these (crop = translation)
RELATIVE = tuple(op for op in augment.OPS if op in RELATIVE_TRANSFORMS)  # the relative objective's heads


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # the run's directory under the study workdir
  kind: str  # "pretrain" | "probe" | "knn" | "equivariance" | "render" (a synthetic domain) | "evaluate" (a probe
  # on another set)
  config: str = ""  # pretrain / probe: e.g. "pretrain:simclr,cpu" (peclr_jax/configs)
  overrides: tuple = ()  # ((config key, value), ...); render / evaluate: ((flag, value), ...) of their CLIs
  needs: str = ""  # probe: the pretraining run whose encoder it loads; evaluate: the probe run it scores
  tags: tuple = ()  # ((column, value), ...) for the results table
  after: tuple = ()  # runs that must be done first (e.g. the data a run reads)
  seed: int | None = None  # the study seed (None: a run shared by all seeds, e.g. rendering)

  def workdir(self, root):
    return os.path.join(root, self.name)

  def output(self, root):
    """The file whose existence means the run is finished."""
    if self.kind == "evaluate":
      return os.path.join(root, self.needs, f"eval_{dict(self.overrides)['tag']}_evaluation.json")
    out = {
      "pretrain": "encoder/model.json",
      "probe": "eval_evaluation.json",
      "knn": "knn_evaluation.json",
      "equivariance": "equivariance.json",
      "render": "synthetic.json",
    }[self.kind]
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
    runs += _measures(cfg, objective, f"pretrain_{objective}")
  runs.append(_probe(cfg, "probe_random_init", "", (("protocol", cfg.probe_mode), ("objective", "random init"))))
  runs += _measures(cfg, "random_init", "")
  return runs


def _measures(cfg, name, needs):
  """The probes that train nothing (knn.py: kNN and ridge; equivariance.py) on the encoder of `needs` ("" = random
  init), with the linear probe's config, so they read the same data and crops."""
  objective = "random init" if not needs else name
  return [
    Run(
      f"{kind}_{name}",
      kind,
      f"probe:linear,{cfg.size}",
      tuple(cfg.data_overrides),
      needs=needs,
      tags=(("objective", objective),),
    )
    for kind in cfg.measures
  ]


def with_seeds(runs, seeds):
  """Each run once per seed (`<name>_s<seed>`, config `seed` set, its inputs those of the same seed); rendering is
  shared. Seed-major order, so the first seed's results are complete first."""
  shared = {r.name for r in runs if r.kind == "render"}
  out = [r for r in runs if r.kind == "render"]
  for s in seeds:
    name = lambda n, s=s: n if not n or n in shared else f"{n}_s{s}"
    for r in runs:
      if r.kind == "render":
        continue
      seeded = r.kind in ("pretrain", "probe", "knn", "equivariance")
      out.append(
        dataclasses.replace(
          r,
          name=name(r.name),
          needs=name(r.needs),
          after=tuple(map(name, r.after)),
          overrides=(*r.overrides, ("seed", s)) if seeded else r.overrides,
          seed=s,
        )
      )
  return out


def runs_of(cfg, root):
  """The study's runs, each seed's."""
  return with_seeds(STUDIES[cfg.study](cfg, root), cfg.seeds)


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
COMPARED = ("epe_2d_px", "pa_epe_mm")  # the errors whose paired differences the tables give
EQUI = ("r2", "invariance", "different_images")
TITLES = {
  "objectives": "Objectives, linear protocol",
  "ablation": "Per-augmentation ablation, linear protocol",
  "composition": "Composition search",
  "cross_dataset": "Cross-dataset: pretrain on A + B, probe on A, test on B",
  "supervised": "Supervised comparison",
}


def _load(r, root):
  with open(r.output(root)) as f:
    return json.load(f)


def gather(runs, root):
  """One row per finished probe / evaluate run, and a kNN and a ridge row per finished knn run: the run, its tags,
  its seed, the metrics and, as `anchor`, its evaluation's constant anchors (a run evaluated on another set is divided
  by that set's; kNN and ridge rows, scored on the probes' evaluation split, take the study's)."""
  rows = []
  for r in runs:
    if r.kind not in ("probe", "evaluate", "knn") or not r.done(root):
      continue
    e, seed = _load(r, root), ({} if r.seed is None else {"seed": r.seed})
    if r.kind == "knn":
      for protocol, key in (("kNN", "knn"), ("ridge", "ridge")):
        m = e[key]["metrics"]
        rows.append({"run": r.name, "protocol": protocol, **dict(r.tags), **seed, **{k: m[k] for k in METRICS}})
      continue
    m, anchor = e["metrics"], e.get("mean_pose_baseline", {})
    rows.append({"run": r.name, **dict(r.tags), **seed, **{k: m[k] for k in METRICS}, "anchor": anchor})
  return rows


def gather_equivariance(runs, root):
  """One row per finished equivariance run: its tags, seed, and per transformation R^2, invariance and the
  different-images similarity (`<transform>_<measure>`)."""
  rows = []
  for r in runs:
    if r.kind != "equivariance" or not r.done(root):
      continue
    t = _load(r, root)["transforms"]
    vals = {f"{name}_{k}": v[k] for name, v in t.items() for k in EQUI}
    rows.append({"run": r.name, **dict(r.tags), **({} if r.seed is None else {"seed": r.seed}), **vals})
  return rows


def comparisons(cfg, rows):
  """{name: (cell a, cell b)}: the differences the study exists for (a - b; cells as {tag: value})."""
  have = {tuple(sorted((k, v) for k, v in r.items() if isinstance(v, str) and k != "run")) for r in rows}
  have = [dict(h) for h in have]
  exists = lambda spec: any(all(h.get(k) == v for k, v in spec.items()) for h in have)
  pairs = {}

  def add(name, a, b):
    if exists(a) and exists(b):
      pairs[name] = (a, b)

  values = lambda key: list(dict.fromkeys(r[key] for r in rows if key in r))
  if cfg.study == "objectives":
    objs = [o for o in values("objective") if o != "random init"]
    for p in values("protocol") or [None]:
      at = {} if p is None else {"protocol": p}
      where = "" if p is None else f"{p}: "
      for a, b in (("peclr", "simclr"), ("relative", "simclr"), ("relative", "peclr")):
        add(f"{where}{a} vs {b}", {**at, "objective": a}, {**at, "objective": b})
      for o in objs:
        add(f"{where}{o} vs random init", {**at, "objective": o}, {**at, "objective": "random init"})
  elif cfg.study == "ablation":
    for aug in [a for a in values("augmentation") if a != "-"]:
      objs = [r["objective"] for r in rows if r.get("augmentation") == aug]
      objs = list(dict.fromkeys(objs))
      for i, a in enumerate(objs):
        for b in objs[i + 1 :]:
          add(f"{aug}: {a} vs {b}", {"augmentation": aug, "objective": a}, {"augmentation": aug, "objective": b})
        add(
          f"{aug}: {a} vs random init",
          {"augmentation": aug, "objective": a},
          {"augmentation": "-", "objective": "random init"},
        )
  elif cfg.study == "supervised":
    for model in values("model"):
      for labels in values("labels"):
        cell = {"model": model, "labels": labels}
        add(f"{model}, {labels} labels: PeCLR vs scratch", {**cell, "init": "PeCLR"}, {**cell, "init": "scratch"})
  elif cfg.study == "cross_dataset":
    for on in values("evaluated on"):
      for mode in cfg.cross_probe_modes:
        a, b = f"PeCLR on A+B, {mode} on A", f"PeCLR on A, {mode} on A"
        add(f"on {on}: {a} vs {b}", {"setting": a, "evaluated on": on}, {"setting": b, "evaluated on": on})
        for s in (a, b):
          add(
            f"on {on}: {s} vs scratch",
            {"setting": s, "evaluated on": on},
            {"setting": "no pretraining, scratch on A", "evaluated on": on},
          )
  return pairs


def summary(rows, tags, metrics_, pairs):
  """(cells, {metric: comparisons}) over seeds (stats.summarise): a cell is its tags and, per metric, the mean, std,
  n and seeds."""
  cells, comps = {}, {}
  rows = [r if "seed" in r else {**r, "seed": 0} for r in rows]  # runs listed without seeds: one seed each
  for m in metrics_:
    found, comps[m] = stats.summarise(rows, m, tags, pairs)
    for c in found:
      cell = cells.setdefault(tuple(c[t] for t in tags), {t: c[t] for t in tags})
      cell[m] = dict(mean=c["mean"], std=c["std"], n=c["n"], seeds=c["seeds"])
  return list(cells.values()), comps


def _tags(rows):
  return [k for k in rows[0] if k not in ("run", "seed", "anchor") and isinstance(rows[0][k], str)] if rows else []


def best_objectives(rows, metric="epe_2d_px"):
  """augmentation -> the objective with the lowest mean `metric` over seeds (study 1's rows), the input of study 2."""
  means = {}
  for row in rows:
    a = row.get("augmentation")
    if a in (None, "-"):
      continue
    means.setdefault((a, row["objective"]), []).append(row[metric])
  best = {}
  for (a, o), v in means.items():
    if a not in best or sum(v) / len(v) < best[a][1]:
      best[a] = (o, sum(v) / len(v))
  return {a: o for a, (o, _) in best.items()}


def baseline(runs, root):
  """The constant-prediction anchors of the first finished probe's evaluation (2D: the split's mean keypoints), for
  rows without their own."""
  for r in runs:
    if r.kind == "probe" and r.done(root):
      return _load(r, root).get("mean_pose_baseline", {})
  return {}


def write_results(cfg, runs, root):
  rows, anchor = gather(runs, root), baseline(runs, root)
  tags = _tags(rows)
  pairs = comparisons(cfg, rows)
  cells, comps = summary(rows, tags, METRICS, pairs)
  for c in cells:  # a cell's anchors: those of its first row (all its seeds are scored on the same set)
    c["anchor"] = next((r.get("anchor") for r in rows if all(r[t] == c[t] for t in tags)), None) or anchor
  equi = gather_equivariance(runs, root)
  equi_keys = [k for k in (equi[0] if equi else {}) if k.endswith(EQUI)]
  equi_tags = _tags(equi)
  equi_cells, equi_comps = summary(equi, equi_tags, equi_keys, comparisons(cfg, equi))
  result = dict(
    study=cfg.study,
    size=cfg.size,
    seeds=list(cfg.seeds),
    rows=rows,
    cells=cells,
    comparisons=comps,
    equivariance=dict(rows=equi, cells=equi_cells, comparisons=equi_comps),
    constant_baseline=anchor,
  )
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  title = f"{TITLES[cfg.study]} ({cfg.size}, seeds {', '.join(map(str, cfg.seeds))})"
  parts = [report.seed_table(cells, tags, METRICS, title, anchor=anchor)]
  if any(comps.values()):
    parts.append(report.comparison_table({k: comps[k] for k in COMPARED}, "Paired differences over seeds (a - b)"))
  if equi_cells:
    parts.append(report.equivariance_table(equi_cells, equi_tags, "Equivariance and invariance of the features"))
    if any(equi_comps.values()):
      parts.append(report.comparison_table(equi_comps, "Equivariance: paired differences over seeds (a - b)", "r2"))
  parts.append(report.study_table(rows, "Every run", sort="epe_2d_px", anchor=anchor).replace("# ", "## ", 1))
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write("\n".join(parts))
  if cells:
    group, series = {
      "objectives": ("protocol", "objective"),
      "ablation": ("augmentation", "objective"),
      "composition": ("augmentations", "objective"),
      "cross_dataset": ("evaluated on", "setting"),
      "supervised": ("labels", "init"),
    }[cfg.study]
    report.bars(cells, os.path.join(root, "results.png"), group, series)
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
SEEDS = validate.Rule(
  lambda v: (
    isinstance(v, (tuple, list))
    and len(v) >= 1
    and len(set(v)) == len(v)
    and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
  ),
  "a tuple of one or more distinct integers >= 0",
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
  "seeds": SEEDS,
  "measures": validate.each_of(MEASURES),
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
    runs = runs_of(cfg, root)
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
