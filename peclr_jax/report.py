"""Markdown tables and plots of results, shared by evaluation, the studies and the main job.

evaluation(result)               the Markdown of one evaluation (evaluate.evaluate's result dict)
write_table(rows, base, title)   rows of metrics -> base.json and a Markdown table base.md
study_table(rows, title, ...)    a study's rows (tags + metrics) as Markdown, with the constant anchors
pck(...), skeleton_grid(...), bars(...), curves(...), contact_sheet(...)   PNG figures
"""

import json

import numpy as np
from PIL import Image, ImageDraw

from peclr_jax import hand, metrics

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
  lines += ["| metric | value |", "|---|---|"]
  lines += [f"| {LABELS[k]} | {m[k]:.4f} |" if "auc" in k else f"| {LABELS[k]} | {m[k]:.2f} |" for k in TABLE_KEYS]
  lines += [f"| PA-EPE, Umeyama with reflection fix (mm) | {m['pa_epe_umeyama_mm']:.2f} |"]
  b = result.get("mean_pose_baseline", {})
  if "epe_2d_px" in b:
    lines += [f"| anchor: constant mean 2D keypoints of this split, 2D EPE (px) | {b['epe_2d_px']:.2f} |"]
  if "pa_epe_mm" in b:
    lines += [
      f"| anchor: constant mean training pose, PA-EPE (mm) / PA-AUC | {b['pa_epe_mm']:.2f} / {b['pa_auc']:.4f} |"
    ]
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


def write_table(rows, base, title):
  """Rows of {name/fields..., metric keys} -> base.json and a Markdown table base.md."""
  with open(base + ".json", "w") as f:
    json.dump(rows, f, indent=1)
  extra = [k for k in rows[0] if k not in TABLE_KEYS and k != "workdir"]
  head = extra + [LABELS[k] for k in TABLE_KEYS]
  lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [str(r[k]) for k in extra] + [f"{r[k]:.4f}" if "auc" in k else f"{r[k]:.2f}" for k in TABLE_KEYS]
    lines.append("| " + " | ".join(cells) + " |")
  with open(base + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")


def study_table(rows, title, sort=None, anchor=None):
  """A study's rows as Markdown: tags, then metrics, then the run's name; the constant anchors below."""
  if not rows:
    return f"# {title}\n\nNo finished runs yet.\n"
  if sort:
    rows = sorted(rows, key=lambda r: r[sort])
  cols = [k for k in rows[0] if k != "run"] + ["run"]
  fmt = lambda k, v: f"{v:.4f}" if k == "pa_auc" else f"{v:.2f}" if isinstance(v, float) else str(v)
  lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(fmt(k, r[k]) for k in cols) + " |" for r in rows]
  if anchor and "epe_2d_px" in anchor:
    lines += [
      "",
      f"A constant prediction scores {anchor['epe_2d_px']:.2f} px 2D EPE (the evaluation split's mean "
      "keypoints)"
      + (f" and {anchor['pa_epe_mm']:.2f} mm PA-EPE (the training labels' mean pose)" if "pa_epe_mm" in anchor else "")
      + ".",
    ]
  return "\n".join(lines) + "\n"


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


def bars(rows, path, group, series):
  """Grouped bars of 2D EPE and PA-EPE: one group per `group` value, one bar per `series` value."""
  plt = _pyplot()
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
