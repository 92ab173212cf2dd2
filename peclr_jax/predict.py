"""2-D and 3-D hand keypoints for a folder of hand crops, from a keypoint-regression workdir.

  python -m peclr_jax.predict --workdir=runs/linear_peclr --images=my_crops/ --out=predictions/

Each image should already be a crop around one right hand, framed like the training crops (the hand's keypoints
spanning about 1/1.25 of the side); non-square images are padded to a square (black) and resized to the model's
input size. Left hands can be mirrored first (`--flip`).

Intrinsics: `--K fx,fy,cx,cy` in the image's pixels. Without it, the default K is FreiHAND's typical camera scaled to
the crop: f = 388.9 x side / 224 and the principal point at the image centre (side = the longer image side), i.e.
the crop is assumed to see what a 224 px FreiHAND image sees. 3-D is metric (metres, camera frame of that K) with the
reference bone (the probe config's, FreiHAND's middle MCP->PIP by default) of length `--bone-length`; its default is
the median of the probe's training labels (probe.json), else 1 (normalised units).

Writes OUT/<name>.json per image (uv in image pixels, z_rel, xyz, K) and OUT/<name>.png with the skeleton drawn,
plus OUT/keypoints.json with all of them.
"""

import argparse
import json
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image

from peclr_jax import augment, hand, probe
from peclr_jax.data import common

FREIHAND_FOCAL = float(common.DEFAULT_K[0, 0])  # px at 224 px
FREIHAND_SIDE = 224.0


def default_K(width, height):
  """FreiHAND's focal length scaled to the image's longer side; principal point at the image centre."""
  f = FREIHAND_FOCAL * max(width, height) / FREIHAND_SIDE
  return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float32)


def _mirror_K(K, width):
  K = np.array(K, np.float32)
  K[0, 2] = width - K[0, 2]
  return K


def parse_K(text):
  try:
    fx, fy, cx, cy = (float(x) for x in text.split(","))
  except ValueError:
    raise SystemExit(f"error: --K {text!r}: expected fx,fy,cx,cy (four numbers)") from None
  return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32)


def list_images(folder):
  if not os.path.isdir(folder):
    raise common.DataError(f"--images: directory {folder!r} does not exist")
  names = sorted(f for f in os.listdir(folder) if f.lower().endswith(common.IMAGE_EXTENSIONS))
  if not names:
    raise common.DataError(f"--images: no images ({', '.join(common.IMAGE_EXTENSIONS)}) in {folder!r}")
  return [os.path.join(folder, n) for n in names]


def load_crop(path, size, flip=False):
  """(crop uint8 [size, size, 3], T 3x3 from image pixels to crop pixels, (w, h)) of an image padded to a square."""
  try:
    with Image.open(path) as im:
      im.load()
      image = im.convert("RGB")
  except (OSError, ValueError, SyntaxError) as e:
    raise common.DataError(f"corrupt or unreadable image {path!r}: {e}") from e
  if flip:
    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  w, h = image.size
  side = max(w, h)
  ox, oy = (side - w) // 2, (side - h) // 2
  s = size / side
  canvas = Image.new("RGB", (side, side))
  canvas.paste(image, (ox, oy))
  crop = canvas.resize((size, size), Image.BILINEAR)
  T = np.array([[s, 0, s * ox], [0, s, s * oy], [0, 0, 1]])
  return np.asarray(crop), T, (w, h)


def predict(workdir, paths, K=None, bone_length=None, flip=False, batch_size=32):
  """[dict(image, uv (image px), z_rel, xyz, K)] for each image path."""
  config, variables = probe.restore(workdir)
  fn = probe.predictor(config, variables)
  size = config.augment.out_size
  if bone_length is None:
    info = os.path.join(workdir, "probe.json")
    if os.path.isfile(info):
      with open(info) as f:
        bone_length = json.load(f).get("median_bone_m")
  bone_length = 1.0 if bone_length is None else float(bone_length)
  results = []
  for i in range(0, len(paths), batch_size):
    chunk = [load_crop(p, size, flip) for p in paths[i:i + batch_size]]
    Ks = [default_K(*wh) if K is None else K for _, _, wh in chunk]
    # A mirrored image is seen by the mirrored camera: cx -> w - cx (and X -> -X below).
    Kn = [_mirror_K(k, wh[0]) if flip else k for k, (_, _, wh) in zip(Ks, chunk)]
    K_crop = np.stack([T @ k for (_, T, _), k in zip(chunk, Kn)]).astype(np.float32)
    x = augment.normalize(np.stack([c for c, _, _ in chunk]).astype(np.float32))
    pred = fn(jnp.asarray(x), jnp.asarray(K_crop))
    xyz = np.asarray(probe.reconstruct(pred, K_crop, jnp.full((len(chunk),), bone_length), config.keypoints))
    for j, (_, T, _) in enumerate(chunk):
      uv_crop = np.asarray(pred["uv"][j], np.float64)
      uv = (uv_crop - T[:2, 2]) / T[0, 0]
      p3 = xyz[j].copy()
      if flip:  # back to the original image: u -> w - u, X -> -X
        uv[:, 0] = chunk[j][2][0] - uv[:, 0]
        p3[:, 0] = -p3[:, 0]
      results.append(dict(image=paths[i + j], uv=uv.tolist(), z_rel=np.asarray(pred["z_rel"][j]).tolist(),
                          xyz=p3.tolist(), K=np.asarray(Ks[j]).tolist(), bone_length=bone_length,
                          flipped=bool(flip)))
  return results


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a probe workdir (python -m peclr_jax.probe)")
  p.add_argument("--images", required=True, help="folder of hand-crop images")
  p.add_argument("--out", required=True, help="output folder for JSON and overlay PNGs")
  p.add_argument("--K", default=None, help="fx,fy,cx,cy in image pixels (default: FreiHAND's, scaled)")
  p.add_argument("--bone-length", type=float, default=None, help="reference bone length in metres")
  p.add_argument("--flip", action="store_true", help="mirror images first (left hands)")
  args = p.parse_args(argv)
  K = parse_K(args.K) if args.K else None
  try:
    paths = list_images(args.images)
    os.makedirs(args.out, exist_ok=True)
    results = predict(args.workdir, paths, K, args.bone_length, args.flip)
  except (probe.TrainingError, FileNotFoundError, common.DataError, OSError) as e:
    raise SystemExit(f"error: {e}") from None
  for r in results:
    stem = os.path.splitext(os.path.basename(r["image"]))[0]
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
      json.dump(r, f, indent=1)
    with Image.open(r["image"]) as im:
      hand.draw_skeleton(im.convert("RGB"), r["uv"], width=max(1, max(im.size) // 112)).save(
          os.path.join(args.out, stem + ".png"))
  with open(os.path.join(args.out, "keypoints.json"), "w") as f:
    json.dump(results, f)
  print(f"wrote {len(results)} predictions (JSON + overlay PNG each) and keypoints.json to {args.out}")


if __name__ == "__main__":
  main()
