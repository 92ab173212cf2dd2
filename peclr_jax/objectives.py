"""Self-supervised objectives (reference §1): NT-Xent, PeCLR latent inversion, relative regression, mixing.

How each transformation is treated is chosen per transformation, not per run:
* **invariant**: any augmentation that no objective undoes (colour, blur, noise, and geometric ones left out of
  `transforms`). Both views get independent parameters, so plain NT-Xent learns invariance to it.
* **equivariant**: geometric augmentations named in `peclr_loss(..., transforms=...)` are undone in latent space
  before NT-Xent ("translate", "rotate", and the "scale" extension).
* **relative**: a head per transformation regresses view1 − view2 (`relative_targets`, `relative_loss`).
A hybrid run adds the scalars with `combine`; e.g. invariant colour, equivariant rotation/translation, a rotation head:

  losses = {"peclr": peclr_loss(z1, z2, geo1, geo2, transforms=("translate", "rotate")),
            "relative": relative_loss(preds, relative_targets(p1, p2, ("rotate",)), log_sigma)[0]}
  loss = combine(losses, {"relative": 0.1})

Geometry conventions follow the augmentation module's per-view `geo` dict ([B]-leading arrays):
* `angle`: radians, the rotation applied to the image in OpenCV's getRotationMatrix2D convention (x right, y down):
  x' = α(x−c_x) + β(y−c_y) + c_x, y' = −β(x−c_x) + α(y−c_y) + c_y, α = cos, β = sin.
* `jitter_px` [B, 2]: the crop-origin shift in input pixels, origin = centred origin + jitter_px, so the hand moves by
  −jitter_px in the crop. (The reference stores c − side − origin = −jitter_px and undoes P − stored/128·r, which is
  the same latent shift as P + jitter_px/128·r here.)
* `side`: crop side in input pixels; `margin`: crop margin (hand radius × margin = crop half side in the reference).
* `color` [B, 4]: (hue factor, sat factor, value gain, value bias).
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

OBJECTIVES = ("simclr", "peclr", "relative", "hybrid")  # config.objective; hybrid = PeCLR + relative heads
REFERENCE_MARGIN = 1.25  # the reference's fixed crop margin; `scale` maps every view to it
# Widths of the reference colour samplers (hue, sat ∈ [0.01, 1], gain ∈ [0.5, 1], bias ∈ [5, 20] on the uint8
# scale): dividing by them puts every colour target in [−1, 1], so the bias term no longer dominates the L1.
COLOR_SCALE = (1.0, 1.0, 0.5, 15.0)
# Output size of each relative head (the wrapped angle is one number; see `relative_targets`).
RELATIVE_DIMS = {"rotate": 1, "translate": 2, "crop": 2, "scale": 1, "random_crop": 1, "color_jitter": 4}
# Reference flag names -> canonical names ("crop" is the jittered crop, "random_crop" samples the margin).
_ALIAS = {"crop": "translate", "random_crop": "scale"}
_GEOMETRIC = ("translate", "rotate", "scale")
PECLR_TRANSFORMS = (*_GEOMETRIC, *_ALIAS)  # config.peclr.transforms
TRANSLATION_NORMS = ("reference", "crop")  # config.peclr.translation_norm
RELATIVE_TRANSFORMS = tuple(RELATIVE_DIMS)  # config.relative.transforms


def _canon(transforms: Sequence[str], allowed: Sequence[str]) -> frozenset[str]:
  names = frozenset(_ALIAS.get(t, t) for t in transforms)
  if bad := names - set(allowed):
    raise ValueError(f"unknown transforms {sorted(bad)}; expected a subset of {list(allowed)} (or {list(_ALIAS)})")
  return names


def _f32(x):
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))  # at least float32; float64 stays float64


def l2_normalize(x, axis=-1, eps=1e-12):
  """x / max(||x||, eps): finite value and gradient at x = 0."""
  x = _f32(x)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis, keepdims=True), eps * eps))


def wrap_angle(a):
  """Wraps radians into (−π, π]."""
  return jnp.pi - jnp.mod(jnp.pi - a, 2 * jnp.pi)


# ---------------------------------------------------------------------------------------------------------------------
# NT-Xent


def _nt_xent(z1, z2, temperature):
  b = z1.shape[0]
  z = l2_normalize(jnp.concatenate([z1, z2]))
  logits = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST) / temperature
  logits = jnp.where(jnp.eye(2 * b, dtype=bool), -jnp.inf, logits)  # only the self-similarity is excluded
  labels = (jnp.arange(2 * b) + b) % (2 * b)  # row i's positive is row i ± B
  pos = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos)


def nt_xent(z1, z2, temperature=0.5, groups=1):
  """SimCLR NT-Xent as the reference computes it (§1.1); z1, z2 [B, D], rows L2-normalised here.

  Denominator over the 2B−1 other rows (positive included), mean over all 2B anchors, float32 logits. `groups` > 1
  splits the batch into that many contiguous chunks, each its own set of negatives, and averages the chunk losses:
  the reference's per-micro-batch loss (§1.4; 16 chunks of 128) in one pass. groups=1 contrasts the global batch.
  """
  b = z1.shape[0]
  if z2.shape != z1.shape or b % groups:
    raise ValueError(f"z1 {z1.shape} and z2 {z2.shape} must match, with B divisible by groups={groups}")
  if groups == 1:
    return _nt_xent(z1, z2, temperature)
  split = lambda z: z.reshape(groups, b // groups, *z.shape[1:])
  return jnp.mean(jax.vmap(_nt_xent, (0, 0, None))(split(z1), split(z2), temperature))


# ---------------------------------------------------------------------------------------------------------------------
# PeCLR


def _undo_points(p, angle, jitter, side, margin, transforms, translation_norm, out_size, reference_margin):
  """Undoes one view's geometry on a point cloud p [N, 2] (already normalised): un-shift, then un-scale/un-rotate.

  The image pipeline is rotate → crop (scale about the hand, then shift) → resize, so the inverse un-shifts first.
  Extent and centroid are constants (stop_gradient) as in the reference: gradients flow only through the points.
  """
  if "translate" in transforms:
    r = jax.lax.stop_gradient(p.max(0) - p.min(0))  # per-axis extent: the latent stand-in for the image size
    norm = out_size if translation_norm == "reference" else side
    p = p + jitter / norm * r  # the hand moved by −jitter in the crop, so move it back by +jitter
  if transforms & {"rotate", "scale"}:
    c = jax.lax.stop_gradient(p.mean(0))  # taken after the translation step
    q = p - c
    if "scale" in transforms:
      # A larger margin makes the hand smaller (∝ 1/margin) in the crop, so enlarging by margin / reference_margin
      # maps every view to the hand size of the reference margin. Scaling and rotating about c commute.
      q = q * (margin / reference_margin)
    if "rotate" in transforms:
      a, b = jnp.cos(-angle), jnp.sin(-angle)  # rotate by −angle, image convention
      q = jnp.stack([a * q[:, 0] + b * q[:, 1], -b * q[:, 0] + a * q[:, 1]], -1)
    p = q + c
  return p


def peclr_undo(
  z,
  angle,
  jitter_px,
  side,
  margin,
  transforms=("translate", "rotate"),
  translation_norm="reference",
  out_size=128,
  reference_margin=REFERENCE_MARGIN,
):
  """Inverts one view's geometric augmentation in latent space (PeCLR, reference §1.2); z [B, D] -> [B, D].

  z is L2-normalised, read as D/2 points (z[2i], z[2i+1]), then (in this order) for each name in `transforms`:
  "translate" (alias "crop"): P += jitter_px / norm · r, r = per-axis extent of P, norm = `out_size` for
    translation_norm="reference" (the reference's jitter/128 quirk) or the view's `side` for "crop" (jitter as a
    fraction of the crop, consistent across crop sizes);
  "scale" (alias "random_crop"; an extension, reference issue #3): P = c + (P − c) · margin / reference_margin;
  "rotate": P = c + rot(−angle)(P − c) in the image convention; c = centroid after the translation step.
  The result is flattened and L2-normalised again. Arguments a transform does not use may be None.
  """
  transforms = _canon(transforms, _GEOMETRIC)
  if translation_norm not in TRANSLATION_NORMS:
    raise ValueError(f"translation_norm must be one of {TRANSLATION_NORMS}, got {translation_norm!r}")
  z = _f32(z)
  b, d = z.shape
  if d % 2:
    raise ValueError(f"latent size must be even, got {d}")
  need = {
    "angle": "rotate" in transforms,
    "jitter_px": "translate" in transforms,
    "side": "translate" in transforms and translation_norm == "crop",
    "margin": "scale" in transforms,
  }
  args = {
    "angle": (angle, (b,), 0.0),
    "jitter_px": (jitter_px, (b, 2), 0.0),
    "side": (side, (b,), 1.0),
    "margin": (margin, (b,), reference_margin),
  }
  vals = []
  for k, (v, shape, default) in args.items():
    if v is None and need[k]:
      raise ValueError(f"{k} is required for transforms={sorted(transforms)}, translation_norm={translation_norm!r}")
    vals.append(jnp.full(shape, default, z.dtype) if v is None else jnp.broadcast_to(_f32(v), shape))

  def one(z, angle, jitter, side, margin):
    p = l2_normalize(z).reshape(d // 2, 2)
    p = _undo_points(p, angle, jitter, side, margin, transforms, translation_norm, out_size, reference_margin)
    return l2_normalize(p.reshape(d))

  return jax.vmap(one)(z, *vals)


def peclr_loss(
  z1,
  z2,
  geo1,
  geo2,
  temperature=0.5,
  transforms=("translate", "rotate"),
  translation_norm="reference",
  out_size=128,
  reference_margin=REFERENCE_MARGIN,
  groups=1,
):
  """NT-Xent of the two views after `peclr_undo`; geo1, geo2 are the views' geo dicts (keys as in the module doc)."""
  undo = lambda z, g: peclr_undo(
    z,
    g.get("angle"),
    g.get("jitter_px"),
    g.get("side"),
    g.get("margin"),
    transforms,
    translation_norm,
    out_size,
    reference_margin,
  )
  return nt_xent(undo(z1, geo1), undo(z2, geo2), temperature, groups)


# ---------------------------------------------------------------------------------------------------------------------
# Relative (transformation regression) and mixing


def _get(p: Mapping, key: str):
  """p[key], also looking one level down (a view's {"geo": ..., "params": ...} or a geo dict holding "params")."""
  if key in p:
    return p[key]
  for v in p.values():
    if isinstance(v, Mapping) and key in v:
      return v[key]
  raise KeyError(f"{key!r} not found in view parameters with keys {list(p)}")


def relative_targets(p1: Mapping, p2: Mapping, transforms: Sequence[str], color_scale=COLOR_SCALE) -> dict:
  """Regression targets view1 − view2 per transformation name (as given) -> [B, k] float32 (reference §1.3).

  "rotate" (k=1): wrap(θ1 − θ2) in radians, in (−π, π] (the reference's (Δ° mod 360) jumps from 0 to 359 at −1°).
  "translate"/"crop" (k=2): jitter_px1/side1 − jitter_px2/side2, the jitter as a fraction of each crop (reference:
    raw pixel differences, which depend on the image size).
  "scale"/"random_crop" (k=1): log(m1/m2) (reference: m1/m2). Zero for equal margins and antisymmetric in the views,
    so swapping the views negates the target, as for the other heads.
  "color_jitter" (k=4): (colour1 − colour2) / color_scale, default the sampler widths so each target is in [−1, 1]
    (reference: raw differences, dominated by the value bias ∈ ±15). Pass color_scale=1 for raw differences.
  p1, p2: per-view mappings holding angle, jitter_px, side, margin, color (e.g. {**geo, **params}).
  """
  allowed = ("translate", "rotate", "scale", "color_jitter")
  _canon(transforms, allowed)
  g = lambda k: (_f32(_get(p1, k)), _f32(_get(p2, k)))
  out = {}
  for name in transforms:
    t = _ALIAS.get(name, name)
    if t == "rotate":
      a1, a2 = g("angle")
      out[name] = wrap_angle(a1 - a2)[:, None]
    elif t == "translate":
      (j1, j2), (s1, s2) = g("jitter_px"), g("side")
      out[name] = j1 / s1[:, None] - j2 / s2[:, None]
    elif t == "scale":
      m1, m2 = g("margin")
      out[name] = jnp.log(m1 / m2)[:, None]
    else:
      c1, c2 = g("color")
      out[name] = (c1 - c2) / jnp.asarray(color_scale, c1.dtype)
  return out


def uncertainty_weighting(losses: Mapping, log_sigma: Mapping):
  """Σ_k L_k / exp(s_k) + s_k with s_k = log σ_k learnable per head (Kendall-style, σ not σ²); optimum s_k = log L_k."""
  return sum(_f32(l) * jnp.exp(-_f32(log_sigma[k])) + _f32(log_sigma[k]) for k, l in losses.items())


def relative_loss(preds: Mapping, targets: Mapping, log_sigma: Mapping):
  """Per-head L1 (mean |target − pred|) and their uncertainty-weighted total -> (total, {name: L1}).

  The rotation head's error is the wrapped difference, so predicting 179° for −179° costs 2°, not 358°.
  """
  losses = {}
  for k, t in targets.items():
    err = _f32(preds[k]) - _f32(t)
    if _ALIAS.get(k, k) == "rotate":
      err = wrap_angle(err)
    losses[k] = jnp.mean(jnp.abs(err))
  return uncertainty_weighting(losses, log_sigma), losses


def combine(losses: Mapping, weights: Mapping | None = None):
  """Σ_k w_k · L_k over `losses`; a name missing from `weights` gets weight 1 (unknown weight names are an error)."""
  weights = weights or {}
  if extra := set(weights) - set(losses):
    raise ValueError(f"weights for absent losses {sorted(extra)}")
  return sum(weights.get(k, 1.0) * _f32(l) for k, l in losses.items())
