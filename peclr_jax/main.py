"""The main job on the embedded data: render, pretrain, then linear-probe the encoder against a random-init one.

    peclr-main --workdir=runs/main      # python -m peclr_jax.main

1. Renders the embedded hands of the cpu config (lifelike, 4,000 training hands in 4 versions and 500 evaluation
   ones; cached under --data), reads them back through the FreiHAND loader and
   the grain pipeline, prints label statistics and writes `contact_sheet.png` (16 images, xyz projected with K)
   and `crops.png` (pipeline crops, xyz projected with K' = T K).
2. Pretrains with the config pretrain:peclr,cpu (ResNet-18 at width 16, 64 px) in `<workdir>/pretrain` and plots
   loss, learning rate and the online probe (`curves.png`).
3. The downstream protocol, probe:linear,cpu: a linear layer on the frozen PeCLR encoder
   (`<workdir>/linear_peclr`) and on a frozen random-init one (`<workdir>/linear_random_init`) regresses 2.5-D
   keypoints; each is evaluated on the held-out split (2D EPE px, root-relative EPE, PA-EPE, each also as a
   multiple of a constant prediction's; reports, PCK curves and skeleton grids in its workdir) and `linear.md` /
   `results.json` compare them.
"""

import json
import os
import time

import numpy as np
from absl import flags
from PIL import Image

from peclr_jax import cli, configs, loop, pretrain, probe, report
from peclr_jax.data import common, freihand, pipeline, synthetic
from peclr_jax.objectives import OBJECTIVES


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
    split=split,
    ids=int(src.n_ids),
    versions=int(src.n_versions),
    images=len(src),
    centroid_depth_m=[round(float(x), 3) for x in np.percentile(xyz[..., 2].mean(-1), [0, 50, 100])],
    scale_bone_mm=[round(float(x) * 1000, 1) for x in np.percentile(src.scale, [0, 50, 100])],
    joints_in_image=round(float(inside.mean()), 4),
    in_image_joints_on_mask=round(float(np.mean(on_mask)), 4),
  )


def _flags(fv, argv):
  del argv
  flags.DEFINE_string("workdir", "runs/main", "where the sheets, runs and comparison go", flag_values=fv)
  flags.DEFINE_string("data", "data/synthetic", "embedded dataset root (rendered if missing)", flag_values=fv)
  flags.DEFINE_integer(
    "train", None, "training hands to render (default: the cpu config's)", lower_bound=1, flag_values=fv
  )
  flags.DEFINE_integer(
    "eval", None, "evaluation hands to render (default: the cpu config's)", lower_bound=1, flag_values=fv
  )
  flags.DEFINE_integer(
    "versions", None, "images per training hand (default: the cpu config's)", lower_bound=1, flag_values=fv
  )
  flags.DEFINE_integer("seed", 0, "the embedded set's seed", flag_values=fv)
  flags.DEFINE_enum(
    "style",
    None,
    list(synthetic.STYLES),
    "the embedded hands, peclr-synthetic --style (default: the cpu config's)",
    flag_values=fv,
  )
  flags.DEFINE_enum("objective", "peclr", OBJECTIVES, "the pretraining objective", flag_values=fv)
  flags.DEFINE_integer("steps", None, "pretraining steps (default: the cpu config's)", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer(
    "probe_steps", None, "linear-probe steps (default: the cpu config's)", lower_bound=1, flag_values=fv
  )
  flags.DEFINE_bool("skip_pretrain", False, "only render and check the data", flag_values=fv)


def main(argv: list[str] | None = None) -> None:
  args = cli.parse(argv, __doc__, _flags, required=())
  with cli.errors():
    loop.make_workdir(args.workdir)

  t0 = time.perf_counter()
  data = embedded(args)
  wrote = synthetic.generate(
    data["root"],
    data["synthetic_train"],
    data["synthetic_eval"],
    data["synthetic_seed"],
    data["synthetic_versions"],
    style=synthetic.STYLES[data["synthetic_style"]](),
  )
  print(f"embedded data: {args.data} ({'rendered' if wrote else 'cached'}, {time.perf_counter() - t0:.1f} s)")
  summary = {s: summarize(args.data, s) for s in freihand.SPLITS}
  with open(os.path.join(args.data, synthetic.MANIFEST)) as f:
    summary["render_images_per_s"] = json.load(f)["images_per_s"]
  for k, v in summary.items():
    print(f"  {k}: {v}")

  src = freihand.FreiHand(args.data, "training")
  records = [pipeline.decode(src[i]) for i in range(16)]
  report.contact_sheet([r["image"] for r in records], [common.project(r["xyz"], r["K"]) for r in records]).save(
    os.path.join(args.workdir, "contact_sheet.png")
  )
  batch = next(iter(pipeline.dataset(src, 16, size=128, shuffle=False, num_epochs=1, process_index=0, process_count=1)))
  report.contact_sheet(batch["image"], common.project(batch["xyz"], batch["K"])).save(
    os.path.join(args.workdir, "crops.png")
  )
  with open(os.path.join(args.workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(f"wrote {args.workdir}/contact_sheet.png, crops.png, summary.json ({time.perf_counter() - t0:.1f} s)")
  if args.skip_pretrain:
    return
  with cli.errors():  # after a stop the same command resumes: finished stages are found, the rest resume
    pretrain_and_compare(args, t0)


def embedded(args):
  """config.data's fields for the embedded set: the cpu config's, changed by the flags given."""
  data = configs.load("pretrain:peclr,cpu").data
  given = dict(
    synthetic_train=args.train,
    synthetic_eval=args.eval,
    synthetic_versions=args.versions,
    synthetic_style=args.style,
  )
  out = dict(root=args.data, synthetic_seed=args.seed)
  out.update({k: data[k] if v is None else v for k, v in given.items()})
  return out


def pretrain_and_compare(args, t0):
  config = configs.load(f"pretrain:{args.objective},cpu")
  config.data.update(embedded(args))
  if args.steps:
    config.total_steps = args.steps
  t = time.perf_counter()
  pre_dir = os.path.join(args.workdir, "pretrain")
  r = pretrain.train(config, pre_dir)
  results = {
    "pretrain": dict(
      objective=args.objective,
      steps=int(r.state.step),
      seconds=round(time.perf_counter() - t, 1),
      online_probe_eval_px=round(pretrain.evaluate_probe(config, r.state), 2),
      curve=[(m["step"], m["loss"], m["lr"], m["probe_epe_px"]) for m in r.metrics],
    )
  }

  # The downstream protocol: a linear layer on the frozen encoder regresses 2.5-D keypoints; 3-D by the quadratic.
  rows = []
  for name, encoder in ((args.objective, pre_dir), ("random_init", "")):
    c = configs.load("probe:linear,cpu")
    c.data.update(embedded(args))
    c.encoder = encoder
    if args.probe_steps:
      c.total_steps = args.probe_steps
    t = time.perf_counter()
    _, reports = probe.run(c, os.path.join(args.workdir, f"linear_{name}"))
    e = reports["evaluation"]
    rows.append(
      dict(
        encoder=name,
        probe_seconds=round(time.perf_counter() - t, 1),
        **{k: e["metrics"][k] for k in report.TABLE_KEYS},
        anchor=e.get("mean_pose_baseline", {}),
        anchor_ratio=e.get("anchor_ratio", {}),
      )
    )
  results["linear"] = rows
  report.curves(results["pretrain"], os.path.join(args.workdir, "curves.png"))
  report.write_table(rows, os.path.join(args.workdir, "linear"), "Linear probe on the frozen encoder, evaluation split")
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(results, f)
  a, b = rows
  pre = results["pretrain"]
  print(
    f"\n{args.objective} pretraining: {pre['steps']} steps in {pre['seconds']:.0f} s; online probe "
    f"{pre['online_probe_eval_px']:.2f} px on the evaluation split"
  )
  print(
    f"linear probe (probe:linear,cpu) on the frozen encoder, evaluation split ({config.augment.out_size} px crops):"
  )
  # The absolute 3-D EPE is left to linear.md: the closed-form root depth dominates it at this scale.
  cols = (("epe_2d_px", "2D EPE px"), ("rr_epe_mm", "root-relative EPE mm"), ("pa_epe_mm", "PA-EPE mm"))
  print(f"  {'encoder':>12} | " + " | ".join(f"{c} (x const)" for _, c in cols) + " | PA-AUC")
  for row in rows:
    x = row["anchor_ratio"]
    cells = [(f"{row[k]:.2f}" + (f" ({x[k]:.3f})" if k in x else "")).rjust(len(c) + 10) for k, c in cols]
    print(f"  {row['encoder']:>12} | " + " | ".join(cells) + f" | {row['pa_auc']:6.3f}")
  # Both probes are scored on the same split, so they share its anchors.
  print("  anchors (a constant prediction): " + "; ".join(report.anchor_terms(a["anchor"])))
  change = {k: 100 * (a[k] / b[k] - 1) for k, _ in cols}
  print(
    f"  {args.objective}'s errors relative to random init's: 2D {change['epe_2d_px']:+.1f} %, root-relative "
    f"{change['rr_epe_mm']:+.1f} %, PA-EPE {change['pa_epe_mm']:+.1f} %; {args.workdir}/linear.md, curves.png; "
    f"total {time.perf_counter() - t0:.0f} s"
  )


if __name__ == "__main__":
  main()
