"""Where a probe run's aligned 3-D error comes from: its predictions with parts replaced by the ground truth.

    python benchmarks/error_parts.py runs/scratch [--split evaluation]

The model predicts 2-D keypoints (crop px) and z_rel (root-relative depth over the bone length); metric 3-D comes
from those, the closed-form root depth and the bone length. This rescores the evaluation split's predictions with
the ground-truth root depth, then with the ground-truth 2-D or z_rel in place of the predicted one (and the
ground-truth 2-D with z_rel = 0, a flat hand), and prints each PA-EPE and root-relative EPE beside the model's, with
the mean absolute z_rel error and the spread of predicted / true root depth.
"""

import argparse

import jax.numpy as jnp
import numpy as np

from peclr_jax import evaluate, geometry, keypoints, metrics


def main():
  p = argparse.ArgumentParser()
  p.add_argument("workdir")
  p.add_argument("--split", default="evaluation")
  args = p.parse_args()
  config, variables = keypoints.restore(args.workdir)
  kp = config.keypoints
  r = evaluate.predict_split(config, variables, args.split)
  gt, valid, K = r["gt_xyz"], r["valid"], jnp.asarray(r["K"])
  tgt = keypoints.targets(jnp.asarray(gt), K, kp)

  def score(uv, z_rel, z_root):
    xyz = geometry.from_25d(
      jnp.asarray(uv), jnp.asarray(z_rel), K, kp.bone, kp.root, jnp.asarray(r["scale"]), z_root=z_root
    )
    xyz = np.asarray(xyz)
    return metrics.pa_epe(xyz, gt, valid=valid) * 1000, metrics.rr_epe(xyz, gt, valid) * 1000

  z_true = np.asarray(tgt["z_rel"])
  rows = [
    (
      "model (closed-form root depth)",
      metrics.pa_epe(r["xyz"], gt, valid=valid) * 1000,
      metrics.rr_epe(r["xyz"], gt, valid) * 1000,
    ),
    ("model, true root depth", *score(r["uv"], r["z_rel"], tgt["z_root"])),
    ("true 2-D, predicted z_rel", *score(r["gt_uv"], r["z_rel"], tgt["z_root"])),
    ("predicted 2-D, true z_rel", *score(r["uv"], z_true, tgt["z_root"])),
    ("true 2-D, z_rel = 0", *score(r["gt_uv"], np.zeros_like(z_true), tgt["z_root"])),
  ]
  print(f"{args.workdir}, {args.split} split ({len(gt)} images)")
  print(f"  {'predictions':<32} | PA-EPE mm | root-relative EPE mm")
  for name, pa, rr in rows:
    print(f"  {name:<32} | {pa:9.2f} | {rr:9.2f}")
  closed = np.asarray(geometry.root_depth(jnp.asarray(r["uv"]), jnp.asarray(r["z_rel"]), K, kp.bone)[0])
  ratio = closed / np.asarray(tgt["z_root"])
  print(f"  2-D EPE {metrics.epe_2d(r['uv'], r['gt_uv'], valid):.2f} px; z_rel mean absolute error "
        f"{np.abs(r['z_rel'] - z_true).mean():.3f} bone lengths; closed-form / true root depth: median "
        f"{np.median(ratio):.2f}, 10-90 % {np.percentile(ratio, 10):.2f}-{np.percentile(ratio, 90):.2f}")  # fmt: skip


if __name__ == "__main__":
  main()
