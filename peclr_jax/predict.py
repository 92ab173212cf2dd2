"""2-D and 3-D hand keypoints for a folder of hand crops, from a keypoint-regression workdir.

  peclr-predict --workdir=runs/linear_peclr --images=my_crops/ --out=predictions/    # python -m peclr_jax.predict

Each image should already be a crop around one right hand, framed like the training crops (the hand's keypoints
spanning about 1/1.25 of the side); non-square images are padded to a square (black) and resized to the model's
input size. Left hands can be mirrored first (`--flip`).

Intrinsics: `--K fx,fy,cx,cy` in the image's pixels. Without it, the default K is FreiHAND's typical camera scaled to
the crop: f = 388.9 x side / 224 and the principal point at the image centre (side = the longer image side), i.e.
the crop is assumed to see what a 224 px FreiHAND image sees. 3-D is metric (metres, camera frame of that K) with the
reference bone (the probe config's, FreiHAND's middle MCP->PIP by default) of length `--bone_length`; its default is
the median of the probe's training labels (probe.json), else 1 (normalised units).

Writes OUT/<name>.json per image (uv in image pixels, z_rel, xyz, K) and OUT/<name>.png with the skeleton drawn,
plus OUT/keypoints.json with all of them.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
from absl import flags
from PIL import Image

from peclr_jax import augment, cli, hand, keypoints
from peclr_jax.data import common
from peclr_jax.errors import DataError

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
    cli.fail(f"--K={text!r}: expected fx,fy,cx,cy (four numbers)")
  return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32)


def list_images(folder):
  if not os.path.isdir(folder):
    raise DataError(f"--images: directory {folder!r} does not exist")
  names = sorted(f for f in os.listdir(folder) if f.lower().endswith(common.IMAGE_EXTENSIONS))
  if not names:
    raise DataError(f"--images: no images ({', '.join(common.IMAGE_EXTENSIONS)}) in {folder!r}")
  return [os.path.join(folder, n) for n in names]


def load_crop(path, size, flip=False):
  """(crop uint8 [size, size, 3], T 3x3 from image pixels to crop pixels, (w, h)) of an image padded to a square."""
  try:
    with Image.open(path) as im:
      im.load()
      image = im.convert("RGB")
  except (OSError, ValueError, SyntaxError) as e:
    raise DataError(f"corrupt or unreadable image {path!r}: {e}") from e
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


def predict(
  workdir: str,
  paths: list[str],
  K: np.ndarray | None = None,
  bone_length: float | None = None,
  flip: bool = False,
  batch_size: int = 32,
) -> list[dict]:
  """[dict(image, uv (image px), z_rel, xyz, K)] for each image path."""
  config, variables = keypoints.restore(workdir)
  fn = keypoints.predictor(config, variables)
  size = config.augment.out_size
  if bone_length is None:
    info = os.path.join(workdir, "probe.json")
    if os.path.isfile(info):
      with open(info) as f:
        bone_length = json.load(f).get("median_bone_m")
  bone_length = 1.0 if bone_length is None else float(bone_length)
  results = []
  for i in range(0, len(paths), batch_size):
    chunk = [load_crop(p, size, flip) for p in paths[i : i + batch_size]]
    Ks = [default_K(*wh) if K is None else K for _, _, wh in chunk]
    # A mirrored image is seen by the mirrored camera: cx -> w - cx (and X -> -X below).
    Kn = [_mirror_K(k, wh[0]) if flip else k for k, (_, _, wh) in zip(Ks, chunk)]
    K_crop = np.stack([T @ k for (_, T, _), k in zip(chunk, Kn)]).astype(np.float32)
    x = augment.normalize(np.stack([c for c, _, _ in chunk]).astype(np.float32))
    pred = fn(jnp.asarray(x), jnp.asarray(K_crop))
    xyz = np.asarray(keypoints.reconstruct(pred, K_crop, jnp.full((len(chunk),), bone_length), config.keypoints))
    for j, (_, T, _) in enumerate(chunk):
      uv_crop = np.asarray(pred["uv"][j], np.float64)
      uv = (uv_crop - T[:2, 2]) / T[0, 0]
      p3 = xyz[j].copy()
      if flip:  # back to the original image: u -> w - u, X -> -X
        uv[:, 0] = chunk[j][2][0] - uv[:, 0]
        p3[:, 0] = -p3[:, 0]
      results.append(
        dict(
          image=paths[i + j],
          uv=uv.tolist(),
          z_rel=np.asarray(pred["z_rel"][j]).tolist(),
          xyz=p3.tolist(),
          K=np.asarray(Ks[j]).tolist(),
          bone_length=bone_length,
          flipped=bool(flip),
        )
      )
  return results


def _flags(fv, argv):
  del argv
  cli.workdir_flag(fv, "a probe workdir (peclr-probe)")
  flags.DEFINE_string("images", None, "folder of hand-crop images", flag_values=fv)
  flags.DEFINE_string("out", None, "output folder for JSON and overlay PNGs", flag_values=fv)
  flags.DEFINE_string("K", None, "fx,fy,cx,cy in image pixels (default: FreiHAND's, scaled)", flag_values=fv)
  flags.DEFINE_float(
    "bone_length",
    None,
    "reference bone length in metres (default: the training labels' median)",
    lower_bound=0.0,
    flag_values=fv,
  )
  flags.DEFINE_bool("flip", False, "mirror images first (left hands)", flag_values=fv)


def main(argv: list[str] | None = None) -> None:
  args = cli.parse(argv, __doc__, _flags, required=("workdir", "images", "out"))
  K = parse_K(args.K) if args.K else None
  with cli.errors(FileNotFoundError, OSError):
    paths = list_images(args.images)
    os.makedirs(args.out, exist_ok=True)
    results = predict(args.workdir, paths, K, args.bone_length, args.flip)
  for r in results:
    stem = os.path.splitext(os.path.basename(r["image"]))[0]
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
      json.dump(r, f, indent=1)
    with Image.open(r["image"]) as im:
      hand.draw_skeleton(im.convert("RGB"), r["uv"], width=max(1, max(im.size) // 112)).save(
        os.path.join(args.out, stem + ".png")
      )
  with open(os.path.join(args.out, "keypoints.json"), "w") as f:
    json.dump(results, f)
  print(f"wrote {len(results)} predictions (JSON + overlay PNG each) and keypoints.json to {args.out}")


if __name__ == "__main__":
  main()
