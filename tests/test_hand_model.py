"""The hand model's samplers, measured over many draws against what they claim: joint limits, the gestures'
shapes, correlated synergies, and viewpoints of a hand held in front of a camera."""

import numpy as np
import pytest
from scipy import stats

from peclr_jax.data import hand_model as H

N = 3000


def _angle(a, b):
  cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  return np.degrees(np.arccos(np.clip(cos, -1, 1)))


@pytest.fixture(scope="module")
def gestures():
  rng = np.random.default_rng(0)
  draws = [H.sample_gestures(rng) for _ in range(N)]
  return np.array([d[0] for d in draws]), np.array([d[1] for d in draws]), np.array([d[2] for d in draws])


def test_gesture_poses_stay_inside_the_joint_limits(gestures):
  fingers, thumb, _ = gestures
  assert np.all(fingers >= H.FINGER_LIMITS[:, 0]) and np.all(fingers <= H.FINGER_LIMITS[:, 1])
  assert np.all(thumb >= H.THUMB_LIMITS[:, 0]) and np.all(thumb <= H.THUMB_LIMITS[:, 1])
  # The joints the kinematics place bend by the sampled PIP and DIP angles (angle between consecutive bones).
  for i in range(0, N, 97):
    xyz, _ = H.forward_kinematics(fingers[i], thumb[i], H.FINGER_LENGTHS, H.THUMB_LENGTHS)
    for f in range(4):
      j = 5 + 4 * f
      pip = _angle(xyz[j + 1] - xyz[j], xyz[j + 2] - xyz[j + 1])
      dip = _angle(xyz[j + 2] - xyz[j + 1], xyz[j + 3] - xyz[j + 2])
      np.testing.assert_allclose([pip, dip], np.abs(fingers[i, f, 2:]), atol=1e-6)


def test_each_gesture_has_its_shape(gestures):
  fingers, thumb, names = gestures
  pip = fingers[..., 2]
  assert set(names) == set(H.GESTURES)
  share = {g: np.mean(names == g) for g in H.GESTURES}
  for g, p in H.GESTURES.items():  # drawn as often as the mix says (4 binomial standard deviations)
    assert abs(share[g] - p) < 4 * np.sqrt(p * (1 - p) / N), (g, share[g], p)
  # Thresholds sit midway between a straight and a curled finger, several noise deviations from either.
  assert np.all(pip[names == "fist"] > 55) and np.all(pip[names == "flat"] < 45)
  point = pip[names == "point"]
  assert np.all(point[:, 0] < 48) and np.all(point[:, 1:] > 48)  # the index finger is the straight one
  # Counting raises the first n fingers from the index: the straight ones are always a prefix.
  up = pip[names == "count"] < 48
  n = up.sum(1)
  assert np.all(up == (np.arange(4) < n[:, None])) and set(n) == {1, 2, 3, 4}
  # A pinch brings the thumb across (opposed: CMC abduction well above a flat hand's).
  assert thumb[names == "pinch", 0].mean() > thumb[names == "flat", 0].mean() + 15


def test_synergies_correlate_the_joints(gestures):
  """Unlike independent per-joint draws, neighbouring fingers curl together and the DIP follows the PIP."""
  fingers, _, names = gestures
  relaxed = fingers[np.isin(names, ["relaxed", "grasp", "fist", "flat"])]
  assert np.corrcoef(relaxed[:, 1, 1], relaxed[:, 2, 1])[0, 1] > 0.8  # middle and ring MCP
  assert np.corrcoef(fingers[..., 2].ravel(), fingers[..., 3].ravel())[0, 1] > 0.9  # PIP and DIP
  rng = np.random.default_rng(1)
  random = np.array([H.sample_families(rng, "random")[0] for _ in range(500)])
  assert abs(np.corrcoef(random[:, 1, 1], random[:, 2, 1])[0, 1]) < 0.15


@pytest.fixture(scope="module")
def held():
  rng = np.random.default_rng(2)
  return [H.held_rotation(rng, tilt_deg=50.0, free=0.2, palm_share=0.5) for _ in range(N)]


def test_held_views_are_rotations_with_the_claimed_shares(held):
  rots, kinds = np.array([r for r, _ in held]), np.array([k for _, k in held])
  np.testing.assert_allclose(rots @ np.swapaxes(rots, 1, 2), np.broadcast_to(np.eye(3), rots.shape), atol=1e-12)
  np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-12)
  for kind, p in (("free", 0.2), ("palm", 0.4), ("back", 0.4)):
    assert abs(np.mean(kinds == kind) - p) < 4 * np.sqrt(p * (1 - p) / N), kind


def test_held_palm_or_back_faces_the_camera_within_the_tilt_and_any_roll(held):
  """The camera looks along +z: a palm seen from the front has its normal (palm frame z) along -z."""
  for kind, sign in (("palm", -1.0), ("back", 1.0)):
    rots = np.array([r for r, k in held if k == kind])
    normal = rots[:, :, 2]  # the palm normal in the camera frame
    cos = sign * normal[:, 2]
    assert np.all(cos >= np.cos(np.radians(50.0)) - 1e-12)
    # Uniform over the cap's solid angle: cos(tilt) uniform on [cos 50, 1].
    assert stats.kstest(cos, stats.uniform(np.cos(np.radians(50.0)), 1 - np.cos(np.radians(50.0))).cdf).pvalue > 1e-3
    # Any in-plane rotation: the fingers' direction in the image is uniform over the circle.
    distal = rots[:, :2, 1]
    roll = np.arctan2(distal[:, 1], distal[:, 0])
    assert stats.kstest(roll, stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > 1e-3


def test_free_views_are_uniform_rotations(held):
  free = np.array([r for r, k in held if k == "free"])
  rng = np.random.default_rng(3)
  uniform = np.array([H.random_rotation(rng) for _ in range(2000)])
  for rots in (free, uniform):  # any fixed axis lands uniformly on the sphere: its z is uniform on [-1, 1]
    assert stats.kstest(rots[:, 2, 2], stats.uniform(-1, 2).cdf).pvalue > 1e-3
