"""Equivariance and invariance of a frozen encoder, measured on its features directly (no keypoint head).

  peclr-equivariance --encoder=runs/peclr_cpu --workdir=runs/equi_peclr     # python -m peclr_jax.equivariance
  peclr-equivariance --workdir=runs/equi_random [--config=probe:linear,cpu]  # no encoder: random init

For each transformation (augment.OPS names: rotate, crop, scale, color_jitter), every held-out image (the
evaluation split) gets `repeats` pairs of views that differ only in that transformation: both views are
augment.py's own sampling and warping with only that op on (the other ops at identity), each view with its own
parameters, randomness fold_in(seed, step). Per transformation:
* R^2: a ridge regressor from the pair's features [f1, f2] (concatenated: the difference f2 - f1 is one linear map
  of it, and the pair's absolute parameters stay readable) to the relative parameter of view 2 to view 1
  (objectives.relative_targets): rotation as cos and sin of the wrapped angle difference, crop as the jitter
  difference in fractions of the crop (x, y), scale as the log margin ratio, colour as the four sampler
  differences over their widths. The penalty is chosen on a validation part of the fitting images, the fit is
  scored on other images (split by id): R^2 per target and their mean; 1 = the pair's features encode the
  change linearly, 0 = no better than the mean. A linear readout sees what is linear in [f1, f2]: cos of the
  angle is even in it and, for features that turn with the image, bilinear in the two views, so it can stay low
  where sin (about the angle itself over +-45 deg) is high; `--pair=product` adds f1 * f2 for such terms.
* invariance: the mean cosine similarity of the two views' features; 1 = the features do not change. Beside it,
  `different_images`: the same similarity between views of two different images, the scale on which to read it
  (pooled ReLU features are far from orthogonal even for unrelated images).
SimCLR's objective asks for invariance to every augmentation; PeCLR's and the relative objective's for
equivariance to rotation and translation (and, by the config, scale or colour).

Writes equivariance.json and equivariance.md to the workdir.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from tqdm import tqdm

from peclr_jax import augment, cli, features, inputs, models, objectives, report
from peclr_jax.errors import TrainingError

TRANSFORMS = ("rotate", "crop", "scale", "color_jitter")
TARGETS = {
  "rotate": ("cos", "sin"),
  "crop": ("dx", "dy"),
  "scale": ("log_ratio",),
  "color_jitter": ("hue", "saturation", "gain", "bias"),
}
PAIRS = ("concat", "diff", "product")
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
SPLITS = ("evaluation", "training")


def relative(name, v1, v2):
  """[B, k] relative parameter of view 2 to view 1 for transformation `name` (names in TARGETS[name])."""
  t = objectives.relative_targets(v2, v1, (name,))[name]
  if name == "rotate":
    return jnp.concatenate([jnp.cos(t), jnp.sin(t)], -1)
  return t


def pairs(
  config,
  variables,
  split="evaluation",
  repeats=4,
  seed=0,
  transforms=TRANSFORMS,
  batch_size=50,
  limit=None,
  progress=False,
) -> dict:
  """{transformation: dict(f1 [N, D], f2 [N, D], y [N, k], id [N])} over `repeats` passes of the split's images."""
  enc = models.encoder(config.model)
  cfgs = {}
  for t in transforms:
    c = config.augment.copy_and_resolve_references()
    with c.unlocked():
      c.ops = (t,)
    cfgs[t] = c
  base = jax.random.key(seed)

  @jax.jit
  def run(batch, step):
    key = jax.random.fold_in(base, step)
    xs, ys = [], []
    for i, t in enumerate(transforms):
      (x1, _, _, p1, g1), (x2, _, _, p2, g2) = augment.views(jax.random.fold_in(key, i), batch, cfgs[t])
      xs += [x1, x2]
      ys.append(relative(t, {**g1, **p1}, {**g2, **p2}))
    f = enc.apply(variables, jnp.concatenate(xs), train=False).astype(jnp.float32)
    return f.reshape(len(transforms), 2, batch["image"].shape[0], -1), ys

  src = inputs.source(config.data, split)
  out = {t: dict(f1=[], f2=[], y=[], id=[]) for t in transforms}
  step = 0
  total = repeats * (len(src) if limit is None else min(limit, len(src)))
  with tqdm(total=total, desc=f"view pairs {split}", disable=not progress) as bar:
    for _ in range(repeats):
      for b, n in features.batches(config, src, batch_size, limit):
        f, ys = jax.device_get(run({k: b[k] for k in features.EXTRACT_KEYS}, step))
        for i, t in enumerate(transforms):
          for k, v in (("f1", f[i, 0]), ("f2", f[i, 1]), ("y", ys[i]), ("id", b["id"])):
            out[t][k].append(np.asarray(v)[:n])
        step += 1
        bar.update(n)
  return {t: {k: np.concatenate(v) for k, v in d.items()} for t, d in out.items()}


def r2(y, pred):
  """[T] coefficient of determination per column: 1 - SS_res / SS_tot about the column's own mean."""
  y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
  tot = ((y - y.mean(0)) ** 2).sum(0)
  return 1 - ((y - pred) ** 2).sum(0) / np.maximum(tot, 1e-300)


def cosine(a, b):
  """[N] cosine similarity of the rows of a and b (0 for a zero row)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
  return (a * b).sum(-1) / np.maximum(na * nb, 1e-300)


def invariance(f1, f2) -> float:
  """Mean cosine similarity of the two views' features."""
  return float(cosine(f1, f2).mean())


def pair_features(f1, f2, pair="concat"):
  """The regressor's input: [f1, f2], f2 - f1, or [f1, f2, f1 * f2] (product: also the symmetric bilinear terms, such
  as cos of the angle between two views' features that rotate with the image)."""
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  if pair == "concat":
    return np.concatenate([f1, f2], -1)
  if pair == "diff":
    return f2 - f1
  if pair == "product":
    return np.concatenate([f1, f2, f1 * f2], -1)
  raise ValueError(f"pair must be one of {', '.join(PAIRS)}, got {pair!r}")


def score(
  f1, f2, y, ids, names=None, pair="concat", lambdas=LAMBDAS, test_fraction=0.5, val_fraction=0.25, seed=0
) -> dict:
  """R^2 (held-out ids) of the ridge readout of the relative parameter y [N, k], and the invariance of (f1, f2)."""
  x = pair_features(f1, f2, pair)
  y = np.asarray(y, np.float64).reshape(len(x), -1)
  names = names or [str(i) for i in range(y.shape[1])]
  test = features.split_ids(ids, test_fraction, seed)
  fit_x, fit_y, fit_ids = x[~test], y[~test], np.asarray(ids)[~test]
  val = features.split_ids(fit_ids, val_fraction, seed + 1)
  val_r2 = {}
  for lam in lambdas:
    m = features.ridge_fit(fit_x[~val], fit_y[~val], lam)
    val_r2[lam] = float(r2(fit_y[val], features.ridge_predict(m, fit_x[val])).mean())
  lam = max(val_r2, key=lambda k: (val_r2[k], -list(val_r2).index(k)))
  per = r2(y[test], features.ridge_predict(features.ridge_fit(fit_x, fit_y, lam), x[test]))
  other = np.roll(np.asarray(f1), 1, 0)  # the next image's view: a different image (ids repeat only across passes)
  return dict(
    r2=float(per.mean()),
    r2_per_target=dict(zip(names, map(float, per), strict=True)),
    lam=float(lam),
    validation_r2={f"{k:g}": v for k, v in val_r2.items()},
    invariance=invariance(f1, f2),
    different_images=invariance(f1, other),
    pairs=int(len(x)),
    test_pairs=int(test.sum()),
  )


def measure(
  config, split="evaluation", repeats=4, seed=0, pair="concat", transforms=TRANSFORMS, limit=None, progress=False
) -> dict:
  """Loads config.encoder (random init when empty) and scores every transformation; see the module doc."""
  variables = features.encoder_variables(config, progress)
  data = pairs(config, variables, split, repeats, seed, transforms, limit=limit, progress=progress)
  n_ids = len(np.unique(next(iter(data.values()))["id"]))
  if n_ids < 4:
    raise TrainingError(
      f"split {split!r} has {n_ids} images; the equivariance measure needs at least 4 (fit and test ids)"
    )
  a = config.augment
  ranges = dict(
    rotate=f"angle ~ U[-{a.rotate_deg:g}, {a.rotate_deg:g}] deg",
    crop=f"jitter ~ U[{'0' if a.jitter_mode == 'reference' else f'-{a.jitter:g}'}, {a.jitter:g}] of the crop",
    scale=f"margin ~ U[{a.scale_range[0]:g}, {a.scale_range[1]:g}]",
    color_jitter=f"hue x U{tuple(a.hue)}, sat x U{tuple(a.sat)}, value x U{tuple(a.value_gain)} "
    f"+ U{tuple(a.value_bias)}",
  )
  return dict(
    encoder=os.path.abspath(config.encoder) if config.encoder else None,
    data=os.path.abspath(config.data.root),
    split=split,
    images=int(n_ids),
    repeats=int(repeats),
    seed=int(seed),
    pair=pair,
    crop=f"ground-truth keypoints, margin {a.margin:g} (scale: sampled), {a.out_size} px",
    transforms={
      t: dict(parameters=ranges[t], **score(d["f1"], d["f2"], d["y"], d["id"], TARGETS[t], pair, seed=seed))
      for t, d in data.items()
    },
  )


def markdown(r) -> str:
  rows = [
    "| transformation | parameters | R^2 (mean) | R^2 per target | invariance | different images |",
    "|---|---|---|---|---|---|",
  ]
  for t, s in r["transforms"].items():
    per = ", ".join(f"{k} {v:.2f}" for k, v in s["r2_per_target"].items())
    rows.append(
      f"| {t} | {s['parameters']} | {s['r2']:.3f} | {per} | {s['invariance']:.3f} | {s['different_images']:.3f} |"
    )
  return (
    f"# Equivariance: {r['encoder'] or 'random init'}, {r['split']} split\n\n"
    f"{r['images']} images x {r['repeats']} pairs per transformation; ridge on the pair's features ({r['pair']}), "
    f"R^2 on held-out images; invariance = mean cosine of the two views' features; crop: {r['crop']}.\n\n"
    + "\n".join(rows)
    + "\n"
  )


def table(results: dict) -> str:
  """One markdown table for several encoders ({name: measure(...)}): R^2 and invariance per transformation."""
  ts = list(next(iter(results.values()))["transforms"])
  head = "| encoder | " + " | ".join(f"{t} R^2 | {t} inv." for t in ts) + " |"
  rows = [head, "|---|" + "---|---|" * len(ts)]
  for name, r in results.items():
    s = r["transforms"]
    rows.append(f"| {name} | " + " | ".join(f"{s[t]['r2']:.3f} | {s[t]['invariance']:.3f}" for t in ts) + " |")
  return "\n".join(rows) + "\n"


def run(config, workdir, progress=True, **kwargs) -> dict:
  r = measure(config, progress=progress, **kwargs)
  os.makedirs(workdir, exist_ok=True)
  return report.save(r, os.path.join(workdir, "equivariance"), markdown)


def _flags(fv, argv):
  cli.config_flag(fv, argv, "probe:MODE[,SIZE] (its data, model and augmentation ranges)", default="probe:linear,cpu")
  cli.workdir_flag(fv, "where equivariance.json and .md go")
  cli.encoder_flag(fv)
  flags.DEFINE_enum("split", "evaluation", SPLITS, "the held-out images", flag_values=fv)
  flags.DEFINE_integer("repeats", 4, "pairs per image and transformation", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("seed", 0, "the views' randomness", flag_values=fv)
  flags.DEFINE_enum(
    "pair", "concat", PAIRS, "the regressor's input: [f1, f2], f2 - f1 or [f1, f2, f1 * f2]", flag_values=fv
  )
  flags.DEFINE_list("transforms", list(TRANSFORMS), "the transformations to measure", flag_values=fv)
  flags.DEFINE_integer("limit", None, "use the first N images of the split only", lower_bound=1, flag_values=fv)


def main(argv: list[str] | None = None) -> None:
  args = cli.parse(argv, __doc__, _flags)
  bad = [t for t in args.transforms if t not in TRANSFORMS]
  if bad or not args.transforms:
    cli.fail(f"--transforms={','.join(args.transforms)}: expected some of {', '.join(TRANSFORMS)}")
  with cli.errors(FileNotFoundError):
    r = run(
      cli.with_encoder(args),
      args.workdir,
      split=args.split,
      repeats=args.repeats,
      seed=args.seed,
      pair=args.pair,
      transforms=tuple(args.transforms),
      limit=args.limit,
    )
  cli.print_report(r)


if __name__ == "__main__":
  main()
