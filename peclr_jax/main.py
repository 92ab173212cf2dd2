"""The main job on the embedded data.

    python -m peclr_jax.main --workdir runs/main

Renders the embedded synthetic hands (cached under --data), reads them back through the same FreiHAND loader and
grain pipeline a real dataset uses, prints a summary and writes contact sheets of 16 samples with their projected
skeletons: `contact_sheet.png` (full 224 px images, skeleton = xyz projected with K) and `crops.png` (pipeline
crops, skeleton = xyz projected with the updated K' = T K).
"""

import argparse
import json
import os
import time

import numpy as np
from PIL import Image

from peclr_jax import hand
from peclr_jax.data import common, freihand, pipeline, synthetic


def contact_sheet(images, uvs, cols=4):
  """A grid of images (uint8 [H, W, 3]) with skeletons `uvs` [N, 21, 2] drawn on them."""
  h, w = images[0].shape[:2]
  rows = -(-len(images) // cols)
  sheet = Image.new("RGB", (cols * w, rows * h))
  for i, (img, uv) in enumerate(zip(images, uvs)):
    sheet.paste(hand.draw_skeleton(Image.fromarray(img), uv, width=1), ((i % cols) * w, (i // cols) * h))
  return sheet


def summarize(root, split="training"):
  """Label statistics of a FreiHAND-layout split, from the files on disk."""
  src = freihand.FreiHand(root, split, with_mask=True)
  xyz, K = src.xyz, src.K
  uv = common.project(xyz, K)
  inside = ((uv >= 0) & (uv < synthetic.SIZE)).all(-1)
  on_mask = []
  for i in range(min(len(src.ids), 200)):
    m = np.asarray(Image.open(src.mask_path(i)).convert("L"))
    u = np.floor(uv[i][inside[i]]).astype(int)
    on_mask.append((m[u[:, 1], u[:, 0]] > 127).mean())
  return dict(
      split=split, ids=int(src.n_ids), versions=int(src.n_versions), images=len(src),
      centroid_depth_m=[round(float(x), 3) for x in np.percentile(xyz[..., 2].mean(-1), [0, 50, 100])],
      scale_bone_mm=[round(float(x) * 1000, 1) for x in np.percentile(src.scale, [0, 50, 100])],
      joints_in_image=round(float(inside.mean()), 4),
      in_image_joints_on_mask=round(float(np.mean(on_mask)), 4))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="runs/main", help="where sheets and summary.json go")
  p.add_argument("--data", default="data/synthetic", help="embedded dataset root (generated if missing)")
  p.add_argument("--train", type=int, default=4000)
  p.add_argument("--eval", type=int, default=500)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  try:
    os.makedirs(args.workdir, exist_ok=True)
    probe = os.path.join(args.workdir, ".write_test")
    open(probe, "w").close()
    os.remove(probe)
  except OSError as e:
    raise SystemExit(f"error: workdir {args.workdir!r} is not writable: {e}") from None

  t0 = time.perf_counter()
  wrote = synthetic.generate(args.data, args.train, args.eval, args.seed)
  print(f"embedded data: {args.data} ({'rendered' if wrote else 'cached'}, {time.perf_counter() - t0:.1f} s)")
  summary = {s: summarize(args.data, s) for s in freihand.SPLITS}
  with open(os.path.join(args.data, synthetic.MANIFEST)) as f:
    summary["render_images_per_s"] = json.load(f)["images_per_s"]
  for k, v in summary.items():
    print(f"  {k}: {v}")

  src = freihand.FreiHand(args.data, "training")
  records = [pipeline.decode(src[i]) for i in range(16)]
  contact_sheet([r["image"] for r in records], [common.project(r["xyz"], r["K"]) for r in records]).save(
      os.path.join(args.workdir, "contact_sheet.png"))
  batch = next(iter(pipeline.dataset(src, 16, size=128, shuffle=False, num_epochs=1, process_index=0,
                                     process_count=1)))
  contact_sheet(batch["image"], common.project(batch["xyz"], batch["K"])).save(
      os.path.join(args.workdir, "crops.png"))
  with open(os.path.join(args.workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(f"wrote {args.workdir}/contact_sheet.png, crops.png, summary.json ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
  main()
