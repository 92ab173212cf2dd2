"""Studies: the papers' experiments as sets of runs (pretrain -> probe), run in order, resumed, and tabulated.

  python -m peclr_jax.study --config=configs/study.py:ablation,cpu --workdir=runs/ablation

A study is a list of runs, each one command of the package's own CLIs (`python -m peclr_jax.pretrain|probe
--config=... --config.key=value ... --workdir=<study>/<run>`), written to `<workdir>/commands.sh` so any run can be
repeated by hand. A run is finished when its output exists (pretraining: `encoder/model.json`; a probe:
`eval_evaluation.json`) and is then skipped; a half-finished run resumes from its own checkpoint, so re-running the
study command after a crash or preemption continues where it stopped. `--config.parallel=N` runs up to N runs at once
(a probe starts when its encoder is ready); a failed run is reported and the independent runs go on. When every run
is done, the probe results are gathered into `results.json`, `results.md` and the study's plots.
"""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
GEOMETRIC = ("crop", "scale", "rotate")  # PeCLR undoes these in latent space (crop = translation)
RELATIVE = ("crop", "scale", "rotate", "color_jitter")  # the relative objective's heads


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # the run's directory under the study workdir
  kind: str  # "pretrain" | "probe" | "render" (a synthetic domain) | "evaluate" (a probe on another set)
  config: str = ""  # pretrain / probe: e.g. "pretrain.py:simclr,cpu" (a file in configs/)
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
      args = [a for k, v in self.overrides for a in
              ([f"--{k}", *map(str, v)] if isinstance(v, (tuple, list)) else [f"--{k}={v}"])]
      where = f"--out={self.workdir(root)}" if self.kind == "render" else f"--workdir={os.path.join(root, self.needs)}"
      return [sys.executable, "-m", f"peclr_jax.{module}", where, *args]
    overrides = list(self.overrides)
    if self.needs:
      overrides.append(("encoder", os.path.join(root, self.needs)))
    return [sys.executable, "-m", f"peclr_jax.{self.kind}", f"--config={os.path.join(CONFIGS, self.config)}",
            *(f"--config.{k}={_flag(v)}" for k, v in overrides), f"--workdir={self.workdir(root)}"]

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
    o.append(("relative.transforms", tuple(op for op in ops if op in RELATIVE) if relative is None else
              tuple(relative)))
  return Run(name, "pretrain", f"pretrain.py:{objective},{cfg.size}", (*o, *extra), tags=tags)


def _probe(cfg, name, needs, tags, mode=None):
  mode = mode or cfg.probe_mode
  return Run(name, "probe", f"probe.py:{mode},{cfg.size}", (("total_steps", cfg.probe_steps), *cfg.data_overrides),
             needs=needs, tags=tags)


def objectives(cfg, root=""):
  """The research result: each objective with the pretraining config's own augmentations, then the linear protocol,
  against a random-init encoder (PeCLR §4.1 / seed 000 §4.1: PeCLR < SimCLR < random init in 2D EPE)."""
  runs = []
  for objective in cfg.objectives:
    tags = (("protocol", cfg.probe_mode), ("objective", objective))
    runs.append(Run(f"pretrain_{objective}", "pretrain", f"pretrain.py:{objective},{cfg.size}",
                    (("total_steps", cfg.pretrain_steps), *cfg.data_overrides), tags=tags))
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
  import itertools

  best = {a: o for a, o in parse_best(cfg.best, cfg.best_from).items() if a in cfg.compose}
  if len(best) < 2:
    raise ValueError(f"composition: fewer than 2 of config.compose={cfg.compose} have a best objective")
  runs = []
  for k in range(2, len(best) + 1):
    for combo in itertools.combinations(sorted(best), k):
      objs = {best[a] for a in combo}
      objective = ("hybrid" if {"peclr", "relative"} <= objs else "peclr" if "peclr" in objs else
                   "relative" if "relative" in objs else "simclr")
      name = "+".join(combo)
      tags = (("augmentations", name), ("objective", objective))
      runs.append(_pretrain(cfg, f"pretrain_{name}", objective, combo, tags=tags,
                            peclr=[a for a in combo if best[a] == "peclr"],
                            relative=[a for a in combo if best[a] == "relative"]))
      runs.append(_probe(cfg, f"probe_{name}", f"pretrain_{name}", tags))
  return runs


def parse_best(text, path):
  if text:
    try:
      best = dict(item.split("=") for item in text.split(","))
    except ValueError:
      raise ValueError(f"config.best={text!r}: expected aug=objective,aug=objective,...") from None
  elif os.path.isfile(path):
    with open(path) as f:
      best = json.load(f)
  else:
    raise ValueError(f"composition needs study 1's choices: config.best_from={path!r} does not exist (run the ablation "
                     "study first, or set --config.best=crop=peclr,rotate=peclr,...)")
  bad = {a: o for a, o in best.items() if a not in RELATIVE + ("color_drop", "blur", "noise", "cut_out", "sobel")
         or o not in ("simclr", "peclr", "relative")}
  if bad or len(best) < 2:
    raise ValueError(f"composition: bad or too few augmentation=objective pairs {best}")
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
        runs.append(Run(f"{mode}_{model}_{100 * fraction:g}pct", "probe", f"probe.py:{mode},{cfg.size}",
                        (("total_steps", cfg.probe_steps), ("data.label_fraction", fraction), *m, *head,
                         *cfg.data_overrides), needs=needs, tags=tags))
  return runs


def cross_dataset(cfg, root):
  """Study 3 (§4.4): pretrain on domains A + B, probe on A, evaluate on B, against supervised training on A only.

  The two domains are embedded sets rendered with different options (`cfg.domain_a` / `cfg.domain_b`: camera
  distance, skin tones, backgrounds, seed); PeCLR pretrained on A alone is the control for the unlabelled B images.
  """
  data = {d: os.path.join(root, f"data_{d}") for d in "AB"}
  runs = [Run(f"data_{d}", "render", overrides=(("train", cfg.domain_train), ("eval", cfg.domain_eval),
                                                   ("workers", 1), *dict(style).items()))
          for d, style in (("A", cfg.domain_a), ("B", cfg.domain_b))]
  on_a = (("data.name", "freihand"), ("data.root", data["A"]), *cfg.data_overrides)
  probes = [("scratch", "", "scratch", "no pretraining")]
  for pre, mix in (("A+B", (data["B"],)), ("A", ())):
    name = f"pretrain_peclr_{pre.replace('+', '')}"
    run = _pretrain(cfg, name, "peclr", cfg.ops, extra=(*on_a, ("data.mix_roots", mix)),
                    tags=(("pretraining", f"PeCLR on {pre}"),))
    runs.append(dataclasses.replace(run, after=("data_A", "data_B")))
    probes += [(f"{mode}_{pre.replace('+', '')}", name, mode, f"PeCLR on {pre}") for mode in cfg.cross_probe_modes]
  for run_name, needs, mode, pretraining in probes:
    tags = (("setting", f"{pretraining}, {mode} on A"),)
    runs.append(Run(run_name, "probe", f"probe.py:{mode},{cfg.size}", (("total_steps", cfg.probe_steps), *on_a),
                    needs=needs, after=("data_A",), tags=tags + (("evaluated on", "A"),)))
    runs.append(Run(f"eval_B_{run_name}", "evaluate", overrides=(("data-root", data["B"]), ("tag", "B")),
                    needs=run_name, after=("data_B",), tags=tags + (("evaluated on", "B"),)))
  return runs


STUDIES = {"objectives": objectives, "ablation": ablation, "composition": composition, "cross_dataset": cross_dataset,
           "supervised": supervised}


# ---------------------------------------------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------------------------------------------
def execute(runs, root, parallel=1, log=print, poll=1.0):
  """Runs what is not done yet, respecting `needs`; returns the names of runs that failed.

  On SIGTERM / SIGINT no new run starts; SIGTERM is passed on to the running ones (a terminal's Ctrl-C reaches them
  already), which checkpoint and exit, and then checkpoint.Preempted is raised: re-running the study resumes.
  """
  import signal

  from peclr_jax import checkpoint

  pending = [r for r in runs if not r.done(root)]
  for r in runs:
    if r.done(root):
      log(f"[done]    {r.name}")
  failed, active, stop = [], {}, []

  def on_signal(signum, frame):
    stop.append(signum)
    if signum == signal.SIGTERM:
      for _, proc, _, _ in active.values():
        proc.send_signal(signum)

  with checkpoint.handling((signal.SIGTERM, signal.SIGINT), on_signal):
    while (pending and not stop) or active:
      # A run whose input run failed can never start.
      for r in [r for r in pending if set(r.requires()) & set(failed)]:
        pending.remove(r)
        failed.append(r.name)
        log(f"[skipped] {r.name}: {', '.join(sorted(set(r.requires()) & set(failed)))} failed")
      blocked = {r.name for r in pending} | set(active) | set(failed)
      ready = [r for r in pending if not set(r.requires()) & blocked]
      while ready and len(active) < parallel and not stop:
        r = ready.pop(0)
        pending.remove(r)
        os.makedirs(r.workdir(root), exist_ok=True)
        out = open(os.path.join(r.workdir(root), "run.log"), "a")
        log(f"[start]   {r.name}: {shlex.join(r.command(root))}")
        active[r.name] = (r, subprocess.Popen(r.command(root), stdout=out, stderr=subprocess.STDOUT), out,
                          time.perf_counter())
      for name, (r, proc, out, t0) in list(active.items()):
        if proc.poll() is None:
          continue
        out.close()
        del active[name]
        if proc.returncode == 0 and r.done(root):
          log(f"[ok]      {name} ({time.perf_counter() - t0:.0f} s)")
        elif stop and proc.returncode > 128:  # checkpointed on the signal; resumes with the study
          log(f"[stopped] {name} (exit {proc.returncode})")
        else:
          failed.append(name)
          log(f"[failed]  {name} (exit {proc.returncode}); see {os.path.join(r.workdir(root), 'run.log')}")
      if active:
        time.sleep(poll)
  if stop:
    raise checkpoint.Preempted(stop[0], None, root)
  return failed


def write_commands(runs, root):
  with open(os.path.join(root, "commands.sh"), "w") as f:
    f.write("# The study's runs, in order; each resumes from its own checkpoint.\n")
    for r in runs:
      f.write(shlex.join(r.command(root)) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------------------------------------------
METRICS = ("epe_2d_px", "pa_epe_mm", "pa_auc", "rr_epe_mm")


def gather(runs, root):
  """One row per finished probe / evaluate run: its tags and the metrics of its evaluation report."""
  rows = []
  for r in runs:
    if r.kind not in ("probe", "evaluate") or not r.done(root):
      continue
    with open(r.output(root)) as f:
      m = json.load(f)["metrics"]
    rows.append({"run": r.name, **dict(r.tags), **{k: m[k] for k in METRICS}})
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
  """The constant-prediction anchors of the first finished probe's evaluation (2D: the split's mean keypoints)."""
  for r in runs:
    if r.kind == "probe" and r.done(root):
      with open(r.output(root)) as f:
        return json.load(f).get("mean_pose_baseline", {})
  return {}


def markdown(rows, title, sort=None, anchor=None):
  if not rows:
    return f"# {title}\n\nNo finished runs yet.\n"
  if sort:
    rows = sorted(rows, key=lambda r: r[sort])
  cols = [k for k in rows[0] if k != "run"] + ["run"]
  fmt = lambda k, v: f"{v:.4f}" if k == "pa_auc" else f"{v:.2f}" if isinstance(v, float) else str(v)
  lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(fmt(k, r[k]) for k in cols) + " |" for r in rows]
  if anchor and "epe_2d_px" in anchor:
    lines += ["", f"A constant prediction scores {anchor['epe_2d_px']:.2f} px 2D EPE (the evaluation split's mean "
              "keypoints)" + (f" and {anchor['pa_epe_mm']:.2f} mm PA-EPE (the training labels' mean pose)"
                              if "pa_epe_mm" in anchor else "") + "."]
  return "\n".join(lines) + "\n"


def plot(rows, path, group, series):
  """Grouped bars of 2D EPE and PA-EPE: one group per `group` value, one bar per `series` value."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  groups = list(dict.fromkeys(r[group] for r in rows))
  names = list(dict.fromkeys(r[series] for r in rows))
  fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(groups) * 2), 3.8))
  w = 0.8 / max(len(names), 1)
  for ax, metric, label in zip(axes, ("epe_2d_px", "pa_epe_mm"), ("2D EPE (px)", "PA-EPE (mm)")):
    for i, n in enumerate(names):
      vals = [next((r[metric] for r in rows if r[group] == g and r[series] == n), np.nan) for g in groups]
      ax.bar(np.arange(len(groups)) + i * w, vals, w, label=n)
    ax.set_xticks(np.arange(len(groups)) + w * (len(names) - 1) / 2, groups, rotation=30, ha="right")
    ax.set_ylabel(label)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def report(cfg, runs, root):
  rows, anchor = gather(runs, root), baseline(runs, root)
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump(dict(study=cfg.study, size=cfg.size, rows=rows, constant_baseline=anchor), f, indent=1)
  title = {"objectives": "Objectives, linear protocol", "ablation": "Per-augmentation ablation, linear protocol",
           "composition": "Composition search",
           "cross_dataset": "Cross-dataset: pretrain on A + B, probe on A, test on B",
           "supervised": "Supervised comparison"}[cfg.study]
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(markdown(rows, f"{title} ({cfg.size})", sort="epe_2d_px", anchor=anchor))
  if rows:
    group, series = {"objectives": ("protocol", "objective"), "ablation": ("augmentation", "objective"),
                     "composition": ("augmentations", "objective"),
                     "cross_dataset": ("evaluated on", "setting"), "supervised": ("labels", "init")}[cfg.study]
    plot(rows, os.path.join(root, "results.png"), group, series)
  if cfg.study == "ablation":
    with open(os.path.join(root, "best_objectives.json"), "w") as f:
      json.dump(best_objectives(rows), f, indent=1)
  return rows


def main(argv=None):
  from peclr_jax import pretrain

  cfg, root = pretrain.parse_flags(argv, "configs/study.py:STUDY[,SIZE]")
  root = os.path.abspath(root)
  if cfg.study not in STUDIES:
    raise SystemExit(f"error: config.study={cfg.study!r}: expected one of {sorted(STUDIES)}")
  with pretrain.cli_errors(ValueError):
    pretrain.check_workdir(root)
    runs = STUDIES[cfg.study](cfg, root)
  write_commands(runs, root)
  t0 = time.perf_counter()
  with pretrain.cli_errors():
    failed = [] if cfg.dry_run else execute(runs, root, cfg.parallel)
  rows = report(cfg, runs, root)
  print(f"{len(rows)} results in {root}/results.md ({time.perf_counter() - t0:.0f} s)")
  if failed:
    raise SystemExit(f"error: {len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
  main()
