"""Markdown tables and plots of results, shared by evaluation, the studies and the main job.

evaluation(result)               the Markdown of one evaluation (evaluate.evaluate's result dict)
save(result, base, markdown)     a tool's result -> base.json and its Markdown base.md
write_table(rows, base, title)   rows of metrics -> base.json and a Markdown table base.md
study_table(rows, title, ...)    a study's rows (tags + metrics) as Markdown, with the constant anchors
seed_table(cells, ...), comparison_table(comps, ...), equivariance_table(cells, ...)   a study over seeds: mean +-
                                 std per cell, paired differences with intervals (stats.py), equivariance per cell
anchor_terms(b), anchor_sentence(b)   what each constant anchor of an evaluation is, with its value
Every error with a constant anchor (metrics.ANCHORED) gets a column "x const" beside it: the error over the anchor's.
pck(...), skeleton_grid(...), bars(...), curves(...), contact_sheet(...)   PNG figures
"""

import json

import numpy as np
from PIL import Image, ImageDraw

from peclr_jax import hand, metrics, stats

TABLE_KEYS = ("epe_2d_px", "pa_epe_mm", "pa_auc", "rr_epe_mm", "epe_mm", "auc", "median_mm", "pa_median_mm")
LABELS = {
  "epe_2d_px": "2D EPE (px)",
  "epe_mm": "3D EPE (mm)",
  "pa_epe_mm": "PA-EPE (mm)",
  "auc": "AUC 0-50 mm",
  "rr_epe_mm": "root-relative EPE (mm)",
  "pa_auc": "PA-AUC 0-50 mm",
  "median_mm": "median (mm)",
  "pa_median_mm": "PA median (mm)",
}
SHORT = {"epe_2d_px": "2D EPE px", "pa_epe_mm": "PA-EPE mm", "pa_auc": "PA-AUC", "rr_epe_mm": "root-rel. EPE mm"}
RATIO = {"epe_2d_px": "2D x const", "pa_epe_mm": "PA x const", "rr_epe_mm": "root-rel. x const"}
# (key, error, unit, the constant prediction), as evaluate.constant_anchors scores them.
ANCHORS = (
  ("epe_2d_px", "2D EPE", "px", "the evaluated split's mean keypoints in the crop"),
  ("rr_epe_mm", "root-relative EPE", "mm", "the training labels' mean root-relative pose"),
  ("pa_epe_mm", "PA-EPE", "mm", "the training labels' Procrustes mean pose"),
)


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def evaluation(result):
  lines = [
    f"# Evaluation of `{result['workdir']}` on `{result['split']}` of `{result['data']}`",
    "",
    f"{result['images']} images ({result['labelled']} with 3-D labels); mode {result['mode']}, encoder "
    f"{result['encoder'] or 'random init'}.",
    "",
    "Protocol: " + ", ".join(f"{k} {v}" for k, v in result["protocol"].items()) + ".",
    "",
  ]
  m = result.get("metrics")
  if m is None:
    return "\n".join(lines + ["No 3-D labels on this split: predictions only (pred json/zip).", ""])
  b = result.get("mean_pose_baseline", {})
  ratio = metrics.anchor_ratio(m, b)
  lines += ["| metric | value | x constant |", "|---|---|---|"]
  lines += [f"| {LABELS[k]} | {_value(k, m[k])} | {_ratio(ratio.get(k))} |" for k in TABLE_KEYS]
  lines += [f"| PA-EPE, Umeyama with reflection fix (mm) | {m['pa_epe_umeyama_mm']:.2f} | |"]
  if b:
    lines += ["", "x constant: the error over a constant prediction's (below 1 beats it). " + anchor_sentence(b)]
  lines += [
    "",
    "Per joint (mm):",
    "",
    "| | " + " | ".join(hand.JOINT_NAMES) + " |",
    "|---|" + "---|" * len(hand.JOINT_NAMES),
    "| EPE | " + " | ".join(f"{x:.1f}" for x in m["per_joint_epe_mm"]) + " |",
    "| PA-EPE | " + " | ".join(f"{x:.1f}" for x in m["pa_per_joint_epe_mm"]) + " |",
    "",
  ]
  return "\n".join(lines)


def _value(k, v):
  return f"{v:.4f}" if "auc" in k else f"{v:.2f}" if isinstance(v, float) else str(v)


def _ratio(v):
  return "" if v is None else f"{v:.3f}"


def anchor_terms(b):
  """'<value> <unit> <error> (<the constant>)' for each anchor in `b` (an evaluation's mean_pose_baseline)."""
  out = []
  for k, error, unit, what in ANCHORS:
    if k in b:
      auc = f" / {b['pa_auc']:.4f} PA-AUC" if k == "pa_epe_mm" and "pa_auc" in b else ""
      out.append(f"{b[k]:.2f} {unit} {error}{auc} ({what})")
  return out


def anchor_sentence(b):
  t = anchor_terms(b)
  if not t:
    return ""
  return "A constant prediction scores " + (", ".join(t[:-1]) + " and " if len(t) > 1 else "") + t[-1] + "."


def _table(rows, keys, label, fmt, name, anchor=None):
  """Markdown lines of rows over `keys`, an "x const" column beside each error with an anchor, then the anchors.

  A row's own `anchor` (its evaluation's mean_pose_baseline) wins over `anchor`, so rows scored on different sets
  are each divided by their own set's constants; the anchors below then name the rows they belong to.
  """
  anchors = [r.get("anchor") or anchor or {} for r in rows]
  ratios = [metrics.anchor_ratio(r, a) for r, a in zip(rows, anchors)]
  head, cells = [], [[] for _ in rows]
  for k in keys:
    head.append(label(k))
    for c, r in zip(cells, rows):
      c.append(fmt(k, r[k]))
    if any(k in x for x in ratios):
      head.append(RATIO[k])
      for c, x in zip(cells, ratios):
        c.append(_ratio(x.get(k)))
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(c) + " |" for c in cells]
  groups = {}  # the sentence as printed -> the rows it holds for
  for r, a in zip(rows, anchors):
    if anchor_sentence(a):
      groups.setdefault(anchor_sentence(a), []).append(str(r[name]))
  if len(groups) == 1:
    lines += ["", *groups]
  elif groups:
    lines += ["", *(f"{', '.join(names)}: {text}" for text, names in groups.items())]
  return lines


def _columns(rows, skip):
  return [k for k in rows[0] if k not in skip and not isinstance(rows[0][k], dict)]


def save(result, base, markdown):
  """Writes a tool's result dict to base.json and `markdown(result)` to base.md; records both in result["paths"]."""
  result.setdefault("paths", {}).update(json=base + ".json", markdown=base + ".md")
  with open(base + ".json", "w") as f:
    json.dump(result, f, indent=1)
  with open(base + ".md", "w") as f:
    f.write(markdown(result))
  return result


def write_table(rows, base, title):
  """Rows of {name/fields..., metric keys[, anchor]} -> base.json and a Markdown table base.md."""
  with open(base + ".json", "w") as f:
    json.dump(rows, f, indent=1)
  extra = _columns(rows, (*TABLE_KEYS, "workdir"))
  fmt = lambda k, v: _value(k, v) if k in TABLE_KEYS else str(v)
  lines = [f"# {title}", "", *_table(rows, extra + list(TABLE_KEYS), lambda k: LABELS.get(k, k), fmt, extra[0])]
  with open(base + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")


def study_table(rows, title, sort=None, anchor=None):
  """A study's rows as Markdown: tags, then metrics, then the run's name; the constant anchors below.

  Each row's errors are divided by its own `anchor` (its evaluation's mean_pose_baseline), else by `anchor`.
  """
  if not rows:
    return f"# {title}\n\nNo finished runs yet.\n"
  if sort:
    rows = sorted(rows, key=lambda r: r[sort])
  keys = _columns(rows, ("run",)) + ["run"]
  return "\n".join([f"# {title}", "", *_table(rows, keys, lambda k: SHORT.get(k, k), _value, "run", anchor)]) + "\n"


def pck(pred, gt, valid, path, m, const=None):
  """3-D PCK curves, unaligned and Procrustes-aligned (and a constant prediction's, dashed)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 4))
  for aligned, name, auc in ((False, "unaligned", m["auc"]), (True, "Procrustes-aligned", m["pa_auc"])):
    t, curve, _ = metrics.pck_curve(pred, gt, aligned=aligned, valid=valid)
    ax.plot(t * 1000, curve, label=f"{name} (AUC {auc:.3f})")
  if const is not None:
    t, curve, _ = metrics.pck_curve(const, gt, aligned=True, valid=valid)
    ax.plot(t * 1000, curve, "k--", lw=1, label="constant mean pose, aligned")
  ax.set_xlabel("threshold (mm)")
  ax.set_ylabel("3D PCK")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def skeleton_grid(p, path, n=16, cols=4):
  """Crops with the ground-truth skeleton (white, thin) under the predicted one (finger colours)."""
  n = min(n, len(p["crop"]))
  s = p["crop"].shape[1]
  up = max(1, 128 // s)  # small crops are enlarged so the skeletons stay readable
  sheet = Image.new("RGB", (cols * s * up, -(-n // cols) * s * up))
  for i in range(n):
    im = Image.fromarray(p["crop"][i]).resize((s * up, s * up), Image.BILINEAR)
    draw = ImageDraw.Draw(im)
    gt = p["gt_uv"][i] * up
    for a, b in hand.BONES:
      draw.line([tuple(gt[a]), tuple(gt[b])], fill=(255, 255, 255), width=1)
    im = hand.draw_skeleton(im, p["uv"][i] * up, width=1)
    sheet.paste(im, ((i % cols) * s * up, (i // cols) * s * up))
  sheet.save(path)
  return path


def contact_sheet(images, uvs, cols=4):
  """A grid of images (uint8 [H, W, 3]) with skeletons `uvs` [N, 21, 2] drawn on them."""
  h, w = images[0].shape[:2]
  rows = -(-len(images) // cols)
  sheet = Image.new("RGB", (cols * w, rows * h))
  for i, (img, uv) in enumerate(zip(images, uvs)):
    sheet.paste(hand.draw_skeleton(Image.fromarray(img), uv, width=1), ((i % cols) * w, (i // cols) * h))
  return sheet


def _mean(c):
  return c["mean"] if isinstance(c, dict) else c


def seed_table(cells, tags, keys, title, anchor=None):
  """A study's cells over seeds as Markdown: tags, n, then each metric's mean +- std (and its mean over the cell's
  anchor, the "x const" column); the anchors below. Cells as study.summary gives them."""
  if not cells:
    return f"# {title}\n\nNo finished runs yet.\n"
  head = [*tags, "seeds"]
  lines = []
  for c in cells:
    ratio = metrics.anchor_ratio({k: _mean(c[k]) for k in keys if k in c}, c.get("anchor") or anchor)
    row = [str(c[t]) for t in tags] + [str(max(c[k]["n"] for k in keys if k in c))]
    for k in keys:
      digits = 4 if "auc" in k else 2
      row.append(stats.format_cell(c[k], digits) if k in c else "")
      if k in RATIO:
        row.append(_ratio(ratio.get(k)))
    lines.append("| " + " | ".join(row) + " |")
  for k in keys:
    head.append(SHORT.get(k, k) + " (mean +- std)")
    if k in RATIO:
      head.append(RATIO[k])
  out = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *lines]
  sentences = {anchor_sentence(c.get("anchor") or anchor or {}) for c in cells} - {""}
  if len(sentences) == 1:
    out += ["", *sentences]
  return "\n".join(out) + "\n"


def comparison_table(comps, title, only=None):
  """{metric: comparisons} (stats.summarise's) as Markdown: per comparison the mean paired difference a - b with its
  95 % interval, and the relative difference; * marks an interval that excludes 0. `only`: the metrics whose key
  contains this text."""
  keys = [k for k in comps if only is None or only in k]
  names = list(dict.fromkeys(c["name"] for k in keys for c in comps[k]))
  if not names:
    return ""
  head = ["comparison (a - b)", "seeds"] + [f"{SHORT.get(k, k)} diff [95 % CI]" for k in keys]
  head += [f"{SHORT.get(k, k)} relative %" for k in keys if k in RATIO]
  lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name in names:
    by = {k: next((c for c in comps[k] if c["name"] == name), None) for k in keys}
    n = max((c["n"] for c in by.values() if c), default=0)
    row = [name, str(n)] + [stats.format_diff(c) if c else "" for c in by.values()]
    for k in keys:
      if k not in RATIO:
        continue
      rel = by[k] and by[k].get("relative")
      row.append(_relative(rel) if rel else "")
    lines.append("| " + " | ".join(row) + " |")
  lines += ["", "Paired over seeds (the same seed in a and b); Student's t interval; * = the interval excludes 0."]
  return "\n".join(lines) + "\n"


def _relative(c):
  """A relative difference's interval in per cent, formatted as stats.format_diff."""
  pct = {k: (None if c[k] is None else 100 * c[k]) if k in ("mean", "lo", "hi") else v for k, v in c.items()}
  return stats.format_diff(pct, 1)


def equivariance_table(cells, tags, title):
  """Per cell and transformation: R^2 of the relative parameter from the pair's features, the invariance (cosine of
  the two views' features) and the same cosine between different images (mean +- std over seeds)."""
  ts = list(dict.fromkeys(k.rsplit("_", 1)[0] for k in cells[0] if k.endswith("_r2")))
  head = [*tags] + [f"{t} {m}" for t in ts for m in ("R^2", "inv.", "diff. images")]
  lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for c in cells:
    row = [str(c[t]) for t in tags]
    for t in ts:
      row += [stats.format_cell(c[f"{t}_{m}"], 3) for m in ("r2", "invariance", "different_images")]
    lines.append("| " + " | ".join(row) + " |")
  lines += [
    "",
    "R^2: ridge from the two views' features to the relative parameter, on held-out images (1 = encoded linearly, "
    "0 = not at all); inv.: mean cosine of the two views' features (1 = invariant); diff. images: the same between "
    "views of different images, the scale to read inv. on.",
  ]
  return "\n".join(lines) + "\n"


def bars(rows, path, group, series):
  """Grouped bars of 2D EPE and PA-EPE: one group per `group` value, one bar per `series` value; cells over seeds
  (a dict per metric) get their mean and a standard-deviation whisker."""
  plt = _pyplot()
  groups = list(dict.fromkeys(r[group] for r in rows))
  names = list(dict.fromkeys(r[series] for r in rows))
  fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(groups) * 2), 3.8))
  w = 0.8 / max(len(names), 1)
  for ax, metric, label in zip(axes, ("epe_2d_px", "pa_epe_mm"), ("2D EPE (px)", "PA-EPE (mm)")):
    for i, n in enumerate(names):
      cells = [
        next((r[metric] for r in rows if r[group] == g and r[series] == n and metric in r), None) for g in groups
      ]
      vals = [np.nan if c is None else _mean(c) for c in cells]
      err = [0.0 if not isinstance(c, dict) or c["std"] is None else c["std"] for c in cells]
      ax.bar(np.arange(len(groups)) + i * w, vals, w, yerr=err, capsize=2, label=n)
    ax.set_xticks(np.arange(len(groups)) + w * (len(names) - 1) / 2, groups, rotation=30, ha="right")
    ax.set_ylabel(label)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def curves(r, path):
  """Loss, learning rate and online-probe error of a pretraining run (the main job's results["pretrain"])."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  step, loss, lr, probe_px = np.array(r["curve"]).T
  for ax, y, title in zip(
    axes,
    (loss, lr, probe_px),
    ("loss (objective + online probe)", "learning rate", "online probe 2D error (px, training views)"),
  ):
    ax.plot(step, y)
    ax.set_title(title)
    ax.set_xlabel("step")
  fig.suptitle(f"{r['objective']} pretraining (eval online probe {r['online_probe_eval_px']:.2f} px)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
