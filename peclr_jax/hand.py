"""Hand joint orders, bones and remappings (reference §6.5).

peclr_jax uses the FreiHAND order everywhere: wrist 0; thumb 1-4; index 5-8; middle 9-12; ring 13-16;
little 17-20, each finger base -> tip. Other datasets are gathered into it with `x[idx]` arrays below.
"""

import numpy as np

NUM_JOINTS = 21
FINGERS = ("thumb", "index", "middle", "ring", "little")
JOINT_NAMES = ("wrist",) + tuple(f"{f}{i}" for f in FINGERS for i in range(1, 5))

WRIST = 0
ROOT = WRIST
# FreiHAND's `scale` bone (middle MCP -> PIP) and Iqbal et al.'s (wrist -> index MCP).
SCALE_BONE = (9, 10)
IQBAL_BONE = (0, 5)


def finger_joints(finger: int) -> tuple[int, int, int, int]:
  """Joint indices of finger 0..4 (thumb..little), base to tip."""
  return tuple(range(1 + 4 * finger, 5 + 4 * finger))


# (parent, child) pairs: wrist to each finger base, then along each finger.
BONES = tuple((0, 1 + 4 * f) for f in range(5)) + tuple((j, j + 1) for f in range(5) for j in finger_joints(f)[:-1])
PARENTS = np.array([-1] + [p for p, _ in sorted(BONES, key=lambda b: b[1])], np.int32)

# Gather arrays: x_freihand = x_other[IDX].
FREIHAND_FROM_AIT = np.array([0, 1, 6, 11, 16, 2, 7, 12, 17, 3, 8, 13, 18, 4, 9, 14, 19, 5, 10, 15, 20])
AIT_FROM_FREIHAND = np.array([0, 1, 5, 9, 13, 17, 2, 6, 10, 14, 18, 3, 7, 11, 15, 19, 4, 8, 12, 16, 20])
# InterHand2.6M: 42 joints, right hand 0-20, left 21-41; tip first per finger, wrist 20 / 41.
FREIHAND_FROM_INTERHAND_RIGHT = np.array([20, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 19, 18, 17, 16])
FREIHAND_FROM_INTERHAND_LEFT = FREIHAND_FROM_INTERHAND_RIGHT + 21
FREIHAND_FROM_RHD = np.array([0, 4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9, 16, 15, 14, 13, 20, 19, 18, 17])

# One colour per finger for drawing skeletons (RGB).
FINGER_COLORS = ((230, 60, 60), (240, 170, 30), (60, 200, 60), (40, 160, 240), (190, 80, 230))


def bone_color(bone: tuple[int, int]) -> tuple[int, int, int]:
  return FINGER_COLORS[(bone[1] - 1) // 4]


def remap(x, idx):
  """Gathers joints along axis -2 (works for [..., J, D] arrays) into FreiHAND order."""
  return np.take(np.asarray(x), idx, axis=-2)


def draw_skeleton(image, uv, valid=None, width=2):
  """Returns a copy of a PIL image with the 2D skeleton `uv` [21, 2] (pixels) drawn on it."""
  from PIL import ImageDraw

  image = image.copy()
  draw = ImageDraw.Draw(image)
  uv = np.asarray(uv, np.float64)
  valid = np.ones(len(uv), bool) if valid is None else np.asarray(valid, bool)
  for a, b in BONES:
    if valid[a] and valid[b]:
      draw.line([tuple(uv[a]), tuple(uv[b])], fill=bone_color((a, b)), width=width)
  r = max(1, width)
  for j, (u, v) in enumerate(uv):
    if valid[j]:
      draw.ellipse([u - r, v - r, u + r, v + r], fill=(255, 255, 255) if j == 0 else bone_color((0, max(j, 1))))
  return image
