"""Evaluates a keypoint-regression workdir exactly as the FreiHAND benchmark measures (reference §5).

  peclr-evaluate --workdir=runs/linear_peclr [--split=evaluation]     # python -m peclr_jax.evaluate

Protocol: each image is cropped around its ground-truth keypoints at the training margin (no rotation, jitter or
colour), the model predicts 2.5-D keypoints, and metric 3-D comes from the bone-length quadratic times the sample's
reference-bone length (FreiHAND's `scale` for the middle bone, allowed at test time; otherwise the ground truth's).
Writes to the workdir:
  eval_<split>.json / .md   2D EPE (px of the crop), PA-EPE, PA-AUC (0-50 mm), root-relative EPE, 3D EPE, AUC,
                            medians, per-joint errors, the errors of constant predictions (`constant_anchors`:
                            the floor a model that sees the image must beat) and each error over its anchor's
                            (`anchor_ratio`: below 1 beats the constant)
  pck_<split>.png           3-D PCK curves, unaligned and Procrustes-aligned
  skeletons_<split>.png     a grid of crops with ground-truth (white) and predicted (coloured) skeletons
  pred_<split>.json / .zip  FreiHAND's submission format: [xyz_list, verts_list] in metres, FreiHAND joint order,
                            source order; verts are empty lists (keypoints only). Submit the zip of the
                            `evaluation` split, or score it locally with the toolbox's eval.py.
"""

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from tqdm import tqdm

from peclr_jax import augment, cli, inputs, keypoints, metrics, report
from peclr_jax.errors import TrainingError

SPLITS = ("evaluation", "training")


def predict_split(config, variables, split="evaluation", limit=None, batch_size=64, progress=False, crops=16):
  """Runs the model over a split; returns numpy arrays in source order (crop px for uv, metres for xyz).

  The model's input crops of the first `crops` images come back too (uint8), for the skeleton grid.
  """
  src = inputs.source(config.data, split)
  aug = keypoints.eval_augment(config)
  kp = config.keypoints
  model = keypoints.make_model(config)

  @jax.jit
  def run(batch):
    x, uv, K, _, _ = augment.augment(jax.random.key(0), batch, aug)
    pred = model.apply(variables, x, K, train=False)
    # The bone's metric length: FreiHAND's `scale` when it is the middle bone and known, else the ground truth's.
    given = (batch["scale"] > 0) & (kp.bone == "middle")
    s = jnp.where(given, batch["scale"], keypoints.targets(batch["xyz"], K, kp)["s"])
    return dict(
      uv=pred["uv"],
      z_rel=pred["z_rel"],
      xyz=keypoints.reconstruct(pred, K, s, kp),
      gt_uv=uv,
      K=K,
      crop=augment.denormalize(x),
    )

  keys = ("index", "has_xyz", "valid", "scale")
  out = {k: [] for k in ("uv", "z_rel", "xyz", "gt_uv", "gt_xyz", "K", "crop", *keys)}
  ds = inputs.dataset(config, src, shuffle=False, num_epochs=1, batch_size=batch_size, drop_remainder=False)
  n = 0
  with tqdm(total=min(len(src), limit or len(src)), desc=f"evaluate {split}", disable=not progress) as bar:
    for batch in ds:
      if limit is not None and n >= limit:
        break
      known = ((batch["scale"] > 0) & (kp.bone == "middle")) | batch["has_xyz"]
      if not known.all():
        raise TrainingError(
          f"split {split!r}: sample {int(batch['index'][~known][0])} has neither 3-D labels nor a "
          f"`scale` for the {kp.bone} bone, so its metric 3-D is unknown (FreiHAND's scale files "
          "give the middle bone)"
        )
      r = jax.device_get(run({k: batch[k] for k in ("image", "uv", "K", "valid", "xyz", "scale")}))
      if n >= crops:
        r["crop"] = r["crop"][:0]
      for k, v in (*r.items(), ("gt_xyz", batch["xyz"]), *((k, batch[k]) for k in keys)):
        out[k].append(np.asarray(v))
      n += len(batch["index"])
      bar.update(len(batch["index"]))
  # The pipeline is unshuffled and single-process here, so the rows are in source order (pred.json relies on it).
  return {k: np.concatenate(v)[:limit] for k, v in out.items()}


def evaluate(
  workdir: str,
  split: str = "evaluation",
  limit: int | None = None,
  progress: bool = True,
  step: int | None = None,
  data_root: str | None = None,
  tag: str | None = None,
) -> dict:
  """Scores a probe workdir on `split`; writes the report files and returns dict(metrics, paths, n).

  `data_root` evaluates on another FreiHAND-layout set instead of the run's own (e.g. the target domain of a
  cross-dataset study); `tag` then names the report files (`eval_<tag>_<split>.*`, default: the root's name).
  """
  config, variables = keypoints.restore(workdir, step)
  if data_root is not None:
    with config.unlocked():
      config.data.update(name="freihand", root=data_root, val_fraction=0.0)
    tag = tag or os.path.basename(os.path.normpath(data_root))
  split_name = f"{tag}_{split}" if tag else split
  p = predict_split(config, variables, split, limit, progress=progress)
  labelled = p["has_xyz"].astype(bool)
  paths = {}
  result = dict(
    split=split,
    data=os.path.abspath(config.data.root),
    workdir=os.path.abspath(workdir),
    images=int(len(p["index"])),
    labelled=int(labelled.sum()),
    mode=config.mode,
    encoder=config.encoder or None,
    protocol=dict(
      crop=f"ground-truth keypoints, margin {config.augment.margin:.2f}, {config.augment.out_size} px",
      bone=config.keypoints.bone,
      root=config.keypoints.root,
      refine_root=bool(config.keypoints.refine_root),
      scale="FreiHAND scale file" if config.keypoints.bone == "middle" else "ground truth",
    ),
  )
  if labelled.any():
    valid = p["valid"][labelled]
    gt = p["gt_xyz"][labelled]
    m = metrics.summary(p["xyz"][labelled], gt, p["uv"][labelled], p["gt_uv"][labelled], valid=valid)
    m["pa_per_joint_epe_mm"] = (metrics.per_joint_epe(p["xyz"][labelled], gt, valid, aligned=True) * 1000).tolist()
    result["metrics"] = m
    anchors, pose = constant_anchors(p["gt_uv"][labelled], gt, valid, training_xyz(config))
    result["mean_pose_baseline"] = anchors
    result["anchor_ratio"] = metrics.anchor_ratio(m, anchors)
    paths["pck"] = report.pck(
      p["xyz"][labelled],
      gt,
      valid,
      os.path.join(workdir, f"pck_{split_name}.png"),
      m,
      None if pose is None else np.broadcast_to(pose, gt.shape),
    )
  paths["skeletons"] = report.skeleton_grid(p, os.path.join(workdir, f"skeletons_{split_name}.png"))
  paths.update(write_submission(p["xyz"], workdir, split_name))
  base = os.path.join(workdir, f"eval_{split_name}")
  paths["json"], paths["markdown"] = base + ".json", base + ".md"
  result["paths"] = paths
  with open(base + ".json", "w") as f:
    json.dump(result, f, indent=1)
  with open(base + ".md", "w") as f:
    f.write(report.evaluation(result))
  return result


def training_xyz(config):
  """The training labels [N, 21, 3] when the source holds them in memory (FreiHAND layout), else None."""
  src = inputs.source(config.data, "training")
  xyz = getattr(src, "xyz", None)
  return None if xyz is None else xyz[getattr(src, "ids", slice(None))]


def constant_anchors(gt_uv, gt, valid, train_xyz=None):
  """What constant predictions score on a split: the floor any model that sees the image must beat.

  Each is scored over exactly what the model's metric is (these images, their `valid` joints, the same per-joint
  averaging): 2D EPE of this split's mean valid keypoints in the crop (an oracle constant); with the training labels
  `train_xyz`, root-relative EPE of their mean root-relative pose and PA-EPE / PA-AUC of their Procrustes mean pose.
  Returns (dict of errors as in mean_pose_baseline, the Procrustes mean pose [21, 3] or None).
  """
  w = np.asarray(valid, np.float64)[..., None]
  # Unlabelled joints hold placeholder uv (InterHand2.6M's sit on the wrist), so they stay out of the mean.
  mean_uv = (np.asarray(gt_uv) * w).sum(0) / np.maximum(w.sum(0), 1)
  out = dict(epe_2d_px=metrics.epe_2d(np.broadcast_to(mean_uv, gt_uv.shape), gt_uv, valid))
  if train_xyz is None:
    return out, None
  rr = np.broadcast_to(metrics.rr_mean_pose(train_xyz), gt.shape)
  pose = metrics.mean_pose(train_xyz)
  const = np.broadcast_to(pose, gt.shape)
  out.update(
    rr_epe_mm=metrics.rr_epe(rr, gt, valid) * 1000,
    pa_epe_mm=metrics.pa_epe(const, gt, valid=valid) * 1000,
    pa_auc=metrics.auc(const, gt, aligned=True, valid=valid),
  )
  return out, pose


def write_submission(xyz, workdir, split):
  """FreiHAND's [xyz_list, verts_list] JSON (metres) and a zip holding it as pred.json."""
  base = os.path.join(workdir, f"pred_{split}")
  data = [np.asarray(xyz, np.float64).round(6).tolist(), [[] for _ in range(len(xyz))]]
  with open(base + ".json", "w") as f:
    json.dump(data, f)
  with zipfile.ZipFile(base + ".zip", "w", zipfile.ZIP_DEFLATED) as z:
    z.write(base + ".json", "pred.json")
  return {"pred_json": base + ".json", "pred_zip": base + ".zip"}


def _flags(fv, argv):
  del argv
  cli.workdir_flag(fv, "a probe workdir (peclr-probe)")
  flags.DEFINE_enum("split", "evaluation", SPLITS, "the split to score", flag_values=fv)
  flags.DEFINE_integer("limit", None, "evaluate the first N images only", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", lower_bound=0, flag_values=fv)
  flags.DEFINE_string(
    "data_root", None, "evaluate on this FreiHAND-layout set instead of the run's own", flag_values=fv
  )
  flags.DEFINE_string("tag", None, "names the report files with --data_root (default: the root's name)", flag_values=fv)


def main(argv: list[str] | None = None) -> None:
  args = cli.parse(argv, __doc__, _flags)
  with cli.errors(FileNotFoundError):
    r = evaluate(args.workdir, args.split, args.limit, step=args.step, data_root=args.data_root, tag=args.tag)
  cli.print_report(r)


if __name__ == "__main__":
  main()
