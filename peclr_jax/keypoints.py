"""The keypoint model and its inference API, shared by the probe trainer, evaluation and prediction.

The regressor predicts, per joint, (u, v) in pixels of the crop and z_rel = (Z - Z_root) / s, the root-relative depth
over the reference bone's length (reference §4); metric 3-D comes from `geometry.from_25d` (`reconstruct`).

  config, variables = keypoints.restore(workdir)      # a finished probe run
  fn = keypoints.predictor(config, variables)         # fn(images [B, S, S, 3] normalised, K [B, 3, 3])
  xyz = keypoints.reconstruct(fn(x, K), K, bone_length, config.keypoints)
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from peclr_jax import checkpoint, geometry, models, validate
from peclr_jax.errors import TrainingError
from peclr_jax.models import heads

MODES = ("linear", "mlp", "finetune", "scratch", "label_fraction")  # how the probe trains (peclr_jax/probe.py)
FROZEN = ("linear", "mlp")  # the modes that keep the encoder frozen
HEADS = ("linear", "mlp", "direct")  # direct: the encoder's own 2.5-D output (the hourglass)

# config.head and config.keypoints.
HEAD_RULES = {
  "kind": validate.one_of(HEADS),
  "hidden": validate.COUNT,
  "zero_init": validate.BOOL,
  "feature_norm": validate.BOOL,
}
KEYPOINT_RULES = {
  "bone": validate.one_of(geometry.BONES),
  "root": validate.one_of(geometry.ROOTS),
  "refine_root": validate.BOOL,
  "depth_range": validate.pair(validate.POSITIVE),
  "w_uv": validate.NON_NEGATIVE,
  "w_z": validate.NON_NEGATIVE,
  "w_root": validate.NON_NEGATIVE,
}


class Regressor(nn.Module):
  """encoder -> (feature norm) -> linear or MLP head -> 21 x (u, v, z_rel) [-> root-depth refinement]."""

  model: ml_collections.ConfigDict  # the encoder's architecture (configs' `model`)
  head: ml_collections.ConfigDict
  keypoints: ml_collections.ConfigDict
  frozen: bool = False

  @nn.compact
  def __call__(self, x, K, train: bool):
    m = self.model
    encoder = models.encoder(m, name="encoder")
    # A frozen encoder runs in inference mode and under stop_gradient: its backward pass is never built.
    h = encoder(x, train=train and not self.frozen)
    if self.frozen:
      h = jax.lax.stop_gradient(h)
    if self.head.kind == "direct":  # the encoder's own 2.5-D output (the hourglass): u, v in [-1, 1], then z_rel
      if h.shape[-1] != 63:
        raise ValueError(f"head.kind='direct' needs an encoder with 63 outputs (hourglass); {m.name} has {h.shape[-1]}")
      out = vector_to_pose(h)
    elif self.head.feature_norm:  # affine-free BN: still a linear probe, but conditioned (MAE's linear probe)
      h = nn.BatchNorm(
        use_running_average=not train, use_scale=False, use_bias=False, momentum=0.9, epsilon=1e-6, name="feature_norm"
      )(h)
    if self.head.kind == "linear":
      init = nn.initializers.zeros if self.head.get("zero_init", False) else nn.linear.default_kernel_init
      out = nn.Dense(63, kernel_init=init, name="head")(h).reshape(-1, 21, 3)
    elif self.head.kind == "mlp":
      out = heads.MLPHead(self.head.hidden, 63, name="head")(h, train).reshape(-1, 21, 3)
    pred = decode(out, x.shape[1], self.keypoints.root)
    uv, z_rel = pred["uv"], pred["z_rel"]
    if self.keypoints.refine_root:
      # The refiner learns from detached keypoints, so its loss never bends the keypoint head.
      sg = jax.lax.stop_gradient
      pred["z_root"] = geometry.RootRefiner(name="refiner")(sg(uv), sg(z_rel), K, train, bone=self.keypoints.bone)
    return pred


def vector_to_pose(h):
  """[B, 63] (21 x (u, v), then 21 z_rel; the hourglass's layout) -> [B, 21, 3]."""
  return jnp.concatenate([h[:, :42].reshape(-1, 21, 2), h[:, 42:, None]], -1)


def decode(out, size, root):
  """[B, 21, 3] head output ((u, v) in [-1, 1], z_rel) -> dict(uv in crop pixels, z_rel)."""
  z_rel = out[..., 2]
  if root == "wrist":  # the root's own z_rel is 0 by definition (the reference forces it)
    z_rel = z_rel.at[:, 0].set(0.0)
  return dict(uv=(out[..., :2] + 1) * (size / 2), z_rel=z_rel)


def make_model(config, frozen=None):
  """The Regressor of a probe config; frozen (by default) in the modes that keep the encoder frozen."""
  if frozen is None:
    frozen = config.mode in FROZEN
  return Regressor(config.model, config.head, config.keypoints, frozen=frozen)


def targets(xyz, K, kp):
  """2.5-D targets of camera-frame joints under intrinsics K (the augmented crop's): z_rel, s, Ẑ_root = Z_root / s."""
  _, z_rel, s = geometry.to_25d(xyz, K, kp.bone, kp.root)
  s_safe = jnp.maximum(s, 1e-6)  # unlabelled samples have xyz = 0; their terms are masked out
  z_root = geometry.root_point(xyz[..., 2:], kp.root)[..., 0] / s_safe
  return dict(z_rel=z_rel, s=s_safe, z_root=z_root)


def loss(pred, uv, tgt, valid, has_xyz, kp):
  """(total, measurements): L1 on uv (crop px, ÷2 over coordinates) + w_z · L1 on z_rel (+ w_root · L1 on Ẑ_root)."""
  v = valid.astype(jnp.float32)
  v3 = v * has_xyz[:, None].astype(jnp.float32)
  m = {}
  m["uv_l1"] = jnp.sum(jnp.abs(pred["uv"] - uv) * v[..., None]) / jnp.maximum(2 * v.sum(), 1)
  m["z_l1"] = jnp.sum(jnp.abs(pred["z_rel"] - tgt["z_rel"]) * v3) / jnp.maximum(v3.sum(), 1)
  total = kp.w_uv * m["uv_l1"] + kp.w_z * m["z_l1"]
  if "z_root" in pred:
    h = has_xyz.astype(jnp.float32)
    m["root_l1"] = jnp.sum(jnp.abs(pred["z_root"] - tgt["z_root"]) * h) / jnp.maximum(h.sum(), 1)
    total = total + kp.w_root * m["root_l1"]
  m["epe_2d_px"] = jnp.sum(jnp.linalg.norm(pred["uv"] - uv, axis=-1) * v) / jnp.maximum(v.sum(), 1)
  return total, m


def reconstruct(pred, K, scale, kp):
  """Camera-frame joints (metres when `scale` is the bone's metric length) from a prediction.

  Without a refined root depth, the closed-form Ẑ is clamped to kp.depth_range (bone lengths), as the reference
  clamps it before refinement: a bone predicted nearly end-on would otherwise put the hand kilometres away.
  """
  z_root = pred.get("z_root")
  if z_root is None:
    z_root = jnp.clip(
      geometry.root_depth(pred["uv"], pred["z_rel"], K, kp.bone)[0], *kp.get("depth_range", geometry.DEPTH_RANGE)
    )
  return geometry.from_25d(pred["uv"], pred["z_rel"], K, kp.bone, kp.root, scale=scale, z_root=z_root)


def eval_augment(config):
  """The evaluation crop: keypoint-centred at the training margin, no rotation, jitter or colour."""
  aug = config.augment.copy_and_resolve_references()
  with aug.unlocked():
    aug.ops = ()
  return aug


def restore(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, variables) of a probe workdir's latest (or given) checkpoint; no code is executed."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise TrainingError(f"{workdir!r} has no checkpoints/ (not a probe workdir, or the run never saved)")
  config = ml_collections.ConfigDict(checkpoint.restore_config(workdir, step))
  if "keypoints" not in config or "head" not in config:
    raise TrainingError(f"{workdir!r} is not a keypoint-regression workdir (its config has no head/keypoints)")
  _, variables = checkpoint.restore_variables(workdir, step)
  return config, variables


def predictor(config: ml_collections.ConfigDict, variables: dict):
  """A jitted fn(images normalised [B, S, S, 3], K [B, 3, 3]) -> dict(uv (crop px), z_rel[, z_root])."""
  model = make_model(config)
  return jax.jit(lambda x, K: model.apply(variables, x, K, train=False))
