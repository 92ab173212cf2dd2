"""The embedded dataset: procedurally rendered right hands written in exactly the FreiHAND layout.

    peclr-synthetic --out=data/synthetic --train=20000 --eval=1000 --seed=0    # python -m peclr_jax.data.synthetic

writes `training/rgb/%08d.jpg` (224x224), `training/mask/%08d.jpg`, `training_{xyz,K,scale}.json` and the same for
`evaluation`, so `freihand.FreiHand` reads it unchanged. Deterministic by seed: each sample draws from
`default_rng([seed, split, id, version])`, so files are byte-identical whatever the worker count.

The hand (`hand_model`): a 21-joint skeleton (FreiHAND order) with anthropometric bone lengths scaled per sample, a
pose from a gesture's synergies, held in front of a FreiHAND-like camera 0.3-0.8 m away with the palm or the back
towards it and the forearm entering from outside the image (`Style` keeps the older per-joint poses and uniform 3-D
orientations as options). Rendering is deferred and z-buffered at 2x2 supersampling inside the hand's bounding box:
finger segments are round cones (screen-space impostors with 3D normals and depth), the palm is a ray-traced
ellipsoid plus capsules; nails on the backs of the last segments, knuckles, a palm lighter than the back, creases
at the finger joints and across the palm, a skin texture, screen-space self-shadowing, a sleeve or a bare forearm,
an object in a grasp or passing in front. Shading is wrapped Lambert + Blinn-Phong with a per-sample light, skin
tone and colour cast, composited over patterns or photo-like scenes (`backgrounds`). Training images can come in
several *versions* (file index = id + n * v, as FreiHAND's 4): same hand, pose, camera and mask, new background,
light, skin and clothing.
"""

import dataclasses
import fcntl
import functools
import io
import json
import multiprocessing
import os
import time

import numpy as np
from absl import flags
from PIL import Image

from peclr_jax.data import backgrounds
from peclr_jax.data import hand_model as H

SIZE = 224
SS = 2  # supersampling factor per axis
CM = 0.01

SKIN_TONES = (
  np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 135], [198, 134, 99], [160, 102, 70], [120, 74, 52], [92, 56, 40]],
    np.float64,
  )
  / 255.0
)
# Materials of the rendered primitives; skin and nails make the mask.
SKIN, NAIL, SLEEVE, OBJECT = range(4)
HAND_MATERIALS = (SKIN, NAIL)


@dataclasses.dataclass(frozen=True)
class Style:
  """Rendering options; two styles make two data domains (e.g. for cross-dataset studies).

  The defaults are the first renderer's (per-joint poses, uniform 3-D orientations, no cues); `Style.lifelike()`
  holds hands as a camera sees them, with a gesture's pose and the cues a real hand has."""

  distance: tuple[float, float] = (0.3, 0.8)  # metres from the camera to the hand's centroid
  skin: tuple[float, float] = (0.0, 1.0)  # range of the skin-tone palette, light (0) to dark (1)
  backgrounds: tuple[str, ...] = backgrounds.PATTERNS  # some of backgrounds.KINDS
  forearm: float = 0.6  # probability of a forearm (skin, or a sleeve from the cuff on)
  offset: float = 0.08  # max offset of the projected centroid from the centre, fraction of the image
  pose: str = "families"  # one of hand_model.POSE_SAMPLERS
  view: str = "uniform"  # one of hand_model.VIEW_SAMPLERS
  tilt: float = 55.0  # held: the palm normal's largest angle (deg) from the viewing axis
  free: float = 0.1  # held: share of arbitrary 3-D orientations
  sleeve: float = 0.0  # share of forearms in a sleeve
  objects: float = 0.0  # share of images with an object: held in a grasp, else passing in front of the hand
  cues: bool = False  # nails, knuckles, palm lighter than the back, creases, skin texture, self-shadowing
  scenes: int = 0  # photo-like backgrounds: views of this many fixed scenes per kind (0: a new scene per image)

  @staticmethod
  def lifelike(**kw):
    kw = dict(
      dict(
        backgrounds=backgrounds.KINDS,
        forearm=1.0,
        pose="gestures",
        view="held",
        sleeve=0.5,
        objects=0.3,
        cues=True,
        scenes=12,
      ),
      **kw,
    )
    return Style(**kw)


STYLES = {"legacy": Style, "lifelike": Style.lifelike}


@dataclasses.dataclass
class Prim:
  """A primitive to z-buffer: a round cone (p0, p1, r0, r1; a sphere when p0 == p1) or an ellipsoid (centre, axes
  as columns). `palmar` is the unit direction of the hand's palm side there (camera frame). `part` says what of the
  hand it is: FINGER (a proximal or middle segment: creased at both ends on the palm side), TIP (a last segment:
  creased at its base, a nail on its back), PALM (the palm's lines) or 0."""

  kind: str
  args: tuple
  material: int = SKIN
  palmar: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
  part: int = 0


FINGER, TIP, PALM = 1, 2, 3


def sample_hand(rng, style=Style()):
  """Samples a hand: camera-frame joints (m), K, the primitives to draw and what was drawn (gesture, view)."""
  size = rng.uniform(*H.SIZE_RANGE)
  jitter = lambda shape: 1 + rng.uniform(-H.BONE_JITTER, H.BONE_JITTER, shape)
  lengths_f, length_t = H.FINGER_LENGTHS * size * jitter((4, 3)), H.THUMB_LENGTHS * size * jitter(3)
  if style.pose == "families":
    fingers, thumb = H.sample_families(rng)
    gesture = "families"
  else:
    fingers, thumb, gesture = H.sample_gestures(rng)
  local, frames = H.forward_kinematics(fingers, thumb, lengths_f, length_t, size)
  local = local * CM
  radii = H.RADII * size * CM * rng.uniform(0.92, 1.08)
  if style.view == "uniform":
    rot, view = H.random_rotation(rng), "free"
  else:
    rot, view = H.held_rotation(rng, style.tilt, style.free)
  fx = 388.9 * rng.uniform(0.97, 1.03)
  K = np.array(
    [[fx, 0, 112 + rng.uniform(-2, 2)], [0, fx * rng.uniform(0.995, 1.005), 112 + rng.uniform(-2, 2)], [0, 0, 1]]
  )
  z = rng.uniform(*style.distance)
  uv = rng.uniform(-style.offset, style.offset, 2) * SIZE + K[:2, 2]
  centre = np.array([(uv[0] - K[0, 2]) * z / K[0, 0], (uv[1] - K[1, 2]) * z / K[1, 1], z])
  mean = local.mean(0)
  to_cam = lambda p: (p - mean) @ rot.T + centre
  xyz = to_cam(local)
  # Palm frame axes in camera coordinates, for the palm body and the forearm.
  ex, ey, ez = rot[:, 0], rot[:, 1], rot[:, 2]
  s = size * CM
  prims = []
  for f in range(5):
    j = 1 + 4 * f
    for k in range(3):
      palmar = rot @ frames[f, k][:, 2]
      part = (TIP if k == 2 else FINGER) if style.cues else 0
      prims.append(Prim("cone", (xyz[j + k], xyz[j + k + 1], radii[f, k], radii[f, k + 1]), SKIN, palmar, part))
  w = xyz[0]
  wrist_r, wrist_u = w + ex * 1.6 * s, w - ex * 1.9 * s
  palm_r = 1.25 * s
  for p0, p1, r0, r1 in [
    (xyz[5], xyz[17], 1.05 * s, 0.95 * s),  # knuckle row
    (wrist_r, xyz[5], palm_r, 1.05 * s),
    (wrist_u, xyz[17], palm_r, 0.95 * s),
    (wrist_r, wrist_u, 1.3 * s, 1.3 * s),
    (wrist_r, xyz[2], 1.3 * s, radii[0, 1]),  # thenar
  ]:
    prims.append(Prim("cone", (p0, p1, r0, r1), SKIN, ez))
  if style.cues:  # knuckles: bumps on the back of the MCP joints
    for f in range(1, 5):
      j = 1 + 4 * f
      knuckle = xyz[j] - ez * 0.45 * radii[f, 0] + (xyz[j + 1] - xyz[j]) * 0.08
      prims.append(Prim("cone", (knuckle, knuckle, 0.62 * radii[f, 0], 0.62 * radii[f, 0]), SKIN, ez))
  if rng.uniform() < style.forearm:
    prims += _forearm(rng, w, ex, ey, ez, s, style)
  # Palm: an ellipsoid spanning wrist to knuckles (semi-axes radial, distal, palmar).
  centre_p = to_cam(np.array([0.0, 4.6, -0.1]) * s)
  axes = np.stack([ex * 3.8 * s, ey * 4.6 * s, ez * 1.35 * s], 1)
  prims.append(Prim("ellipsoid", (centre_p, axes), SKIN, ez, PALM if style.cues else 0))
  if style.objects and rng.uniform() < style.objects:
    prims.append(_object(rng, gesture, to_cam, ex, ey, ez, s, xyz))
  return dict(xyz=xyz, K=K, prims=prims, gesture=gesture, view=view, rot=rot)


def _forearm(rng, w, ex, ey, ez, s, style):
  """The forearm from the wrist. Held: bent at the wrist, long enough to leave the image, cut before the camera
  plane, in a sleeve from the cuff on when the style has sleeves; uniform views: a short stub in line with the
  palm."""
  start = w - ey * 0.5 * s
  if style.view == "uniform":
    return [Prim("cone", (start, w - ey * rng.uniform(8, 14) * s, 2.1 * s, 2.5 * s), SKIN, ez)]
  bend = H.rotation(0, np.radians(rng.uniform(-35, 35))) @ H.rotation(2, np.radians(rng.uniform(-15, 20)))
  axis = np.stack([ex, ey, ez], 1) @ bend @ np.array([0.0, -1.0, 0.0])
  length = rng.uniform(40, 60)  # cm, scaled by the hand
  end = w + axis * length * s
  near = 0.08  # m: keep the far end in front of the camera
  if end[2] < near:
    end = start + (end - start) * (start[2] - near) / max(start[2] - end[2], 1e-9)
  r0, r1 = 2.1 * s, (2.1 + 0.012 * length) * s
  if not style.sleeve or rng.uniform() >= style.sleeve:
    return [Prim("cone", (start, end, r0, r1), SKIN, ez)]
  t = rng.uniform(0.1, 0.35)  # the cuff, as a share of the arm
  cuff, rc = start + (end - start) * t, r0 + (r1 - r0) * t
  return [Prim("cone", (start, cuff, r0, rc), SKIN, ez), Prim("cone", (cuff, end, 1.3 * rc, 1.3 * r1), SLEEVE, ez)]


def _object(rng, gesture, to_cam, ex, ey, ez, s, xyz):
  """A grasped object (a bar across the palm or a ball) or, for other gestures, a bar passing in front."""
  if gesture == "grasp":
    r = rng.uniform(1.6, 3.6) * s
    c = to_cam(np.array([0.2, 7.8, 0.0]) * s) + ez * (1.3 * s + r)
    if rng.uniform() < 0.5:
      return Prim("cone", (c, c, r, r), OBJECT, -ez)
    half = rng.uniform(5, 10) * s
    return Prim("cone", (c - ex * half, c + ex * half, r, r), OBJECT, -ez)
  # In front: a bar at a random in-plane angle, some centimetres nearer than the hand.
  c = xyz.mean(0) + rng.uniform(-3, 3, 3) * s * [1, 1, 0]
  c[2] -= rng.uniform(3, 8) * s
  ang = rng.uniform(0, np.pi)
  d = np.array([np.cos(ang), np.sin(ang), rng.uniform(-0.3, 0.3)]) * rng.uniform(8, 15) * s
  r = rng.uniform(0.4, 1.5) * s
  return Prim("cone", (c - d, c + d, r, r), OBJECT, np.array([0.0, 0.0, 1.0]))


# ---------------------------------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------------------------------
def _project(p, K):
  return np.array([K[0, 0] * p[0] / p[2] + K[0, 2], K[1, 1] * p[1] / p[2] + K[1, 2]])


def _screen_box(prim, K):
  """(function, low corner, high corner) of a primitive's footprint in supersampled pixels."""
  if prim.kind == "cone":
    p0, p1, r0, r1 = prim.args
    a, b = _project(p0, K) * SS, _project(p1, K) * SS
    ra, rb = K[0, 0] * r0 / p0[2] * SS, K[0, 0] * r1 / p1[2] * SS
    return (_cone, np.minimum(a - ra, b - rb), np.maximum(a + ra, b + rb), (a, b, ra, rb, p0, p1, r0, r1))
  c, axes = prim.args
  corners = c + np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)]) @ axes.T
  pts = np.array([_project(p, K) for p in corners]) * SS
  return (_ellipsoid, pts.min(0), pts.max(0), (c, axes))


def render_geometry(h):
  """Z-buffers the hand at SS x SS supersampling inside its screen box and pools it to output pixels.

  Returns a dict: `box` (output-pixel slices), `normal` (summed unit normals [3][h, w]), `cover` (coverage [h, w]
  in [0, 1]), `materials` (coverage per material [4][h, w]), `palm` (skin coverage weighted by how much the surface
  faces the palm side), `crease` (coverage weighted by crease darkness) and `depth` (each output pixel's nearest
  surface, inf where empty).
  """
  K, n = h["K"], SIZE * SS
  prims = [(_screen_box(p, K), p) for p in h["prims"]]
  # Box snapped to whole output pixels so the supersamples pool exactly.
  lo = np.clip(np.floor(np.min([b[1] for b, _ in prims], 0) / SS) * SS, 0, n).astype(int)
  hi = np.clip(np.ceil((np.max([b[2] for b, _ in prims], 0) + 1) / SS) * SS, 0, n).astype(int)
  x0, y0, x1, y1 = lo[0], lo[1], hi[0], hi[1]
  depth = np.full((y1 - y0, x1 - x0), np.inf, np.float32)
  ids = np.full(depth.shape, -1, np.int16)
  axial = np.zeros(depth.shape, np.float32)  # along a cone: 0 at p0, 1 at p1
  lines = np.zeros(depth.shape, np.float32)  # the palm's creases
  for k, ((fn, plo, phi, args), prim) in enumerate(prims):
    px0, py0 = np.clip(np.floor(plo).astype(int), [x0, y0], [x1, y1])
    px1, py1 = np.clip(np.ceil(phi).astype(int) + 1, [x0, y0], [x1, y1])
    if px1 > px0 and py1 > py0:
      u = np.arange(px0, px1, dtype=np.float32)[None, :] + 0.5
      v = np.arange(py0, py1, dtype=np.float32)[:, None] + 0.5
      win = np.s_[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0]
      z, aux = fn(u, v, K, *args)
      closer = z < depth[win]
      depth[win][closer] = z[closer]
      ids[win][closer] = k
      if prim.kind == "cone":
        axial[win][closer] = aux[closer]
      elif prim.part == PALM:
        lines[win][closer] = _palm_lines(*aux)[closer]
  u = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5) / SS
  v = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5) / SS
  covered = ids >= 0
  normal = depth_normals(np.where(covered, depth, 0), covered, u, v, K)
  table = lambda values, empty: np.take(np.array([*values, empty]), ids)  # id -1: `empty`
  material, part = table([p.material for _, p in prims], -1), table([p.part for _, p in prims], 0)
  # Visible surfaces' normals face the camera, so the palm side is where they point along the palm direction.
  facing = sum(normal[c] * table([np.float32(p.palmar[c]) for _, p in prims], np.float32(0)) for c in range(3))
  material[(part == TIP) & (axial > 0.5) & (facing < -0.6)] = NAIL  # within about 50 deg of the back
  palm = np.clip(0.5 + 2.0 * facing, 0, 1) * (material == SKIN)
  crease = lines + np.exp(-((axial / 0.03) ** 2)) * ((part == FINGER) | (part == TIP))
  crease += np.exp(-(((1 - axial) / 0.03) ** 2)) * (part == FINGER)
  box = np.s_[y0 // SS : y1 // SS, x0 // SS : x1 // SS]
  return dict(
    box=box,
    normal=[_pool(c * covered) for c in normal],
    cover=_pool(covered.astype(np.float32)) / SS**2,
    materials=[_pool((material == m).astype(np.float32)) / SS**2 for m in range(4)],
    palm=_pool(palm) / SS**2,
    crease=_pool(np.minimum(crease, 1) * (palm > 0.3)) / SS**2,
    depth=_pool_min(depth),  # each output pixel's nearest surface, for the per-version shadows
  )


def _palm_lines(qx, qy, qz):
  """Crease darkness in [0, 1] of the palm's three lines, at points of the palm ellipsoid in its unit-sphere
  coordinates (x radial, y distal, z palmar)."""
  lines = np.zeros_like(qx)
  for a, b, lo, hi in ((0.62, 0.1, -1.0, 0.35), (0.33, 0.17, -0.6, 0.75)):  # distal and proximal transverse
    d = np.abs(qy - a - b * qx) / np.sqrt(1 + b * b)
    lines += np.exp(-((d / 0.03) ** 2)) * ((qx > lo) & (qx < hi))
  r = np.sqrt(((qx - 0.85) / 0.55) ** 2 + ((qy + 0.2) / 0.7) ** 2)  # the thenar crease, around the thumb's base
  lines += np.exp(-(((r - 1) * 0.6 / 0.03) ** 2)) * ((qx < 0.85) & (qy > -0.85) & (qy < 0.5))
  return np.minimum(lines, 1) * (qz > 0.2)


def _pool(a):
  """Sums SS x SS blocks."""
  return sum(a[i::SS, j::SS] for i in range(SS) for j in range(SS))


def _pool_min(a):
  return functools.reduce(np.minimum, [a[i::SS, j::SS] for i in range(SS) for j in range(SS)])


def depth_normals(z, covered, u, v, K):
  """Unit camera-frame normals (nx, ny, nz), facing the camera, of the surface z(u, v) seen through K.

  Derivatives take the one-sided difference with the smaller depth step, so silhouettes and the borders between
  overlapping fingers do not bleed into each other.
  """

  def slope(z, covered, axis):
    lo, hi = [slice(None)] * 2, [slice(None)] * 2
    lo[axis], hi[axis] = slice(None, -1), slice(1, None)
    lo, hi = tuple(lo), tuple(hi)
    d = np.where(covered[hi] & covered[lo], (z[hi] - z[lo]) * SS, np.float32(1e9))
    best = np.empty_like(z)
    inner, first, last = [slice(None)] * 2, [slice(None)] * 2, [slice(None)] * 2
    inner[axis], first[axis], last[axis] = slice(1, -1), 0, -1
    best[tuple(inner)] = np.where(np.abs(d[hi]) < np.abs(d[lo]), d[hi], d[lo])
    best[tuple(first)], best[tuple(last)] = d[tuple(first)], d[tuple(last)]
    best[np.abs(best) > 1e8] = 0
    return best

  zu, zv = slope(z, covered, 1), slope(z, covered, 0)
  fx, fy, cx, cy = (float(k) for k in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))  # Python floats keep float32
  xh, yh = (u - cx) / fx, (v - cy) / fy
  # dP/du = (z/fx + x zu, y zu, zu), dP/dv = (x zv, z/fy + y zv, zv); n = dP/dv x dP/du points at the camera.
  a1, a2, a3 = z / fx + xh * zu, yh * zu, zu
  b1, b2, b3 = xh * zv, z / fy + yh * zv, zv
  n = (b2 * a3 - b3 * a2, b3 * a1 - b1 * a3, b1 * a2 - b2 * a1)
  inv = 1 / np.maximum(np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]), 1e-12)
  return [c * inv for c in n]


def _cone(u, v, K, a, b, ra, rb, p0, p1, r0, r1):
  """(depth, axial position: 0 at p0, 1 at p1, beyond them on the end caps) of a round-cone impostor on a pixel
  grid (supersampled px); depth inf outside."""
  # Scalars as Python floats: NumPy 2 would promote float32 arrays to float64 for numpy float64 scalars.
  (ax, ay), (bx, by), ra, rb = a.tolist(), b.tolist(), float(ra), float(rb)
  z0, z1, r0, r1 = float(p0[2]), float(p1[2]), float(r0), float(r1)
  abx, aby = bx - ax, by - ay
  axial = ((u - ax) * abx + (v - ay) * aby) * (1 / max(abx * abx + aby * aby, 1e-6))
  t = np.clip(axial, 0, 1)
  dx, dy = u - (ax + t * abx), v - (ay + t * aby)
  rad = ra + t * (rb - ra)
  s2 = 1 - (dx * dx + dy * dy) / (rad * rad)
  z = z0 + t * (z1 - z0) - (r0 + t * (r1 - r0)) * np.sqrt(np.maximum(s2, 0))
  z[s2 <= 0] = np.inf
  return z, axial


def _ellipsoid(u, v, K, c, axes):
  """(depth of the exact ray-ellipsoid intersection for rays through pixel centres, inf where missed; the hit
  point in the unit-sphere coordinates of the axes)."""
  m = np.linalg.inv(axes)
  o = -m @ c
  oo, o, m = float(o @ o), o.tolist(), m.tolist()  # Python floats keep the arrays float32
  du, dv = (u / SS - float(K[0, 2])) / float(K[0, 0]), (v / SS - float(K[1, 2])) / float(K[1, 1])
  dm = [m[i][0] * du + m[i][1] * dv + m[i][2] for i in range(3)]  # M @ ray direction (ray z = 1)
  qa = dm[0] * dm[0] + dm[1] * dm[1] + dm[2] * dm[2]
  qb = 2 * (dm[0] * o[0] + dm[1] * o[1] + dm[2] * o[2])
  disc = qb * qb - 4 * qa * (oo - 1)
  z = (-qb - np.sqrt(np.maximum(disc, 0))) / (2 * qa)
  z[disc <= 0] = np.inf
  hit = np.where(disc > 0, z, 0)
  return z, tuple(o[i] + hit * dm[i] for i in range(3))


def _shadow(g, light, K):
  """Share of each output pixel that a nearer part of the hand hides from the light (screen-space: a few steps
  from each point towards the light, compared with the depth buffer there)."""
  depth = g["depth"]
  seen = np.isfinite(depth)
  if not seen.any():
    return np.zeros(depth.shape, np.float32)
  zmean = float(depth[seen].mean())
  hidden = np.zeros(depth.shape, bool)
  hh, ww = depth.shape
  for step in (0.006, 0.012, 0.02, 0.03):  # metres along the ray to the light
    dx, dy = (int(round(float(K[i, i]) * step * light[i] / zmean)) for i in (0, 1))
    if abs(dx) >= ww or abs(dy) >= hh:
      continue
    ys, yd = (slice(dy, hh), slice(0, hh - dy)) if dy >= 0 else (slice(0, hh + dy), slice(-dy, hh))
    xs, xd = (slice(dx, ww), slice(0, ww - dx)) if dx >= 0 else (slice(0, ww + dx), slice(-dx, ww))
    hidden[yd, xd] |= depth[ys, xs] < depth[yd, xd] + float(step * light[2] - 0.004)
  return (hidden & seen).astype(np.float32)


def _smooth_noise(rng, shape, cell=3.0):
  """Zero-mean noise of unit scale, smooth over about `cell` pixels (a bilinear upsample of a coarse grid)."""
  h, w = shape
  gh, gw = int(h / cell) + 2, int(w / cell) + 2
  grid = Image.fromarray(rng.normal(0, 1, (gh, gw)).astype(np.float32), mode="F")
  return np.asarray(grid.resize((w, h), Image.BILINEAR, box=(0, 0, w / cell, h / cell)), np.float32)


def _skin_albedo(rng, style):
  tone = rng.uniform(*style.skin) * (len(SKIN_TONES) - 1)
  i = int(min(tone, len(SKIN_TONES) - 2))
  albedo = SKIN_TONES[i] + (tone - i) * (SKIN_TONES[i + 1] - SKIN_TONES[i])
  return np.clip(albedo * rng.uniform(0.92, 1.08, 3), 0, 1).astype(np.float32)


def shade(rng, geom, style, K=None, scenes=None):
  """One appearance of the hand over a new background (photo-like ones from `scenes`, a backgrounds.Scenes):
  rgb uint8 [224, 224, 3].

  Shading runs at output resolution on the pooled normals and materials; the supersampled coverage gives the soft
  edges.
  """
  box, normal, cover = geom["box"], geom["normal"], geom["cover"]
  back = _skin_albedo(rng, style)
  ambient, wrap = float(rng.uniform(0.25, 0.45)), float(rng.uniform(0.2, 0.5))
  light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0.3, 1.2)])  # from the camera side
  light /= np.linalg.norm(light)
  half = light + [0, 0, -1.0]
  half /= np.linalg.norm(half)
  spec_gain, spec_pow = float(rng.uniform(0.05, 0.25)), float(rng.uniform(10, 30))
  light_rgb = (1 + rng.uniform(-0.12, 0.12, 3)).astype(np.float32)
  nx, ny, nz = normal
  lt, hf = light.tolist(), half.tolist()
  inv = 1 / np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-6)
  nx, ny, nz = nx * inv, ny * inv, nz * inv
  ndl = nx * lt[0] + ny * lt[1] + nz * lt[2]
  diffuse = np.clip((ndl + wrap) / (1 + wrap), 0, 1)
  spec = spec_gain * np.clip(nx * hf[0] + ny * hf[1] + nz * hf[2], 0, 1) ** spec_pow
  if style.cues:
    # The palm is lighter and pinker than the back; nails lighter still; creases darker; a fine skin texture.
    palm_tone = np.clip(back + (1 - back) * rng.uniform(0.25, 0.4) + np.array([0.03, -0.01, -0.01]), 0, 1)
    nail = np.clip(0.55 * back + 0.45 * np.array([0.95, 0.82, 0.8]), 0, 1).astype(np.float32)
    mats = geom["materials"]
    inv_cover = 1 / np.maximum(cover, 1e-6)
    w_palm = (geom["palm"] / np.maximum(mats[SKIN], 1e-6))[..., None]
    texture = 0.04 * _smooth_noise(rng, cover.shape, 1.5) + 0.05 * _smooth_noise(rng, cover.shape, 6)
    skin_gain = (1 - 0.3 * geom["crease"] * inv_cover) * (1 + texture) * mats[SKIN] * inv_cover
    skin = (back + w_palm * (palm_tone - back).astype(np.float32)) * skin_gain[..., None]
    sleeve = _palette_colour(rng)  # drawn before its weave
    sleeve = sleeve * ((1 + 0.08 * _smooth_noise(rng, cover.shape, 1.0)) * mats[SLEEVE] * inv_cover)[..., None]
    thing = _palette_colour(rng)
    albedo = skin + sleeve + (mats[NAIL] * inv_cover)[..., None] * nail + (mats[OBJECT] * inv_cover)[..., None] * thing
    spec = spec * (1 + 2 * mats[NAIL] * inv_cover)
    if K is not None:
      diffuse = diffuse * (1 - 0.6 * _shadow(geom, light, K))
  else:
    albedo = back
  rgb = (albedo * (ambient + (1 - ambient) * diffuse[..., None]) + spec[..., None]) * light_rgb
  img = backgrounds.make(rng, style.backgrounds, scenes)
  a = cover[..., None]
  img[box] = (img[box] * (1 - a) + np.clip(rgb, 0, 1) * (255 * a) + 0.5).astype(np.uint8)
  # Global colour cast and gamma (one lookup table per channel), then sensor noise.
  lut = np.clip((np.arange(256) / 255)[:, None] * rng.uniform(0.85, 1.15, 3), 0, 1) ** rng.uniform(0.8, 1.25)
  lut = (lut * 255 + 0.5).astype(np.uint8)
  img = np.array(Image.fromarray(img).point(lut.T.ravel().tolist()))
  k = int(rng.integers(0, 12))  # triangular noise in [-k, k]
  if k and style.cues:  # about the same distribution from one random byte per value
    noise = triangular_table(k)[np.frombuffer(rng.bytes(img.size), np.uint8).reshape(img.shape)]
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
  elif k:
    noise = rng.integers(0, k + 1, (2, *img.shape), dtype=np.int16)
    img = np.clip(img + noise[0] - noise[1], 0, 255).astype(np.uint8)
  return img


def triangular_table(k):
  """[256] int16: a uniform random byte mapped through the inverse CDF of the triangular distribution on
  -k..k (the difference of two uniform integers on 0..k)."""
  cdf = np.cumsum(k + 1 - np.abs(np.arange(-k, k + 1))) / (k + 1) ** 2
  return (np.searchsorted(cdf, (np.arange(256) + 0.5) / 256) - k).astype(np.int16)


def _palette_colour(rng):
  """A clothing or object colour: muted most of the time, sometimes saturated."""
  c = rng.uniform(0.05, 0.9, 3)
  grey = c.mean()
  return np.clip(grey + (c - grey) * rng.uniform(0.2, 1.2), 0, 1).astype(np.float32)


def render(seed, split, id, versions=1, style=Style()):
  """Renders one id: labels, the mask (uint8) and `versions` RGB images (uint8), all from the seed."""
  rng = np.random.default_rng([seed, SPLIT_CODES[split], id])
  h = sample_hand(rng, style)
  geom = render_geometry(h)
  scenes = _scenes(seed, style.scenes) if style.scenes and set(style.backgrounds) & set(backgrounds.PHOTOS) else None
  images = [
    shade(np.random.default_rng([seed, SPLIT_CODES[split], id, v + 1]), geom, style, h["K"], scenes)
    for v in range(versions)
  ]
  mask = np.zeros((SIZE, SIZE), np.uint8)
  hand = sum(geom["materials"][m] for m in HAND_MATERIALS)
  mask[geom["box"]] = (hand * 255 + 0.5).astype(np.uint8)  # visible hand coverage, soft at the edges
  return h["xyz"], h["K"], mask, images


SPLIT_CODES = {"training": 0, "evaluation": 1}


@functools.lru_cache(maxsize=2)
def _scenes(seed, per_kind):
  """The dataset's photo-like scenes, made once per process (each worker makes the same ones)."""
  return backgrounds.Scenes(seed, per_kind)


def _jpeg(array, quality=92):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _render_chunk(args):
  """Renders and writes ids [start, stop) of a split; returns their labels (runs in a worker)."""
  out, split, start, stop, n, seed, versions, style = args
  xyz, K = [], []
  for id in range(start, stop):
    x, k, mask, images = render(seed, split, id, versions, style)
    # Labels are rounded once here so that the scale file is exactly the bone length of the written xyz.
    xyz.append(np.round(x, 6))
    K.append(np.round(k, 4))
    with open(os.path.join(out, split, "mask", f"{id:08d}.jpg"), "wb") as f:
      f.write(_jpeg(mask))
    for v, img in enumerate(images):
      with open(os.path.join(out, split, "rgb", f"{id + n * v:08d}.jpg"), "wb") as f:
        f.write(_jpeg(img))
  return start, np.array(xyz), np.array(K)


def write_split(out, split, n, seed=0, versions=1, style=Style(), workers=None, chunk=64, progress=True):
  """Writes one split of n ids (x versions images) in the FreiHAND layout; returns images/s."""
  from tqdm import tqdm

  for d in ("rgb", "mask"):
    os.makedirs(os.path.join(out, split, d), exist_ok=True)
  jobs = [(out, split, s, min(s + chunk, n), n, seed, versions, style) for s in range(0, n, chunk)]
  xyz, K = np.zeros((n, 21, 3)), np.zeros((n, 3, 3))
  t0 = time.perf_counter()
  workers = workers or os.cpu_count() or 1
  if n * versions < 256:  # starting processes costs more than rendering a few images
    workers = 1
  bar = tqdm(total=n * versions, desc=f"rendering {split}", unit="img", disable=not progress)
  with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool:
    for start, x, k in pool.imap_unordered(_render_chunk, jobs):
      xyz[start : start + len(x)], K[start : start + len(x)] = x, k
      bar.update(len(x) * versions)
  bar.close()
  rate = n * versions / (time.perf_counter() - t0)
  a, b = 9, 10  # FreiHAND's scale bone, middle MCP -> PIP
  scale = np.linalg.norm(xyz[:, a] - xyz[:, b], axis=-1)
  for name, value in (("xyz", xyz), ("K", K), ("scale", scale)):
    with open(os.path.join(out, f"{split}_{name}.json"), "w") as f:
      json.dump(value.tolist(), f)
  return rate


class _Serial:
  """Stands in for a Pool when rendering in-process."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  imap_unordered = staticmethod(map)


MANIFEST = "synthetic.json"


def generate(out, train, eval, seed=0, versions=1, style=Style(), workers=None, progress=True):
  """Writes both splits unless `out` already holds exactly this set (the manifest is written last).

  Processes that start on the same missing set (e.g. a study's parallel runs) take turns on a lock file: the first
  renders, the others then find its manifest.
  """
  spec = dict(
    train=train, eval=eval, seed=seed, versions=versions, style=dataclasses.asdict(style), size=SIZE, format=1
  )
  manifest = os.path.join(out, MANIFEST)

  def done():
    if os.path.exists(manifest):
      with open(manifest) as f:
        return json.load(f).get("spec") == json.loads(json.dumps(spec))
    return False

  if done():
    return False
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise OSError(f"cannot create the synthetic data directory {out!r}: {e}") from e
  with open(os.path.join(out, ".render.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
    if done():
      return False
    if os.path.exists(manifest):
      os.remove(manifest)
    rates = {}
    for split, n, v in (("training", train, versions), ("evaluation", eval, 1)):
      if n:
        rates[split] = write_split(out, split, n, seed, v, style, workers, progress=progress)
    with open(manifest, "w") as f:
      json.dump(dict(spec=spec, images_per_s=rates), f, indent=1)
  return True


STYLE_FLAGS = ("style", "distance", "skin", "backgrounds", "seed", "versions")  # the flags that make a data domain


def _pair(text):
  if text is None:
    return True
  try:
    lo, hi = (float(x) for x in text)
  except (TypeError, ValueError):
    return False
  return lo <= hi


def _flags(fv, argv):
  del argv
  flags.DEFINE_string("out", None, "dataset root to write (FreiHAND layout)", flag_values=fv)
  flags.DEFINE_integer("train", 2000, "training ids", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("eval", 200, "evaluation ids", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("seed", 0, "the dataset's seed (same seed, same bytes)", flag_values=fv)
  flags.DEFINE_integer("versions", 1, "images per training id (FreiHAND has 4)", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("workers", None, "processes (default: all cores)", lower_bound=1, flag_values=fv)
  flags.DEFINE_enum(
    "style", "lifelike", list(STYLES), "the hands and scenes; the flags below change it", flag_values=fv
  )
  flags.DEFINE_list("distance", None, "MIN,MAX metres from the camera (default: the style's)", flag_values=fv)
  flags.DEFINE_list("skin", None, "LIGHT,DARK range of the skin palette, 0-1 (default: the style's)", flag_values=fv)
  flags.DEFINE_list(
    "backgrounds", None, f"some of {','.join(backgrounds.KINDS)} (default: the style's)", flag_values=fv
  )
  flags.DEFINE_bool("force", False, "rewrite even if the same set is already there", flag_values=fv)
  for name, what in (("distance", "MIN,MAX"), ("skin", "LIGHT,DARK")):
    flags.register_validator(
      name, _pair, f"expected two numbers {what} with {what.split(',')[0]} <= {what.split(',')[1]}", flag_values=fv
    )
  flags.register_validator(
    "backgrounds",
    lambda v: v is None or (bool(v) and set(v) <= set(backgrounds.KINDS)),
    f"expected some of {', '.join(backgrounds.KINDS)}",
    flag_values=fv,
  )


def main(argv: list[str] | None = None) -> None:
  from peclr_jax import cli  # not at the top: spawned render workers import this module, and need no jax

  args = cli.parse(argv, __doc__, _flags, required=("out",))
  changes = dict(distance=args.distance, skin=args.skin, backgrounds=args.backgrounds)
  changes = {k: tuple(float(x) for x in v) if k != "backgrounds" else tuple(v) for k, v in changes.items() if v}
  style = STYLES[args.style](**changes)
  if args.force and os.path.exists(os.path.join(args.out, MANIFEST)):
    os.remove(os.path.join(args.out, MANIFEST))
  t0 = time.perf_counter()
  with cli.errors(OSError):
    wrote = generate(args.out, args.train, args.eval, args.seed, args.versions, style, args.workers)
  print(
    f"{'wrote' if wrote else 'already there'}: {args.out} ({args.train} x {args.versions} training, "
    f"{args.eval} evaluation, {args.style} style) in {time.perf_counter() - t0:.1f} s"
  )


if __name__ == "__main__":
  main()
