"""Camera projection and the 2.5-D hand representation (reference §4).

A pose in 2.5-D is (uv, z_rel, s): pixel coordinates of the 21 joints, root-relative depths normalised by the length s
of a reference bone, and s itself. It is invariant to a global scale of the hand about the camera centre; metric 3-D is
recovered up to s by solving the reference bone's length constraint for the normalised root depth (a quadratic).

Roots. "wrist" is joint 0; "palm" is the 3-D midpoint of the wrist and the middle MCP (joint 9), as in the released
fine-tuned models. The palm's projection is not the mean of the two joints' uv, so the palm never needs a uv of its own:
z_rel is taken relative to Z_palm = ½(Z_wrist + Z_mcp), and reconstruction solves for Ẑ = Z_root / s from the bone's two
joints alone (their depths are Ẑ + z_rel), which holds for any root. The root's own uv is never used.

All functions are pure jnp, accept numpy, and batch over leading dimensions (K: [..., 3, 3], joints: [..., 21, D]).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from peclr_jax import hand

# Reference bones (n, m): FreiHAND's `scale` bone (middle MCP -> PIP) and Iqbal et al.'s (wrist -> index MCP).
BONES = {"middle": hand.SCALE_BONE, "index": hand.IQBAL_BONE}
# Each root is the mean of these joints.
ROOTS = {"wrist": (hand.WRIST,), "palm": (hand.WRIST, 9)}
DEPTH_RANGE = (4.0, 50.0)  # clamp of the closed-form Ẑ before refinement (reference §4.3)


def _bone(bone):
  return BONES[bone] if isinstance(bone, str) else tuple(bone)


def root_point(x, root="wrist"):
  """The root of joints x [..., 21, D] (any D, e.g. xyz or Z[..., None]) -> [..., D]."""
  return jnp.mean(jnp.take(jnp.asarray(x), jnp.array(ROOTS[root]), axis=-2), axis=-2)


def project(xyz, K):
  """Camera-frame points [..., N, 3] -> pixels [..., N, 2]."""
  p = jnp.einsum("...ij,...nj->...ni", jnp.asarray(K), jnp.asarray(xyz))
  return p[..., :2] / p[..., 2:]


def normalise(uv, K):
  """Pixels [..., N, 2] -> normalised image coordinates K⁻¹(u, v, 1) [..., N, 2]."""
  uv = jnp.asarray(uv)
  h = jnp.concatenate([uv, jnp.ones_like(uv[..., :1])], -1)
  p = jnp.einsum("...ij,...nj->...ni", jnp.linalg.inv(jnp.asarray(K)), h)
  return p[..., :2] / p[..., 2:]


def unproject(uv, z, K):
  """Pixels [..., N, 2] at depths z [..., N] -> camera-frame points [..., N, 3]."""
  z = jnp.asarray(z)
  return jnp.concatenate([normalise(uv, K) * z[..., None], z[..., None]], -1)


def to_25d(xyz, K, bone="middle", root="wrist"):
  """Camera-frame joints [..., 21, 3] -> (uv [..., 21, 2], z_rel [..., 21], s [...])."""
  xyz = jnp.asarray(xyz)
  n, m = _bone(bone)
  s = jnp.linalg.norm(xyz[..., n, :] - xyz[..., m, :], axis=-1)
  z_rel = (xyz[..., 2] - root_point(xyz[..., 2:], root)) / s[..., None]
  return project(xyz, K), z_rel, s


def root_depth(uv, z_rel, K, bone="middle", eps=1e-8):
  """Both roots (larger, smaller) [...] of a Ẑ² + b Ẑ + c = 0 for the normalised root depth Ẑ (reference §4.2).

  The bone (n, m) has unit length in normalised units. a and the discriminant are clamped to >= eps, so a degenerate
  bone (seen end-on) or a noisy prediction with no real root still gives a finite depth.
  """
  n, m = _bone(bone)
  xy, z_rel = normalise(uv, K), jnp.asarray(z_rel)
  zn, zm = z_rel[..., n], z_rel[..., m]
  d = xy[..., n, :] - xy[..., m, :]
  e = xy[..., n, :] * zn[..., None] - xy[..., m, :] * zm[..., None]
  a = jnp.maximum(jnp.sum(d * d, -1), eps)
  b = 2 * jnp.sum(d * e, -1)
  c = jnp.sum(e * e, -1) + (zn - zm) ** 2 - 1
  r = jnp.sqrt(jnp.maximum(b * b - 4 * a * c, eps))
  return (-b + r) / (2 * a), (-b - r) / (2 * a)


def from_25d(uv, z_rel, K, bone="middle", root="wrist", scale=None, eps=1e-8, z_root=None):
  """(uv [..., 21, 2], z_rel [..., 21]) -> camera-frame joints [..., 21, 3].

  Normalised (bone length 1) unless `scale` [...] (the bone's metric length) is given. `z_root` [...] overrides the
  closed-form (larger-root) depth, e.g. with a refined one; `root` only names the convention z_rel was made in.
  """
  del root  # the root enters only through z_rel (see the module docstring)
  if z_root is None:
    z_root = root_depth(uv, z_rel, K, bone, eps)[0]
  xyz = unproject(uv, jnp.asarray(z_root)[..., None] + jnp.asarray(z_rel), K)
  return xyz if scale is None else xyz * jnp.asarray(scale)[..., None, None]


class RootRefiner(nn.Module):
  """Residual MLP on the closed-form root depth (reference §4.3, after Spurr et al. 2020).

  Input: 21 z_rel, 42 normalised xy and the detached Ẑ clamped to [4, 50]; output: that Ẑ plus the MLP's residual.
  `zero_init` zeroes the last layer so training starts from the closed form.
  """

  hidden: int = 128
  zero_init: bool = False
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5

  @nn.compact
  def __call__(self, uv, z_rel, K, train: bool, bone="middle", eps=1e-8):
    xy = normalise(uv, K)
    z0 = jnp.clip(jax.lax.stop_gradient(root_depth(uv, z_rel, K, bone, eps)[0]), *DEPTH_RANGE)
    x = jnp.concatenate([jnp.asarray(z_rel), xy.reshape(*xy.shape[:-2], -1), z0[..., None]], -1)
    bn = lambda name: nn.BatchNorm(
      use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_eps, name=name
    )
    x = nn.leaky_relu(bn("bn1")(nn.Dense(self.hidden, name="fc1")(x)))
    x = nn.leaky_relu(bn("bn2")(nn.Dense(self.hidden, name="fc2")(x)))
    init = nn.initializers.zeros if self.zero_init else nn.linear.default_kernel_init
    return z0 + nn.Dense(1, kernel_init=init, name="fc3")(x)[..., 0]
