"""Keypoint probes no optimiser can spoil, on a frozen encoder's features of the evaluation crops (features.py).

  peclr-knn --encoder=runs/peclr_cpu --workdir=runs/knn_peclr        # python -m peclr_jax.knn
  peclr-knn --workdir=runs/knn_random [--config=probe:linear,cpu]     # no encoder: the random-init baseline

kNN: each query's pose is the mean of the 2.5-D targets (crop uv normalised to [-1, 1] and z_rel, keypoints.targets)
of its k nearest training images by cosine similarity of the L2-normalised features (`--center` subtracts the
training mean first, which also makes the cosine blind to where along a ray from that mean a feature lies). The
evaluation crop is centred on the hand and sized by its keypoints, so the targets of all images share one frame
already: they are averaged as they are (a Procrustes alignment would remove the in-plane rotation the probe has to
predict). `--tau` weights the neighbours by softmax(cosine / tau) instead of equally.
Ridge: the exact least-squares fit of the same targets on the standardised features with an L2 penalty.
k and the penalty are chosen on validation ids (a held-out part of the training ids, split by id so no hand is on
both sides), by the validation 2-D EPE; the chosen probe is then refit on all training images. Predictions become
metric 3-D exactly as evaluate.py does (keypoints.reconstruct with the reference bone's length) and are scored with
metrics.summary. The training labels' mean target, scored the same way, is the constant floor.

Writes knn_<split>.json and knn_<split>.md to the workdir.
"""

import os

import jax.numpy as jnp
import numpy as np
from absl import flags

from peclr_jax import cli, features, keypoints, metrics, report
from peclr_jax.errors import TrainingError

KS = (1, 2, 5, 10, 20, 50, 100, 200)
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
SELECT = "epe_2d_px"  # the validation metric that picks k and the penalty (lower is better)
SPLITS = ("evaluation", "training")
TABLE = (
  ("2D EPE (px)", "epe_2d_px"),
  ("PA-EPE (mm)", "pa_epe_mm"),
  ("RR-EPE (mm)", "rr_epe_mm"),
  ("EPE (mm)", "epe_mm"),
)


# ---------------------------------------------------------------------------------------------------------------
# Nearest neighbours.
# ---------------------------------------------------------------------------------------------------------------
def normalise(f, mean=None):
  """Rows of f minus `mean` (none when None), L2-normalised (a zero row stays zero)."""
  f = np.asarray(f, np.float64)
  if mean is not None:
    f = f - mean
  return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def neighbours(train, query, k, chunk=1024):
  """(indices [Q, k], cosine [Q, k]) of each query's k most similar training rows, most similar first; rows of both
  are already normalised. Ties go to the lower training index."""
  k = min(k, len(train))
  idx, sim = [], []
  for i in range(0, len(query), chunk):
    s = query[i : i + chunk] @ train.T
    top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < len(train) else np.tile(np.arange(len(train)), (len(s), 1))
    ts = np.take_along_axis(s, top, 1)
    order = np.lexsort((top, -ts), axis=1)
    idx.append(np.take_along_axis(top, order, 1))
    sim.append(np.take_along_axis(ts, order, 1))
  return np.concatenate(idx), np.concatenate(sim)


def predict(train_f, train_y, query_f, ks, tau=None, center=False) -> dict:
  """{k: [Q, ...] mean of the k nearest training targets} for every k in ks (cosine kNN, see the module doc)."""
  mean = np.asarray(train_f, np.float64).mean(0) if center else None
  train, query = normalise(train_f, mean), normalise(query_f, mean)
  train_y = np.asarray(train_y, np.float64)
  idx, sim = neighbours(train, query, max(ks))
  out = {}
  for k in ks:
    y = train_y[idx[:, :k]]  # [Q, k, ...]
    if tau is None:
      w = np.full(idx[:, :k].shape, 1.0 / min(k, idx.shape[1]))
    else:
      e = np.exp((sim[:, :k] - sim[:, :1]) / tau)
      w = e / e.sum(1, keepdims=True)
    out[k] = np.einsum("qk,qk...->q...", w, y)
  return out


def select(candidates, error):
  """(best key, {key: error}) of candidates {key: prediction}, by error(prediction), lowest first on ties."""
  scores = {k: float(error(p)) for k, p in candidates.items()}
  return min(scores, key=lambda k: (scores[k], list(scores).index(k))), scores


# ---------------------------------------------------------------------------------------------------------------
# Targets, reconstruction and scoring.
# ---------------------------------------------------------------------------------------------------------------
def targets(feat, size):
  """[N, 21, 3] 2.5-D targets of extracted features (features.extract): uv in [-1, 1] of the crop, z_rel."""
  return np.concatenate([feat["uv"] / size * 2 - 1, feat["z_rel"][..., None]], -1).astype(np.float64)


def score(y, feat, kp, size) -> dict:
  """metrics.summary of 2.5-D predictions y [N, 21, 3] on the labelled rows of `feat`, rebuilt as evaluate does."""
  uv = (y[..., :2] + 1) * (size / 2)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  xyz = keypoints.reconstruct(dict(uv=f32(uv), z_rel=f32(y[..., 2])), f32(feat["K"]), f32(feat["s"]), kp)
  lab = feat["has_xyz"].astype(bool)
  xyz = np.asarray(xyz)
  return metrics.summary(xyz[lab], feat["xyz"][lab], uv[lab], feat["uv"][lab], valid=feat["valid"][lab])


def _rows(feat, mask):
  return {k: v[mask] for k, v in feat.items()}


def probe(train, query, kp, size, ks=KS, lambdas=LAMBDAS, val_fraction=0.2, seed=0, tau=None, center=False) -> dict:
  """The kNN and ridge probes of features.extract outputs: choose on validation ids of `train`, refit, score `query`.

  Returns dict(knn=dict(k, validation, metrics), ridge=dict(lam, validation, metrics), constant=dict(metrics)).
  """
  train = _rows(train, train["has_xyz"].astype(bool))
  if len(train["f"]) < 2:
    raise TrainingError(f"the kNN probe needs at least 2 labelled training images, got {len(train['f'])}")
  y = targets(train, size)
  val = features.split_ids(train["id"], val_fraction, seed)
  fit, held = _rows(train, ~val), _rows(train, val)
  err = lambda p: score(p, held, kp, size)[SELECT]

  ks = sorted({min(int(k), len(fit["f"])) for k in ks})
  k, val_k = select(predict(fit["f"], y[~val], held["f"], ks, tau, center), err)
  ridge_val = {
    lam: features.ridge_predict(features.ridge_fit(fit["f"], y[~val].reshape(-1, 63), lam), held["f"])
    for lam in lambdas
  }
  lam, val_lam = select({lam: p.reshape(-1, 21, 3) for lam, p in ridge_val.items()}, err)

  k_all = min(k, len(train["f"]))
  knn_y = predict(train["f"], y, query["f"], [k_all], tau, center)[k_all]
  ridge_y = features.ridge_predict(features.ridge_fit(train["f"], y.reshape(-1, 63), lam), query["f"]).reshape(
    -1, 21, 3
  )
  const = np.broadcast_to(y.mean(0), (len(query["f"]), 21, 3))
  return dict(
    knn=dict(
      k=int(k_all),
      weighting="uniform" if tau is None else f"softmax(cosine / {tau:g})",
      center=bool(center),
      validation={str(k): v for k, v in val_k.items()},
      metrics=score(knn_y, query, kp, size),
    ),
    ridge=dict(
      lam=float(lam), validation={f"{lam:g}": v for lam, v in val_lam.items()}, metrics=score(ridge_y, query, kp, size)
    ),
    constant=dict(metrics=score(const, query, kp, size)),
    select=SELECT,
    val_fraction=val_fraction,
    train_images=int(len(train["f"])),
    validation_images=int(val.sum()),
  )


# ---------------------------------------------------------------------------------------------------------------
# The tool.
# ---------------------------------------------------------------------------------------------------------------
def run(config, workdir, split="evaluation", limit=None, progress=True, **kwargs) -> dict:
  """Loads config.encoder (random init when empty), extracts features, runs `probe` and writes knn_<split>.*."""
  variables = features.encoder_variables(config, progress)
  train = features.extract(config, variables, "training", progress=progress)
  query = features.extract(config, variables, split, limit=limit, progress=progress)
  if not query["has_xyz"].any():
    raise TrainingError(f"split {split!r} has no 3-D labels to score the kNN probe against")
  size = config.augment.out_size
  result = dict(
    split=split,
    encoder=os.path.abspath(config.encoder) if config.encoder else None,
    data=os.path.abspath(config.data.root),
    images=int(len(query["f"])),
    labelled=int(query["has_xyz"].sum()),
    feature_dim=int(query["f"].shape[1]),
    protocol=dict(
      crop=f"ground-truth keypoints, margin {config.augment.margin:.2f}, {size} px",
      bone=config.keypoints.bone,
      root=config.keypoints.root,
    ),
    **probe(train, query, config.keypoints, size, **kwargs),
  )
  os.makedirs(workdir, exist_ok=True)
  return report.save(result, os.path.join(workdir, f"knn_{split}"), markdown)


def markdown(r) -> str:
  head = "| probe | choice | " + " | ".join(n for n, _ in TABLE) + " | PA-AUC |"
  rows = [head, "|" + "---|" * (len(TABLE) + 3)]
  for name, choice, m in (
    ("kNN", f"k = {r['knn']['k']}, {r['knn']['weighting']}", r["knn"]["metrics"]),
    ("ridge", f"lambda = {r['ridge']['lam']:g}", r["ridge"]["metrics"]),
    ("constant", "training mean target", r["constant"]["metrics"]),
  ):
    rows.append(f"| {name} | {choice} | " + " | ".join(f"{m[k]:.2f}" for _, k in TABLE) + f" | {m['pa_auc']:.3f} |")
  enc = r["encoder"] or "random init"
  val = ", ".join(f"k={k}: {v:.2f}" for k, v in r["knn"]["validation"].items())
  val_r = ", ".join(f"lambda={k}: {v:.2f}" for k, v in r["ridge"]["validation"].items())
  return (
    f"# Probes without an optimiser: {enc}, {r['split']} split\n\n"
    f"{r['labelled']} scored images, {r['train_images']} training images ({r['validation_images']} of them held out "
    f"by id to choose k and lambda by {r['select']}), {r['feature_dim']} features; crop: {r['protocol']['crop']}.\n\n"
    + "\n".join(rows)
    + f"\n\nValidation {r['select']}: {val}; {val_r}.\n"
  )


def _flags(fv, argv):
  cli.config_flag(fv, argv, "probe:MODE[,SIZE] (its data, model and keypoint settings)", default="probe:linear,cpu")
  cli.workdir_flag(fv, "where knn_<split>.json and .md go")
  cli.encoder_flag(fv)
  flags.DEFINE_enum("split", "evaluation", SPLITS, "the split to score", flag_values=fv)
  flags.DEFINE_list("ks", [str(k) for k in KS], "the k to choose from on validation ids", flag_values=fv)
  flags.DEFINE_float(
    "val_fraction", 0.2, "fraction of the training ids held out to choose k and lambda", flag_values=fv
  )
  flags.DEFINE_float("tau", None, "weight neighbours by softmax(cosine / tau) (default: equal weights)", flag_values=fv)
  flags.DEFINE_bool("center", False, "subtract the training features' mean before the cosine", flag_values=fv)
  flags.DEFINE_integer("limit", None, "score the first N images of the split only", lower_bound=1, flag_values=fv)


def main(argv: list[str] | None = None) -> None:
  args = cli.parse(argv, __doc__, _flags)
  try:
    ks = [int(k) for k in args.ks]
  except ValueError:
    ks = []
  if not ks or min(ks) < 1:
    cli.fail(f"--ks={','.join(args.ks)}: expected positive integers, e.g. --ks=1,5,20")
  if not 0 < args.val_fraction < 1:
    cli.fail(f"--val_fraction={args.val_fraction}: expected a fraction in (0, 1)")
  if args.tau is not None and not args.tau > 0:
    cli.fail(f"--tau={args.tau}: expected a positive number")
  with cli.errors(FileNotFoundError):
    r = run(
      cli.with_encoder(args),
      args.workdir,
      args.split,
      args.limit,
      ks=ks,
      val_fraction=args.val_fraction,
      tau=args.tau,
      center=args.center,
    )
  cli.print_report(r)


if __name__ == "__main__":
  main()
