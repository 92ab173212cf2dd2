"""On-device augmentation (reference §2): per-view parameters sampled from a key, then one affine warp and the
appearance ops, all jit-able and vmapped over the batch.

Geometry, per example: c = mean of the valid keypoints, r = their largest distance to c (both unchanged by a
rotation about c). The image rotates about c by `angle` in OpenCV's `getRotationMatrix2D` convention (x right, y
down; x' = a (x - cx) + b (y - cy) + cx, y' = -b (x - cx) + a (y - cy) + cy with a = cos, b = sin), so a *positive
angle turns the content counter-clockwise on screen*. A square of side 2 r margin with origin c - side/2 + jitter
side (jitter is a fraction of the side; positive moves the window right/down, so the hand moves left/up in the
crop) is then resized to out_size. The three steps compose into one affine T = S T_o R from input to output pixels
(continuous coordinates: pixel i covers [i, i+1)); uv' = T uv and K' = T K. T's last row is (0, 0, 1), so depths
and xyz need no update. Images with fewer than two valid keypoints (box-only data) use c = the valid keypoint or the
image centre and r = fallback_radius x the input side (the host crop is centred on the hand box).

Appearance ops then run on the out_size image (0-255 floats) in the reference's relative order: sobel, cut-out,
blur, colour jitter (always, when on), noise, colour drop, each gated by its per-example flag. They never move
keypoints. Finally images are scaled to [0, 1] and normalised with the ImageNet mean and std.

Deviations from `dahiyaaneesh/peclr:src/data_loader/sample_augmenter.py`, all deliberate:
* One bilinear warp (black outside) replaces cv2.warpAffine + a numpy slice + an INTER_AREA resize: the image is
  resampled once, without area filtering when the crop shrinks. The crop is always square and never clamped at the
  border, so the recorded jitter is always the applied one.
* Continuous values: angle ~ U[-rotate_deg, rotate_deg] (not integer degrees), c, side and jitter are not rounded.
  Jitter is a fraction of the crop side, symmetric by default; jitter_mode="reference" draws U[0, jitter] per axis
  (one-sided, like the reference's origin shift of 0-14 px, whose *stored* value c - side - origin is <= 0; here
  the sign is that of the origin shift, geo["jitter_px"], i.e. the reference's stored jitter is -jitter_px).
* Sobel, cut-out and blur act on the output crop rather than the original image, so the cut-out size, blur kernel
  (10 % of out_size, made odd) and sigma are relative to the output. Cut-out indexes columns with x (the reference
  uses x as the row) and, when its joint is unlabelled, centres on the hand centre.
* RGB throughout: the reference applies OpenCV's BGR codes to RGB images (hue of the channel-swapped image, swapped
  grey weights); that quirk is ignored.
* Float arithmetic clipped to [0, 255]: the reference's noise is one-sided (cv2.randn into uint8 saturates negatives)
  and wraps on uint8 overflow, as does its Sobel output; here noise is N(0, noise_std) and both are clipped.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from peclr_jax import validate

OPS = ("rotate", "crop", "scale", "color_jitter", "color_drop", "blur", "noise", "cut_out", "sobel")
FLAG_OPS = ("sobel", "cut_out", "blur", "noise", "color_drop")  # each fires with probability p_<op>
JITTER_MODES = ("symmetric", "reference")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)
CUT_OUT_JOINTS = 20  # the reference draws the cut-out joint with randint(0, 20): joints 0-19
# The uniforms each example draws, and how many of each.
_DRAWS = dict(
  angle=1, jitter=2, margin=1, color=4, **dict.fromkeys(FLAG_OPS, 1), cut_joint=1, cut_size=1, cut_value=1, blur_sigma=1
)


def default_config():
  """The reference's augmentation settings (reference §2.1); `ops` picks which are on."""
  return ml_collections.ConfigDict(
    dict(
      ops=("rotate", "crop", "scale", "color_jitter"),
      out_size=128,
      rotate_deg=45.0,  # angle ~ U[-rotate_deg, rotate_deg]
      jitter=0.1,  # max crop-origin shift, fraction of the crop side
      jitter_mode="symmetric",  # or "reference": U[0, jitter], one-sided like the reference
      margin=1.25,  # crop side / (2 r) when "scale" is off
      scale_range=(0.9, 1.5),  # margin ~ U[scale_range] when "scale" is on
      fallback_radius=0.3,  # hand radius / input side for images with < 2 valid keypoints
      p_sobel=0.5,
      p_cut_out=0.5,
      p_blur=0.5,
      p_noise=0.5,
      p_color_drop=0.5,
      hue=(0.01, 1.0),
      sat=(0.01, 1.0),  # multiplicative factors
      value_gain=(0.5, 1.0),
      value_bias=(5.0, 20.0),  # value * gain + bias, on the 0-255 scale
      noise_std=25.0,  # on the 0-255 scale
      cut_out_max=0.16,  # cut-out side ~ U[0, cut_out_max] x out_size
      blur_sigma=(0.1, 2.0),  # pixels of the output
    )
  )


# config.augment (the trainers check every value before any work).
RULES = {
  "ops": validate.each_of(OPS),
  "out_size": validate.COUNT,
  "rotate_deg": validate.number(0, 180),
  "jitter": validate.PROBABILITY,
  "jitter_mode": validate.one_of(JITTER_MODES),
  "margin": validate.POSITIVE,
  "scale_range": validate.pair(validate.POSITIVE),
  "fallback_radius": validate.POSITIVE,
  **{f"p_{op}": validate.PROBABILITY for op in FLAG_OPS},
  "hue": validate.pair(validate.NON_NEGATIVE),
  "sat": validate.pair(validate.NON_NEGATIVE),
  "value_gain": validate.pair(validate.NON_NEGATIVE),
  "value_bias": validate.pair(validate.number()),
  "noise_std": validate.NON_NEGATIVE,
  "cut_out_max": validate.PROBABILITY,
  "blur_sigma": validate.pair(validate.POSITIVE),
}


def check(cfg):
  """Raises ValueError for an unknown op or jitter mode (the values `sample` dispatches on)."""
  for key in ("ops", "jitter_mode"):
    if not RULES[key].allows(cfg[key]):
      raise ValueError(f"augment.{key}={cfg[key]!r}: expected {RULES[key].text}")


# ---------------------------------------------------------------------------------------------------------------
# Parameters.
# ---------------------------------------------------------------------------------------------------------------
def sample(key, batch_size, cfg):
  """Draws one view's parameters for `batch_size` examples, independently per example; a pure function of key.

  Returns a dict of [B]-leading arrays: angle (radians), jitter [B, 2] (fraction of the crop side), margin,
  color [B, 4] (hue factor, sat factor, value gain, value bias), flags sobel / cut_out / blur / noise / color_drop
  (bool), cut_joint (int), cut_size (fraction of out_size), cut_value (0-255), blur_sigma (px) and noise_seed
  (uint32). Ops that are off get identity values and False flags.
  """
  check(cfg)
  return jax.vmap(functools.partial(_sample_one, cfg=cfg))(jax.random.split(key, batch_size))


def _sample_one(key, cfg):
  # One uniform vector with a fixed layout: one threefry call compiles and runs far faster than one per value, and
  # as every value is always drawn, turning an op on or off leaves the other ops' draws unchanged.
  on = set(cfg.ops)
  f32 = jnp.float32
  k_u, k_noise = jax.random.split(key)
  parts = jnp.split(jax.random.uniform(k_u, (sum(_DRAWS.values()),), f32), np.cumsum(list(_DRAWS.values()))[:-1])
  u = {name: v if n > 1 else v[0] for (name, n), v in zip(_DRAWS.items(), parts, strict=True)}

  def between(name, lo, hi):
    return jnp.asarray(lo, f32) + (jnp.asarray(hi, f32) - jnp.asarray(lo, f32)) * u[name]

  # "reference": the origin moves right/down by U[0, jitter] (the reference's 0-14 px), so the hand moves left/up.
  lo = 0.0 if cfg.jitter_mode == "reference" else -cfg.jitter
  lo_c, hi_c = zip(cfg.hue, cfg.sat, cfg.value_gain, cfg.value_bias, strict=True)
  p = dict(
    angle=jnp.deg2rad(between("angle", -cfg.rotate_deg, cfg.rotate_deg)) if "rotate" in on else jnp.zeros((), f32),
    jitter=between("jitter", lo, cfg.jitter) if "crop" in on else jnp.zeros((2,), f32),
    margin=between("margin", *cfg.scale_range) if "scale" in on else jnp.asarray(cfg.margin, f32),
    color=between("color", lo_c, hi_c) if "color_jitter" in on else jnp.array([1.0, 1.0, 1.0, 0.0], f32),
    cut_joint=jnp.minimum(jnp.floor(u["cut_joint"] * CUT_OUT_JOINTS), CUT_OUT_JOINTS - 1).astype(jnp.int32),
    cut_size=between("cut_size", 0.0, cfg.cut_out_max),
    cut_value=jnp.floor(u["cut_value"] * 255),  # 0-254, as the reference's randint(0, 255)
    blur_sigma=between("blur_sigma", *cfg.blur_sigma),
    noise_seed=jax.random.bits(k_noise, (), jnp.uint32),  # a seed, not key data: works for any key impl
  )
  for op in FLAG_OPS:
    p[op] = (u[op] < cfg[f"p_{op}"]) & (op in on)
  return p


# ---------------------------------------------------------------------------------------------------------------
# Geometry.
# ---------------------------------------------------------------------------------------------------------------
def rotation(angle, c):
  """3x3 OpenCV getRotationMatrix2D(c, angle in degrees, 1) with angle in radians: counter-clockwise on screen."""
  a, b = jnp.cos(angle), jnp.sin(angle)
  cx, cy = c[0], c[1]
  return jnp.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy], [0.0, 0.0, 1.0]])


def _translation(t):
  return jnp.array([[1.0, 0.0, t[0]], [0.0, 1.0, t[1]], [0.0, 0.0, 1.0]])


def _scaling(s):
  return jnp.diag(jnp.array([s, s, 1.0]))


def geometry(uv, valid, shape, angle, jitter, margin, size, fallback_radius):
  """One example's T (input -> output pixels), its inverse, the hand centre c and the geo dict (see module doc)."""
  h, w = shape
  m = valid.astype(jnp.float32)
  n = m.sum()
  c = (uv * m[:, None]).sum(0) / jnp.maximum(n, 1.0)
  c = jnp.where(n > 0, c, jnp.array([w / 2, h / 2], jnp.float32))
  r = jnp.max(jnp.linalg.norm(uv - c, axis=-1) * m)
  r = jnp.where((n >= 2) & (r >= 1.0), r, fallback_radius * max(h, w))  # degenerate: a box-only image
  side = 2 * r * margin
  origin = c - side / 2 + jitter * side
  T = _scaling(size / side) @ _translation(-origin) @ rotation(angle, c)
  T_inv = rotation(-angle, c) @ _translation(origin) @ _scaling(side / size)
  geo = dict(angle=angle, jitter_px=jitter * side, side=side, margin=margin, T=T)
  return T, T_inv, c, geo


def warp(image, T_inv, size):
  """Bilinear samples of image [H, W, C] at T_inv of each output pixel centre, black outside -> [size, size, C]."""
  h, w, ch = image.shape
  g = jnp.arange(size, dtype=jnp.float32) + 0.5
  x, y = jnp.meshgrid(g, g)
  # Source point in continuous coordinates, then in pixel-centre index space (pixel i's centre is i + 0.5).
  sx = T_inv[0, 0] * x + T_inv[0, 1] * y + T_inv[0, 2] - 0.5
  sy = T_inv[1, 0] * x + T_inv[1, 1] * y + T_inv[1, 2] - 0.5
  x0, y0 = jnp.floor(sx), jnp.floor(sy)
  fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  flat = image.reshape(h * w, ch)

  def tap(xi, yi):
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    v = flat[jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)].astype(jnp.float32)  # gather before the cast
    return jnp.where(inside[..., None], v, 0.0)

  top = (1 - fx) * tap(x0, y0) + fx * tap(x0 + 1, y0)
  bottom = (1 - fx) * tap(x0, y0 + 1) + fx * tap(x0 + 1, y0 + 1)
  return (1 - fy) * top + fy * bottom


def transform_points(T, uv):
  """Applies the 3x3 affine T to points [..., 2]."""
  return uv @ T[:2, :2].T + T[:2, 2]


# ---------------------------------------------------------------------------------------------------------------
# Appearance ops, on one [H, W, 3] image with values in [0, 255].
# ---------------------------------------------------------------------------------------------------------------
def grey(x):
  return x @ jnp.array(LUMA, x.dtype)


def _grey3(x):
  return jnp.broadcast_to(grey(x)[..., None], x.shape)


def sobel(x):
  """Grey image, d/dx + d/dy with 3x3 Sobel kernels (cv2's reflect-101 border), clipped, into 3 channels."""
  g = jnp.pad(grey(x), 1, mode="reflect")
  dx = g[:, 2:] - g[:, :-2]
  dy = g[2:] - g[:-2]
  s = (dx[:-2] + 2 * dx[1:-1] + dx[2:]) + (dy[:, :-2] + 2 * dy[:, 1:-1] + dy[:, 2:])
  return jnp.broadcast_to(jnp.clip(s, 0, 255)[..., None], x.shape)


def cut_out(x, centre, frac, value):
  """Fills a square of side int(frac * H) centred on `centre` (x, y pixels) with `value`."""
  h, w = x.shape[:2]
  side = jnp.floor(frac * h)
  x0, y0 = jnp.floor(centre[0] - side / 2), jnp.floor(centre[1] - side / 2)
  i, j = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = (i >= y0) & (i < y0 + side) & (j >= x0) & (j < x0 + side)
  return jnp.where(box[..., None], value, x)


def blur_kernel_size(size):
  """cv2 kernel side used by the reference: 10 % of the image, made odd."""
  k = int(size * 0.1)
  return max(k + 1 if k % 2 == 0 else k, 1)


def blur(x, sigma):
  """Separable Gaussian blur (cv2.GaussianBlur with the reference's kernel size, reflect-101 border)."""
  h, w = x.shape[:2]
  k = blur_kernel_size(h)
  half = k // 2
  t = jnp.arange(k, dtype=jnp.float32) - half
  wts = jnp.exp(-(t**2) / (2 * sigma**2))
  wts = wts / wts.sum()

  def along(x, axis, n):  # one 1-D pass as a sum of shifted slices (faster under vmap than a grouped conv on CPU)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (half, half)
    xp = jnp.pad(x, pad, mode="reflect")
    return sum(wts[i] * jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i in range(k))

  return along(along(x, 0, h), 1, w)


def _frac(x):
  return x - jnp.floor(x)  # = jnp.mod(x, 1.0) here; XLA's CPU code for mod is 1.4x slower in this loop


def _hsv(rgb, scale=1.0):
  """[..., 3] RGB in [0, scale] -> h, s, v planes in [0, 1] (colorsys's definition; hue 0 for greys)."""
  r, g, b = rgb[..., 0] / scale, rgb[..., 1] / scale, rgb[..., 2] / scale
  # max/min as reductions of the input, not jnp.maximum of the planes: XLA then keeps the warp's gathers in loops of
  # their own instead of fusing them here, where each output channel would redo all three (2x slower in a pipeline).
  v, m = rgb.max(-1) / scale, rgb.min(-1) / scale
  d = v - m
  s = jnp.where(v > 0, d / jnp.where(v > 0, v, 1.0), 0.0)
  dd = jnp.where(d > 0, d, 1.0)
  h = jnp.where(v == r, (g - b) / dd, jnp.where(v == g, (b - r) / dd + 2, (r - g) / dd + 4))
  return jnp.where(d > 0, _frac(h / 6), 0.0), s, v


def _rgb(h, s, v):
  """Inverse of _hsv: channel n is v - v s clip(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1."""
  out = []
  for n in (5.0, 3.0, 1.0):
    k = n + 6 * h  # in [n, n + 6) for h in [0, 1): one subtraction is the mod
    k = jnp.where(k >= 6, k - 6, k)
    out.append(v - v * s * jnp.clip(jnp.minimum(k, 4 - k), 0.0, 1.0))
  return out


# The colour ops compute on channel planes, stacked only at the end: XLA's CPU loops over a minor axis of 3 do not
# vectorise. With the reductions above, the default augmentation runs 2x faster (benchmarks/augment.py).
def rgb_to_hsv(rgb):
  """[..., 3] RGB in [0, 1] -> HSV in [0, 1] (colorsys's definition; hue 0 for greys)."""
  return jnp.stack(_hsv(rgb), -1)


def hsv_to_rgb(hsv):
  """Inverse of rgb_to_hsv."""
  return jnp.stack(_rgb(hsv[..., 0], hsv[..., 1], hsv[..., 2]), -1)


def color_jitter(x, color):
  """HSV jitter as the reference: hue *= f_h, sat *= f_s, value = value * gain + bias (0-255 scale), clipped."""
  hf, sf, gain, bias = color[0], color[1], color[2], color[3]
  h, s, v = _hsv(x, 255)
  h = _frac(h * hf)  # cyclic; the reference's factors <= 1 never wrap
  s = jnp.clip(s * sf, 0.0, 1.0)
  v = jnp.clip(v * gain + bias / 255, 0.0, 1.0)
  return jnp.stack(_rgb(h, s, v), -1) * 255


def appearance(x, uv, valid, centre, p, cfg):
  """The appearance ops in the reference's order, each gated by its flag in p; uv/centre in output pixels."""
  on = set(cfg.ops)
  if "sobel" in on:
    x = jnp.where(p["sobel"], sobel(x), x)
  if "cut_out" in on:
    j = p["cut_joint"]
    at = jnp.where(valid[j], uv[j], centre)
    x = jnp.where(p["cut_out"], cut_out(x, at, p["cut_size"], p["cut_value"]), x)
  if "blur" in on:
    x = jnp.where(p["blur"], blur(x, p["blur_sigma"]), x)
  if "color_jitter" in on:
    x = color_jitter(x, p["color"])
  if "noise" in on:
    eps = jax.random.normal(jax.random.key(p["noise_seed"]), x.shape)
    x = jnp.where(p["noise"], jnp.clip(x + cfg.noise_std * eps, 0, 255), x)
  if "color_drop" in on:
    x = jnp.where(p["color_drop"], _grey3(x), x)
  return x


def normalize(x):
  """0-255 -> [0, 1] -> ImageNet mean/std."""
  return (x / 255 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)


def denormalize(x):
  """The inverse of `normalize`: a normalised image back to uint8 0-255 (for looking at model inputs)."""
  x = x * np.array(IMAGENET_STD, np.float32) + np.array(IMAGENET_MEAN, np.float32)
  return jnp.clip(jnp.round(x * 255), 0, 255).astype(jnp.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Batched entry points.
# ---------------------------------------------------------------------------------------------------------------
def _apply_one(image, uv, K, valid, p, cfg):
  size = cfg.out_size
  T, T_inv, c, geo = geometry(
    uv, valid, image.shape[:2], p["angle"], p["jitter"], p["margin"], size, cfg.fallback_radius
  )
  x = warp(image, T_inv, size)
  uv = transform_points(T, uv)
  x = appearance(x, uv, valid, transform_points(T, c), p, cfg)
  return normalize(x), uv, T @ K, geo


def apply(images, uv, K, valid, params, cfg):
  """Applies sampled params to a batch: images [B, S, S, 3] (uint8 or 0-255 floats), uv [B, 21, 2], K [B, 3, 3],
  valid [B, 21] -> (images float32 [B, out, out, 3] normalised, uv', K', geo).

  geo holds [B]-leading angle (radians), jitter_px [B, 2] (crop-origin shift in input pixels), side (crop side in
  input pixels), margin and T [B, 3, 3] (input -> output pixels; uv' = T uv, K' = T K).
  """
  check(cfg)
  f = functools.partial(_apply_one, cfg=cfg)
  return jax.vmap(f)(images, uv.astype(jnp.float32), K.astype(jnp.float32), valid, params)


def augment(key, batch, cfg):
  """One view of a batch (dict with image, uv, K, valid) -> (images, uv, K, params, geo)."""
  params = sample(key, batch["image"].shape[0], cfg)
  x, uv, K, geo = apply(batch["image"], batch["uv"], batch["K"], batch["valid"], params, cfg)
  return x, uv, K, params, geo


def views(key, batch, cfg, n=2):
  """n independent views (key folded with the view index), each as `augment` returns it."""
  return tuple(augment(jax.random.fold_in(key, v), batch, cfg) for v in range(n))
