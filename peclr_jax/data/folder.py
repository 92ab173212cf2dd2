"""Unlabelled images in a folder tree (e.g. YT3D frames, reference §6.3) as a grain random-access source.

Images are all files under `root` whose extension is in `common.IMAGE_EXTENSIONS`, in sorted relative-path
order. An optional JSON file maps a relative path (with `/` separators) to hand annotations used only for
cropping, never supervised:
  {"uv": [[x, y], ...21]}   2D keypoints in FreiHAND order; a `null` joint is unlabelled (valid False)
  {"box": [x0, y0, x1, y1]} hand box in pixels
Images without an entry get the whole image as box.
"""

import io
import os

import numpy as np
from PIL import Image

from peclr_jax import hand
from peclr_jax.data import common


def list_images(root):
  """Sorted relative paths (`/`-separated) of the images under `root`, recursively."""
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    rel = os.path.relpath(dirpath, root)
    for f in filenames:
      if os.path.splitext(f)[1].lower() in common.IMAGE_EXTENSIONS:
        paths.append(f if rel == "." else os.path.join(rel, f).replace(os.sep, "/"))
  return sorted(paths)


def parse_uv(value, where):
  """[21, 2] keypoints with `null` joints allowed -> (uv with zeros there, valid); NaN/inf are errors."""
  if not isinstance(value, list | tuple) or len(value) != hand.NUM_JOINTS:
    n = len(value) if isinstance(value, list | tuple) else type(value).__name__
    raise common.DataError(f"{where}: uv must be a list of {hand.NUM_JOINTS} [x, y] joints, got {n}")
  valid = np.array([j is not None and not (isinstance(j, list | tuple) and None in j) for j in value])
  pts = [j if ok else [0.0, 0.0] for j, ok in zip(value, valid, strict=True)]
  return common.as_array(pts, (hand.NUM_JOINTS, 2), where, "uv"), valid


def parse_box(value, where):
  box = common.as_array(value, (4,), where, "box")
  if not (box[2] > box[0] and box[3] > box[1]):
    raise common.DataError(f"{where}: box {box.tolist()} must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
  return box


class ImageFolder:
  """Records of the images under `root`; `annotations` is a JSON path (or an already loaded dict)."""

  def __init__(self, root, annotations=None, K=None):
    self.root = common.require_dir(root, "image folder")
    self.paths = list_images(root)
    if not self.paths:
      raise common.DataError(f"no images with extensions {common.IMAGE_EXTENSIONS} under {root!r}")
    self.K = common.DEFAULT_K if K is None else common.as_array(K, (3, 3), "ImageFolder", "K")
    self.uv, self.valid, self.box = {}, {}, {}
    if annotations is not None:
      self._load_annotations(annotations)

  def _load_annotations(self, annotations):
    if isinstance(annotations, dict):
      src, ann = "annotations", annotations
    else:
      src = os.fspath(annotations)
      ann = common.load_json(src, "image folder annotations")
    if not isinstance(ann, dict):
      raise common.DataError(f"{src}: expected a JSON object mapping image paths to annotations")
    known = set(self.paths)
    missing = [k for k in ann if os.path.normpath(k).replace(os.sep, "/") not in known]
    if missing:
      raise common.DataError(
        f"{src}: {len(missing)} annotated images not found under {self.root!r}: "
        f"{[os.path.join(self.root, m) for m in missing[:5]]}"
      )
    for key, a in ann.items():
      rel = os.path.normpath(key).replace(os.sep, "/")
      where = f"{src}[{key!r}]"
      if not isinstance(a, dict) or not ({"uv", "box"} & a.keys()):
        raise common.DataError(f"{where}: expected {{'uv': [[x, y]] * 21}} or {{'box': [x0, y0, x1, y1]}}")
      if "uv" in a:
        self.uv[rel], self.valid[rel] = parse_uv(a["uv"], where)
      if "box" in a:
        self.box[rel] = parse_box(a["box"], where)

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records")
    rel = self.paths[index]
    path = os.path.join(self.root, rel)
    data = common.read_bytes(path)
    uv, valid, box = self.uv.get(rel), self.valid.get(rel), self.box.get(rel)
    size = None
    if box is None and (valid is None or not valid.any()):
      try:  # Only the header is parsed.
        size = Image.open(io.BytesIO(data)).size
      except Exception as e:  # PIL raises several types for bad files.
        raise common.DataError(f"cannot read image size of {path!r}: {e}") from e
    return common.make_record(
      image_path=path, image_bytes=data, index=index, id=index, K=self.K, uv=uv, valid=valid, box=box, image_size=size
    )

  def __repr__(self):
    return f"ImageFolder({self.root!r}, {len(self)} images, {len(self.uv)} with uv, {len(self.box)} with box)"
