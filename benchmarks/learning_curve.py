"""Error against training steps of probe runs, with the constant anchors: every kept checkpoint evaluated.

    peclr-probe --config=probe:scratch,cpu --config.keep_ckpts=20 --config.ckpt_every=500 --workdir=runs/scratch
    python benchmarks/learning_curve.py runs/scratch [runs/other ...] [--out curve.png]

Prints, per run and checkpoint, the evaluation split's 2D EPE (px of the crop), root-relative EPE and PA-EPE, each
beside its ratio to the constant anchor (the split's mean 2D keypoints; the training labels' mean pose), and plots
them with the anchors as horizontal lines. The run's own eval_evaluation.* files are left as at its last step.
"""

import argparse
import os

import numpy as np

from peclr_jax import evaluate

KEYS = (("epe_2d_px", "2D EPE (px)"), ("rr_epe_mm", "root-relative EPE (mm)"), ("pa_epe_mm", "PA-EPE (mm)"))


def curve(workdir):
  """[(step, metrics, anchors)] over the run's complete checkpoints, oldest first."""
  path = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(path) if d.isdigit())
  rows = []
  for s in steps:
    r = evaluate.evaluate(workdir, step=s, progress=False)
    rows.append((s, r["metrics"], r["mean_pose_baseline"]))
  return rows


def main():
  p = argparse.ArgumentParser()
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--out", default="learning_curve.png")
  args = p.parse_args()
  runs = {w: curve(w) for w in args.workdirs}
  for w, rows in runs.items():
    print(f"\n{w}")
    head = " | ".join(f"{label} (x const)" for _, label in KEYS)
    print(f"{'step':>6} | {head}")
    for s, m, a in rows:
      cells = []
      for k, _ in KEYS:
        ratio = f"{m[k] / a[k]:.2f}" if k in a else "-"
        cells.append(f"{m[k]:8.2f} ({ratio})")
      print(f"{s:>6} | " + " | ".join(cells))
    _, _, a = rows[-1]
    print("anchors: " + ", ".join(f"{label} {a[k]:.2f}" for k, label in KEYS if k in a))

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(KEYS), figsize=(4.2 * len(KEYS), 3.6))
  for ax, (k, label) in zip(axes, KEYS):
    for w, rows in runs.items():
      steps = np.array([s for s, _, _ in rows])
      ax.plot(steps, [m[k] for _, m, _ in rows], "o-", label=os.path.basename(os.path.normpath(w)))
      a = rows[-1][2]
      if k in a:
        ax.axhline(a[k], color="k", ls="--", lw=1)
    ax.set_title(label + " (dashed: constant)")
    ax.set_xlabel("step")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=100)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
