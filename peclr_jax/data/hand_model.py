"""The embedded hand: its skeleton, how it moves, and how it is held in front of a camera.

Palm frame, cm: x radial (thumb side), y distal, z palmar; a right-handed frame, so a right hand. Two pose samplers:
`families` (per-joint angles drawn independently inside a family's ranges: open / fist / pinch / point / random)
and `gestures` (the default: a few correlated synergies, curl per finger with the anatomical DIP-PIP coupling,
spread, thumb opposition and flexion, set by a gesture such as point, pinch, count, fist, flat or a grasp, plus
small per-joint noise). Two viewpoint samplers: `uniform` (any 3-D orientation) and `held` (the default: the palm
or the back towards the camera within a tilt, any in-plane rotation, the forearm behind the wrist; a share of
arbitrary orientations).
"""

import numpy as np

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

# `families`: (low, high) in degrees for [abd, mcp, pip, dip] (fingers) and thumb [abd, cmc, mcp, ip].
POSES = {
  "open": ([[-5, 15], [-10, 20], [0, 25], [0, 15]], [[10, 45], [-10, 15], [-5, 20], [-10, 20]]),
  "fist": ([[-5, 5], [65, 90], [80, 110], [40, 80]], [[-10, 10], [30, 60], [30, 60], [20, 60]]),
  "pinch": ([[-5, 5], [25, 50], [35, 70], [20, 50]], [[10, 30], [25, 45], [10, 35], [0, 30]]),
}
POSE_MIX = {"open": 0.25, "fist": 0.2, "pinch": 0.15, "point": 0.15, "random": 0.25}

# `gestures`: how often each is drawn. A grasp holds an object, drawn by the renderer.
GESTURES = {
  "relaxed": 0.2,
  "flat": 0.1,
  "fist": 0.12,
  "point": 0.1,
  "pinch": 0.14,
  "count": 0.14,
  "grasp": 0.2,
}
SPREAD = np.array([14.0, 4.0, 9.0, 16.0])  # abduction (deg) of index..little at full spread
JOINT_NOISE = 4.0  # per-joint noise (deg) on top of the synergies
POSE_SAMPLERS = ("gestures", "families")
VIEW_SAMPLERS = ("held", "uniform")


def rotation(axis, angle):
  """Rotation matrices about a coordinate axis (0, 1, 2) by `angle` radians."""
  c, s = np.cos(angle), np.sin(angle)
  i, j = [(1, 2), (2, 0), (0, 1)][axis]
  r = np.eye(3)
  r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
  return r


def finger_rest_frames():
  """Rest frames (columns x, y, z) of the 4 fingers and the thumb in the palm frame."""
  fingers = [rotation(2, f) for f in FAN]
  thumb = rotation(2, THUMB_SWING) @ rotation(1, THUMB_PRONATION)
  return fingers, thumb


def sample_families(rng, kind=None):
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


def gesture_synergies(rng, gesture):
  """The synergies of one gesture: curl [4] and hook [4] of index..little (0 straight, 1 curled; a hook bends the
  PIP with a straight MCP), spread, thumb opposition and thumb flexion, all in [0, 1] (hook in [-1, 1])."""
  u = rng.uniform
  hook = rng.normal(0, 0.08, 4)
  spread = u(0, 0.4)
  if gesture == "flat":
    curl, spread, opp, flex = u(0, 0.1, 4), u(0, 1), u(0, 0.3), u(0, 0.2)
  elif gesture == "relaxed":  # each finger a little more curled than its radial neighbour
    curl = u(0.12, 0.5) + 0.07 * np.arange(4) + rng.normal(0, 0.05, 4)
    opp, flex = u(0.2, 0.6), u(0.15, 0.5)
  elif gesture == "fist":
    curl, spread, opp, flex = u(0.85, 1, 4), u(0, 0.15), u(0.3, 0.7), u(0.5, 0.9)
  elif gesture == "point":
    curl = np.concatenate([u(0, 0.15, 1), u(0.8, 1, 3)])
    opp, flex = u(0.4, 0.9), u(0.4, 0.9)
  elif gesture == "count":  # 1..5 fingers up, from the index; five includes the thumb
    n = int(rng.integers(1, 6))
    curl = np.where(np.arange(4) < n, u(0, 0.12, 4), u(0.8, 1, 4))
    spread = u(0.3, 1)
    opp, flex = (u(0, 0.3), u(0, 0.2)) if n == 5 else (u(0.6, 1), u(0.6, 0.9))
  elif gesture == "pinch":  # thumb and index tips together; the others up (an OK sign) to curled
    curl = np.concatenate([u(0.35, 0.6, 1), np.full(3, u(0, 1)) + rng.normal(0, 0.06, 3)])
    opp, flex = u(0.6, 1), u(0.3, 0.6)
  elif gesture == "grasp":  # around an object: the smaller it is, the more closed the hand
    closure = u(0.3, 0.8)
    curl = closure + 0.05 * np.arange(4) + rng.normal(0, 0.04, 4)
    spread, opp, flex = u(0, 0.3), u(0.7, 1), np.clip(0.8 * closure + rng.normal(0, 0.08), 0, 1)
  else:
    raise ValueError(f"unknown gesture {gesture!r}: expected one of {', '.join(GESTURES)}")
  return dict(curl=np.clip(curl, 0, 1), hook=hook, spread=spread, opposition=opp, flexion=flex)


def synergy_angles(curl, hook, spread, opposition, flexion):
  """Joint angles (deg; fingers [4, 4], thumb [4]) of a set of synergies, before noise and limits."""
  mcp = -5 + 90 * curl - 35 * hook
  pip = 105 * curl + 25 * hook
  dip = 0.67 * pip  # the DIP follows the PIP (the tendons couple them)
  abd = SPREAD * spread * (1 - 0.8 * curl)  # curled fingers close up
  fingers = np.stack([abd, mcp, pip, dip], -1)
  thumb = np.array([-5 + 45 * opposition, -10 + 40 * opposition + 20 * flexion, -5 + 60 * flexion, -10 + 85 * flexion])
  return fingers, thumb


def sample_gestures(rng, gesture=None, mix=None):
  """(fingers [4, 4], thumb [4], gesture): joint angles in degrees from a gesture's synergies plus per-joint noise,
  inside the joint limits."""
  mix = mix or GESTURES
  gesture = gesture or str(rng.choice(list(mix), p=np.array(list(mix.values())) / sum(mix.values())))
  fingers, thumb = synergy_angles(**gesture_synergies(rng, gesture))
  fingers = np.clip(fingers + rng.normal(0, JOINT_NOISE, fingers.shape), FINGER_LIMITS[:, 0], FINGER_LIMITS[:, 1])
  thumb = np.clip(thumb + rng.normal(0, JOINT_NOISE, 4), THUMB_LIMITS[:, 0], THUMB_LIMITS[:, 1])
  return fingers, thumb, gesture


def forward_kinematics(fingers, thumb, lengths_f, length_t, size=1.0):
  """(joints [21, 3] in the palm frame, cm; segment frames [5, 3, 3, 3]) for angles in degrees, wrist at the
  origin. Segment k of finger f (thumb first) runs from joint 1 + 4f + k along the frame's y (its column 1); its
  column 2 points to the pad (palmar) side."""
  rest, thumb_frame = finger_rest_frames()
  xyz, frames = np.zeros((21, 3)), np.zeros((5, 3, 3, 3))
  chains = [(THUMB_BASE, thumb_frame, thumb, length_t)]
  chains += [(FINGER_BASES[f], rest[f], fingers[f] * [SPREAD_SIGN[f], 1, 1, 1], lengths_f[f]) for f in range(4)]
  for f, (base, frame, ang, lengths) in enumerate(chains):
    a = np.radians(ang)
    r = frame @ rotation(2, a[0]) @ rotation(0, a[1])  # abduction about the normal, then flexion towards the palm
    p = base * size
    xyz[1 + 4 * f] = p
    for k in range(3):
      if k:
        r = r @ rotation(0, a[k + 1])
      frames[f, k] = r
      p = p + r[:, 1] * lengths[k]
      xyz[2 + 4 * f + k] = p
  return xyz, frames


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


def held_rotation(rng, tilt_deg=55.0, free=0.1, palm_share=0.5):
  """(palm-to-camera rotation, kind): with probability `free` a uniform random rotation ("free"); else the palm
  ("palm") or the back ("back") faces the camera, the palm normal within `tilt_deg` of the viewing axis (uniform
  over that cap of directions), and any in-plane rotation.

  The camera looks along +z with y down, so a palm facing it has its normal (palm frame z) along camera -z.
  """
  if rng.uniform() < free:
    return random_rotation(rng), "free"
  kind = "palm" if rng.uniform() < palm_share else "back"
  # Start from the fingers pointing up in the image (palm y -> camera -y), palm x to camera x; flipping about y
  # turns the back to the camera. Both are proper rotations.
  base = (
    np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])
    if kind == "palm"
    else np.array([[-1.0, 0, 0], [0, -1, 0], [0, 0, 1]])
  )
  # Tilt: the normal moves by an angle uniform over the cap's solid angle, towards a uniform direction.
  cos_t = rng.uniform(np.cos(np.radians(tilt_deg)), 1.0)
  theta, phi = np.arccos(cos_t), rng.uniform(0, 2 * np.pi)
  axis = np.array([np.cos(phi), np.sin(phi), 0.0])  # in the image plane
  tilt = _axis_angle(axis, theta)
  roll = rotation(2, rng.uniform(0, 2 * np.pi))  # in-plane, about the viewing axis
  return roll @ tilt @ base, kind


def _axis_angle(axis, angle):
  """Rotation by `angle` about the unit vector `axis` (Rodrigues)."""
  k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
  return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
