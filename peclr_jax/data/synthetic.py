"""The embedded dataset: procedurally rendered right hands written in exactly the FreiHAND layout.

    peclr-synthetic --out=data/synthetic --train=20000 --eval=1000 --seed=0    # python -m peclr_jax.data.synthetic

writes `training/rgb/%08d.jpg` (224x224), `training/mask/%08d.jpg`, `training_{xyz,K,scale}.json` and the same for
`evaluation`, so `freihand.FreiHand` reads it unchanged. Deterministic by seed: each sample draws from
`default_rng([seed, split, id, version])`, so files are byte-identical whatever the worker count.

The hand: a 21-joint skeleton (FreiHAND order) with anthropometric bone lengths scaled per sample, joint angles
inside per-joint limits, poses from a mix of open / fist / pinch / point / uniform, a uniform random 3D rotation
and a distance of 0.3-0.8 m in front of a FreiHAND-like camera. Rendering is deferred and z-buffered at 2x2
supersampling inside the hand's bounding box: finger segments are round cones (screen-space impostors with 3D
normals and depth), the palm is a ray-traced ellipsoid plus capsules, shading is wrapped Lambert + Blinn-Phong
with a per-sample light, skin tone and colour cast, composited over gradient / noise / shape / clutter
backgrounds. Training images can come in several *versions* (file index = id + n * v, as FreiHAND's 4): same
hand and mask, new background, light and skin.
"""

import dataclasses
import fcntl
import io
import json
import multiprocessing
import os
import time

import numpy as np
from absl import flags
from PIL import Image, ImageDraw, ImageFilter

SIZE = 224
SS = 2  # supersampling factor per axis
CM = 0.01

# ---------------------------------------------------------------------------------------------------------------
# The hand model (palm frame, cm: x radial / thumb side, y distal, z palmar; a right-handed frame = a right hand).
# ---------------------------------------------------------------------------------------------------------------
# MCP joints of index, middle, ring, little and the thumb's CMC (FreiHAND joint 1).
FINGER_BASES = np.array([[2.4, 8.6, 0.0], [0.5, 8.9, 0.0], [-1.3, 8.4, 0.0], [-3.0, 7.6, 0.0]])
THUMB_BASE = np.array([2.2, 2.8, 0.9])
# Joint-centre distances (cm) MCP->PIP->DIP->tip; thumb CMC->MCP->IP->tip (middle MCP->PIP is the `scale` bone).
FINGER_LENGTHS = np.array([[3.9, 2.3, 2.0], [4.3, 2.7, 2.2], [4.0, 2.6, 2.2], [3.2, 1.9, 1.9]])
THUMB_LENGTHS = np.array([4.0, 3.1, 2.6])
# Radii (cm) at the 4 joints of each finger, thumb first (FreiHAND finger order).
RADII = np.array(
  [
    [1.35, 1.05, 0.92, 0.8],
    [0.98, 0.86, 0.76, 0.7],
    [1.02, 0.9, 0.78, 0.72],
    [0.95, 0.83, 0.74, 0.68],
    [0.85, 0.73, 0.66, 0.6],
  ]
)
FAN = np.radians([8.0, 0.0, -8.0, -17.0])  # rest direction of each finger, about the palm normal
SPREAD_SIGN = np.array([-1.0, 1.0, 1.0, 1.0])  # positive abduction spreads away from the middle finger
# Thumb rest frame: swing the distal axis 50 deg radially, then pronate -60 deg so flexion sweeps across the palm.
THUMB_SWING, THUMB_PRONATION = np.radians(-50.0), np.radians(-60.0)

# Joint limits in degrees: per finger [abduction, MCP, PIP, DIP]; thumb [CMC abduction, CMC flexion, MCP, IP].
FINGER_LIMITS = np.array([[-20, 20], [-15, 90], [0, 110], [-5, 80]], np.float64)
THUMB_LIMITS = np.array([[-15, 45], [-15, 60], [-10, 60], [-15, 80]], np.float64)
SIZE_RANGE = (0.85, 1.15)  # global hand size factor
BONE_JITTER = 0.04  # extra per-bone length variation (fraction)

# Pose families: (low, high) in degrees for [abd, mcp, pip, dip] (fingers) and thumb [abd, cmc, mcp, ip].
POSES = {
  "open": ([[-5, 15], [-10, 20], [0, 25], [0, 15]], [[10, 45], [-10, 15], [-5, 20], [-10, 20]]),
  "fist": ([[-5, 5], [65, 90], [80, 110], [40, 80]], [[-10, 10], [30, 60], [30, 60], [20, 60]]),
  "pinch": ([[-5, 5], [25, 50], [35, 70], [20, 50]], [[10, 30], [25, 45], [10, 35], [0, 30]]),
}
POSE_MIX = {"open": 0.25, "fist": 0.2, "pinch": 0.15, "point": 0.15, "random": 0.25}

SKIN_TONES = (
  np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 135], [198, 134, 99], [160, 102, 70], [120, 74, 52], [92, 56, 40]],
    np.float64,
  )
  / 255.0
)


@dataclasses.dataclass(frozen=True)
class Style:
  """Rendering options; two styles make two data domains (e.g. for cross-dataset studies)."""

  distance: tuple[float, float] = (0.3, 0.8)  # metres from the camera to the hand's centroid
  skin: tuple[float, float] = (0.0, 1.0)  # range of the skin-tone palette, light (0) to dark (1)
  backgrounds: tuple[str, ...] = ("gradient", "noise", "shapes", "clutter", "plain")
  forearm: float = 0.6  # probability of a forearm stub (drawn as skin and part of the mask)
  offset: float = 0.08  # max offset of the projected centroid from the centre, fraction of the image


def _rot(axis, angle):
  """Rotation matrices about a coordinate axis (0, 1, 2) by `angle` radians."""
  c, s = np.cos(angle), np.sin(angle)
  i, j = [(1, 2), (2, 0), (0, 1)][axis]
  r = np.eye(3)
  r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
  return r


def random_rotation(rng):
  """Uniform random rotation (from a uniform unit quaternion)."""
  q = rng.normal(size=4)
  w, x, y, z = q / np.linalg.norm(q)
  return np.array(
    [
      [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
  )


def finger_rest_frames():
  """Rest frames (columns x, y, z) of the 4 fingers and the thumb in the palm frame."""
  fingers = [_rot(2, f) for f in FAN]
  thumb = _rot(2, THUMB_SWING) @ _rot(1, THUMB_PRONATION)
  return fingers, thumb


def sample_pose(rng, kind=None):
  """Joint angles in degrees: fingers [4, 4] (abd, MCP, PIP, DIP), thumb [4] (abd, CMC, MCP, IP)."""
  kind = kind or rng.choice(list(POSE_MIX), p=list(POSE_MIX.values()))
  uniform = lambda lim: rng.uniform(lim[..., 0], lim[..., 1])
  if kind == "random":
    fingers, thumb = uniform(np.tile(FINGER_LIMITS, (4, 1, 1))), uniform(THUMB_LIMITS)
  elif kind == "point":
    open_, fist = (np.array(POSES[k][0], float) for k in ("open", "fist"))
    fingers = np.stack([uniform(open_)] + [uniform(fist) for _ in range(3)])
    thumb = uniform(np.array(POSES[rng.choice(["open", "fist"])][1], float))
  else:
    f_lim, t_lim = (np.array(x, float) for x in POSES[kind])
    fingers, thumb = uniform(np.tile(f_lim, (4, 1, 1))), uniform(t_lim)
    if kind == "pinch":  # the other fingers anywhere between open and fist
      w = rng.uniform(size=(3, 1))
      lo, hi = (np.array(POSES[k][0], float) for k in ("open", "fist"))
      fingers[1:] = (1 - w) * uniform(np.tile(lo, (3, 1, 1))) + w * uniform(np.tile(hi, (3, 1, 1)))
  fingers = np.clip(fingers + rng.normal(0, 3, fingers.shape), FINGER_LIMITS[:, 0], FINGER_LIMITS[:, 1])
  thumb = np.clip(thumb + rng.normal(0, 3, thumb.shape), THUMB_LIMITS[:, 0], THUMB_LIMITS[:, 1])
  return fingers, thumb


def forward_kinematics(fingers, thumb, lengths_f, length_t, size=1.0):
  """Joint positions [21, 3] in the palm frame (cm) for angles in degrees; wrist at the origin."""
  frames, thumb_frame = finger_rest_frames()
  xyz = np.zeros((21, 3))
  chains = [(THUMB_BASE, thumb_frame, thumb, length_t)]
  chains += [(FINGER_BASES[f], frames[f], fingers[f] * [SPREAD_SIGN[f], 1, 1, 1], lengths_f[f]) for f in range(4)]
  for f, (base, frame, ang, lengths) in enumerate(chains):
    a = np.radians(ang)
    r = frame @ _rot(2, a[0]) @ _rot(0, a[1])  # abduction about the normal, then flexion towards the palm
    p = base * size
    xyz[1 + 4 * f] = p
    for k in range(3):
      if k:
        r = r @ _rot(0, a[k + 1])
      p = p + r[:, 1] * lengths[k]
      xyz[2 + 4 * f + k] = p
  return xyz


def sample_hand(rng, style=Style()):
  """Samples a hand: camera-frame joints (m), K, and the 3D primitives to draw."""
  size = rng.uniform(*SIZE_RANGE)
  jitter = lambda shape: 1 + rng.uniform(-BONE_JITTER, BONE_JITTER, shape)
  lengths_f, length_t = FINGER_LENGTHS * size * jitter((4, 3)), THUMB_LENGTHS * size * jitter(3)
  fingers, thumb = sample_pose(rng)
  local = forward_kinematics(fingers, thumb, lengths_f, length_t, size) * CM
  radii = RADII * size * CM * rng.uniform(0.92, 1.08)
  rot = random_rotation(rng)
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
  cones = []  # (p0, p1, r0, r1) in metres
  for f in range(5):
    j = 1 + 4 * f
    for k in range(3):
      cones.append((xyz[j + k], xyz[j + k + 1], radii[f, k], radii[f, k + 1]))
  w = xyz[0]
  wrist_r, wrist_u = w + ex * 1.6 * s, w - ex * 1.9 * s
  palm_r = 1.25 * s
  cones += [
    (xyz[5], xyz[17], 1.05 * s, 0.95 * s),  # knuckle row
    (wrist_r, xyz[5], palm_r, 1.05 * s),
    (wrist_u, xyz[17], palm_r, 0.95 * s),
    (wrist_r, wrist_u, 1.3 * s, 1.3 * s),
    (wrist_r, xyz[2], 1.3 * s, radii[0, 1]),
  ]  # thenar
  if rng.uniform() < style.forearm:
    arm = w - ey * rng.uniform(8, 14) * s
    cones.append((w - ey * 0.5 * s, arm, 2.1 * s, 2.5 * s))
  # Palm: an ellipsoid spanning wrist to knuckles (semi-axes radial, distal, palmar).
  centre_p = to_cam(np.array([0.0, 4.6, -0.1]) * s)
  axes = np.stack([ex * 3.8 * s, ey * 4.6 * s, ez * 1.35 * s], 1)
  return dict(xyz=xyz, K=K, cones=cones, ellipsoid=(centre_p, axes))


# ---------------------------------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------------------------------
def _project(p, K):
  return np.array([K[0, 0] * p[0] / p[2] + K[0, 2], K[1, 1] * p[1] / p[2] + K[1, 2]])


def render_geometry(h):
  """Z-buffers the hand at SS x SS supersampling inside its screen box and pools it to output pixels.

  Returns (box as output-pixel slices, summed unit normals [h, w, 3], coverage [h, w] in [0, 1]).
  """
  K, n = h["K"], SIZE * SS
  prims = []
  for p0, p1, r0, r1 in h["cones"]:
    a, b = _project(p0, K) * SS, _project(p1, K) * SS
    ra, rb = K[0, 0] * r0 / p0[2] * SS, K[0, 0] * r1 / p1[2] * SS
    lo, hi = np.minimum(a - ra, b - rb), np.maximum(a + ra, b + rb)
    prims.append((_cone, lo, hi, (a, b, ra, rb, p0, p1, r0, r1)))
  c, axes = h["ellipsoid"]
  corners = c + np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)]) @ axes.T
  pts = np.array([_project(p, K) for p in corners]) * SS
  prims.append((_ellipsoid, pts.min(0), pts.max(0), (c, axes)))
  # Box snapped to whole output pixels so the supersamples pool exactly.
  lo = np.clip(np.floor(np.min([p[1] for p in prims], 0) / SS) * SS, 0, n).astype(int)
  hi = np.clip(np.ceil((np.max([p[2] for p in prims], 0) + 1) / SS) * SS, 0, n).astype(int)
  x0, y0, x1, y1 = lo[0], lo[1], hi[0], hi[1]
  depth = np.full((y1 - y0, x1 - x0), np.inf, np.float32)
  for fn, plo, phi, args in prims:
    px0, py0 = np.clip(np.floor(plo).astype(int), [x0, y0], [x1, y1])
    px1, py1 = np.clip(np.ceil(phi).astype(int) + 1, [x0, y0], [x1, y1])
    if px1 > px0 and py1 > py0:
      u = np.arange(px0, px1, dtype=np.float32)[None, :] + 0.5
      v = np.arange(py0, py1, dtype=np.float32)[:, None] + 0.5
      win = depth[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0]
      np.minimum(win, fn(u, v, K, *args), out=win)
  u = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5) / SS
  v = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5) / SS
  covered = np.isfinite(depth)
  normal = depth_normals(np.where(covered, depth, 0), covered, u, v, K)
  box = np.s_[y0 // SS : y1 // SS, x0 // SS : x1 // SS]
  return box, [_pool(c * covered) for c in normal], _pool(covered.astype(np.float32)) / SS**2


def _pool(a):
  """Sums SS x SS blocks."""
  return sum(a[i::SS, j::SS] for i in range(SS) for j in range(SS))


def depth_normals(z, covered, u, v, K):
  """Unit camera-frame normals (nx, ny, nz), facing the camera, of the surface z(u, v) seen through K.

  Derivatives take the one-sided difference with the smaller depth step, so silhouettes and the borders between
  overlapping fingers do not bleed into each other.
  """

  def slope(z, covered):  # along axis 1
    d = np.where(covered[:, 1:] & covered[:, :-1], (z[:, 1:] - z[:, :-1]) * SS, np.float32(1e9))
    best = np.empty_like(z)
    best[:, 1:-1] = np.where(np.abs(d[:, 1:]) < np.abs(d[:, :-1]), d[:, 1:], d[:, :-1])
    best[:, 0], best[:, -1] = d[:, 0], d[:, -1]
    best[np.abs(best) > 1e8] = 0
    return best

  zu, zv = slope(z, covered), slope(z.T, covered.T).T
  fx, fy, cx, cy = (float(k) for k in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))  # Python floats keep float32
  xh, yh = (u - cx) / fx, (v - cy) / fy
  # dP/du = (z/fx + x zu, y zu, zu), dP/dv = (x zv, z/fy + y zv, zv); n = dP/dv x dP/du points at the camera.
  a1, a2, a3 = z / fx + xh * zu, yh * zu, zu
  b1, b2, b3 = xh * zv, z / fy + yh * zv, zv
  n = (b2 * a3 - b3 * a2, b3 * a1 - b1 * a3, b1 * a2 - b2 * a1)
  inv = 1 / np.maximum(np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]), 1e-12)
  return [c * inv for c in n]


def _cone(u, v, K, a, b, ra, rb, p0, p1, r0, r1):
  """Depth of a round-cone impostor on a pixel grid (supersampled px), inf outside."""
  # Scalars as Python floats: NumPy 2 would promote float32 arrays to float64 for numpy float64 scalars.
  (ax, ay), (bx, by), ra, rb = a.tolist(), b.tolist(), float(ra), float(rb)
  z0, z1, r0, r1 = float(p0[2]), float(p1[2]), float(r0), float(r1)
  abx, aby = bx - ax, by - ay
  t = ((u - ax) * abx + (v - ay) * aby) * (1 / max(abx * abx + aby * aby, 1e-6))
  np.clip(t, 0, 1, out=t)
  dx, dy = u - (ax + t * abx), v - (ay + t * aby)
  rad = ra + t * (rb - ra)
  s2 = 1 - (dx * dx + dy * dy) / (rad * rad)
  z = z0 + t * (z1 - z0) - (r0 + t * (r1 - r0)) * np.sqrt(np.maximum(s2, 0))
  z[s2 <= 0] = np.inf
  return z


def _ellipsoid(u, v, K, c, axes):
  """Depth of the exact ray-ellipsoid intersection for rays through pixel centres, inf where missed."""
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
  return z


def background(rng, kinds):
  """A 224x224 RGB uint8 background: plain, gradient, noise texture, shapes or clutter."""
  kind = rng.choice(kinds)
  c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  if kind == "plain":
    img = Image.new("RGB", (SIZE, SIZE), tuple(int(c) for c in c0))
  elif kind in ("gradient", "shapes"):
    # A linear ramp is exact under bilinear upsampling, so build it at 8x8.
    ang = rng.uniform(0, 2 * np.pi)
    g = (np.arange(8) + 0.5) / 8 * 2 - 1
    t = (np.cos(ang) * g[None, :] + np.sin(ang) * g[:, None]) * 0.5 + 0.5
    low = (c0 + t[..., None] * (c1 - c0)).astype(np.uint8)
    img = Image.fromarray(low).resize((SIZE, SIZE), Image.BILINEAR, box=(0.5, 0.5, 7.5, 7.5))
  else:  # noise texture: octaves of upsampled random colours
    cells = rng.choice([3, 6, 12, 24, 48], size=3, replace=False)
    octave = lambda c: Image.fromarray(rng.integers(0, 256, (c, c, 3), dtype=np.uint8)).resize(
      (SIZE, SIZE), Image.BICUBIC
    )
    img = octave(cells[0])
    for k, c in enumerate(cells[1:]):
      img = Image.blend(img, octave(c), 0.5 / (k + 1))
  if kind in ("shapes", "clutter"):
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 8) if kind == "shapes" else rng.integers(12, 30)):
      fill = tuple(int(x) for x in rng.integers(0, 256, 3))
      x, y = rng.uniform(-20, SIZE + 20, 2)
      r = rng.uniform(4, 60) if kind == "shapes" else rng.uniform(2, 25)
      shape = rng.integers(4)
      if shape == 0:
        draw.ellipse([x - r, y - r * rng.uniform(0.3, 1), x + r, y + r], fill=fill)
      elif shape == 1:
        draw.rectangle([x - r, y - r * rng.uniform(0.3, 1), x + r, y + r], fill=fill)
      elif shape == 2:
        pts = [(x + r * np.cos(a), y + r * np.sin(a)) for a in np.sort(rng.uniform(0, 2 * np.pi, 5))]
        draw.polygon(pts, fill=fill)
      else:
        draw.line([x, y, *rng.uniform(0, SIZE, 2)], fill=fill, width=int(rng.integers(1, 6)))
    if rng.uniform() < 0.5:
      img = img.filter(ImageFilter.BoxBlur(rng.uniform(0.5, 2.0)))
  return np.array(img)


def shade(rng, geom, style):
  """One appearance of the hand over a new background: rgb uint8 [224, 224, 3].

  Shading runs at output resolution on the pooled normals; the supersampled coverage gives the soft edges.
  """
  box, normal, cover = geom
  tone = rng.uniform(*style.skin) * (len(SKIN_TONES) - 1)
  i = int(min(tone, len(SKIN_TONES) - 2))
  albedo = SKIN_TONES[i] + (tone - i) * (SKIN_TONES[i + 1] - SKIN_TONES[i])
  albedo = np.clip(albedo * rng.uniform(0.92, 1.08, 3), 0, 1).astype(np.float32)
  ambient, wrap = float(rng.uniform(0.25, 0.45)), float(rng.uniform(0.2, 0.5))
  light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0.3, 1.2)])  # from the camera side
  light /= np.linalg.norm(light)
  half = light + [0, 0, -1.0]
  half /= np.linalg.norm(half)
  spec_gain, spec_pow = float(rng.uniform(0.05, 0.25)), float(rng.uniform(10, 30))
  light_rgb = (1 + rng.uniform(-0.12, 0.12, 3)).astype(np.float32)
  nx, ny, nz = normal
  light, half = light.tolist(), half.tolist()
  inv = 1 / np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-6)
  nx, ny, nz = nx * inv, ny * inv, nz * inv
  ndl = nx * light[0] + ny * light[1] + nz * light[2]
  diffuse = np.clip((ndl + wrap) / (1 + wrap), 0, 1)
  spec = spec_gain * np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0, 1) ** spec_pow
  rgb = (albedo * (ambient + (1 - ambient) * diffuse[..., None]) + spec[..., None]) * light_rgb
  img = background(rng, style.backgrounds)
  a = cover[..., None]
  img[box] = (img[box] * (1 - a) + np.clip(rgb, 0, 1) * (255 * a) + 0.5).astype(np.uint8)
  # Global colour cast and gamma (one lookup table per channel), then sensor noise.
  lut = np.clip((np.arange(256) / 255)[:, None] * rng.uniform(0.85, 1.15, 3), 0, 1) ** rng.uniform(0.8, 1.25)
  lut = (lut * 255 + 0.5).astype(np.uint8)
  img = np.array(Image.fromarray(img).point(lut.T.ravel().tolist()))
  k = int(rng.integers(0, 12))  # triangular noise in [-k, k]
  if k:
    noise = rng.integers(0, k + 1, (2, *img.shape), dtype=np.int16)
    img = np.clip(img + noise[0] - noise[1], 0, 255).astype(np.uint8)
  return img


def render(seed, split, id, versions=1, style=Style()):
  """Renders one id: labels, the mask (uint8) and `versions` RGB images (uint8), all from the seed."""
  rng = np.random.default_rng([seed, SPLIT_CODES[split], id])
  h = sample_hand(rng, style)
  geom = render_geometry(h)
  images = [shade(np.random.default_rng([seed, SPLIT_CODES[split], id, v + 1]), geom, style) for v in range(versions)]
  mask = np.zeros((SIZE, SIZE), np.uint8)
  mask[geom[0]] = (geom[2] * 255 + 0.5).astype(np.uint8)  # coverage, soft at the edges
  return h["xyz"], h["K"], mask, images


SPLIT_CODES = {"training": 0, "evaluation": 1}


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


STYLE_FLAGS = ("distance", "skin", "backgrounds", "seed", "versions")  # the flags that make a data domain


def _pair(text):
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
  flags.DEFINE_list("distance", [str(x) for x in Style.distance], "MIN,MAX metres from the camera", flag_values=fv)
  flags.DEFINE_list("skin", [str(x) for x in Style.skin], "LIGHT,DARK range of the skin palette (0-1)", flag_values=fv)
  flags.DEFINE_list("backgrounds", list(Style.backgrounds), f"some of {','.join(Style.backgrounds)}", flag_values=fv)
  flags.DEFINE_bool("force", False, "rewrite even if the same set is already there", flag_values=fv)
  for name, what in (("distance", "MIN,MAX"), ("skin", "LIGHT,DARK")):
    flags.register_validator(
      name, _pair, f"expected two numbers {what} with {what.split(',')[0]} <= {what.split(',')[1]}", flag_values=fv
    )
  flags.register_validator(
    "backgrounds",
    lambda v: bool(v) and set(v) <= set(Style.backgrounds),
    f"expected some of {', '.join(Style.backgrounds)}",
    flag_values=fv,
  )


def main(argv: list[str] | None = None) -> None:
  from peclr_jax import cli  # not at the top: spawned render workers import this module, and need no jax

  args = cli.parse(argv, __doc__, _flags, required=("out",))
  style = Style(
    distance=tuple(map(float, args.distance)), skin=tuple(map(float, args.skin)), backgrounds=tuple(args.backgrounds)
  )
  if args.force and os.path.exists(os.path.join(args.out, MANIFEST)):
    os.remove(os.path.join(args.out, MANIFEST))
  t0 = time.perf_counter()
  with cli.errors(OSError):
    wrote = generate(args.out, args.train, args.eval, args.seed, args.versions, style, args.workers)
  print(
    f"{'wrote' if wrote else 'already there'}: {args.out} ({args.train} x {args.versions} training, "
    f"{args.eval} evaluation) in {time.perf_counter() - t0:.1f} s"
  )


if __name__ == "__main__":
  main()
