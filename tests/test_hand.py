"""Joint orders and remappings, checked against hand-written index tables (reference §6.5)."""

import numpy as np

from peclr_jax import hand


def _named(order):
  """Joint names (FreiHAND naming) of a dataset order given as {index: name}."""
  return [order[i] for i in range(len(order))]


def test_freihand_order_and_bones():
  assert hand.JOINT_NAMES[:6] == ("wrist", "thumb1", "thumb2", "thumb3", "thumb4", "index1")
  assert hand.JOINT_NAMES[20] == "little4"
  assert len(hand.BONES) == 20
  assert sorted(c for _, c in hand.BONES) == list(range(1, 21))  # every joint but the wrist has one parent
  for p, c in hand.BONES:
    assert p == 0 if (c - 1) % 4 == 0 else p == c - 1
  # Following parents from any joint reaches the wrist in at most 4 steps.
  for j in range(21):
    k, steps = j, 0
    while k != 0:
      k, steps = hand.PARENTS[k], steps + 1
    assert steps <= 4


def test_interhand_right_and_left_remap():
  # InterHand2.6M right hand, written out from the dataset's skeleton.txt: tip first per finger, wrist 20.
  ih = {
    0: "thumb4",
    1: "thumb3",
    2: "thumb2",
    3: "thumb1",
    4: "index4",
    5: "index3",
    6: "index2",
    7: "index1",
    8: "middle4",
    9: "middle3",
    10: "middle2",
    11: "middle1",
    12: "ring4",
    13: "ring3",
    14: "ring2",
    15: "ring1",
    16: "little4",
    17: "little3",
    18: "little2",
    19: "little1",
    20: "wrist",
  }
  names = np.array(_named(ih) + [n + "_left" for n in _named(ih)])
  assert list(hand.remap(names[:, None], hand.FREIHAND_FROM_INTERHAND_RIGHT)[:, 0]) == list(hand.JOINT_NAMES)
  left = hand.remap(names[:, None], hand.FREIHAND_FROM_INTERHAND_LEFT)[:, 0]
  assert list(left) == [n + "_left" for n in hand.JOINT_NAMES]


def test_ait_and_rhd_remap():
  # AIT (the reference code's order): wrist, then the 5 bases, the 5 second joints, ..., the 5 tips.
  fingers = ("thumb", "index", "middle", "ring", "little")
  ait = ["wrist"] + [f + str(k) for k in range(1, 5) for f in fingers]
  assert list(np.array(ait)[hand.FREIHAND_FROM_AIT]) == list(hand.JOINT_NAMES)
  assert list(np.array(hand.JOINT_NAMES)[hand.AIT_FROM_FREIHAND]) == ait
  # RHD per hand: wrist, then each finger tip -> base.
  rhd = ["wrist"] + [f + str(k) for f in fingers for k in (4, 3, 2, 1)]
  assert list(np.array(rhd)[hand.FREIHAND_FROM_RHD]) == list(hand.JOINT_NAMES)


def test_remap_keeps_trailing_dims():
  x = np.random.default_rng(0).normal(size=(5, 42, 3))
  y = hand.remap(x, hand.FREIHAND_FROM_INTERHAND_RIGHT)
  assert y.shape == (5, 21, 3)
  np.testing.assert_array_equal(y[:, 0], x[:, 20])  # wrist
  np.testing.assert_array_equal(y[:, 4], x[:, 0])  # thumb tip
