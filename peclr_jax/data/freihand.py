"""FreiHAND (and the embedded synthetic set, which writes the same files) as a grain random-access source.

Layout (reference §6.1): `<split>/rgb/%08d.jpg`, `<split>/mask/%08d.jpg`, `<split>_xyz.json` (metres, camera
frame), `<split>_K.json`, `<split>_scale.json`. Training images come in versions: file index = id + n_ids * v
(FreiHAND: n_ids = 32560, 4 versions); labels and masks are indexed by id.
"""

import os

import numpy as np

from peclr_jax.data import common

SPLITS = ("training", "evaluation")


def split_ids(n_ids, val_fraction, seed):
  """Deterministic train/val split over *unique* ids, so all versions of a hand stay on one side."""
  perm = np.random.default_rng(seed).permutation(n_ids)
  n_val = int(round(n_ids * val_fraction))
  return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class FreiHand:
  """Records of one FreiHAND split; `ids` / `versions` select a subset (default: all)."""

  def __init__(self, root, split="training", ids=None, versions=None, with_mask=False):
    if split not in SPLITS:
      raise common.DataError(f"FreiHAND split must be one of {SPLITS}, got {split!r}")
    self.root, self.split, self.with_mask = root, split, with_mask
    common.require_dir(root, "FreiHAND root")
    self.rgb_dir = common.require_dir(os.path.join(root, split, "rgb"), f"FreiHAND {split} images")
    self.mask_dir = os.path.join(root, split, "mask")
    ann = lambda name: os.path.join(root, f"{split}_{name}.json")
    self.K = self._load(ann("K"), (None, 3, 3), "K")
    n = len(self.K)
    self.scale = self._load(ann("scale"), (n,), "scale")
    xyz_path = ann("xyz")
    # The public evaluation release may come without xyz: then records have no 3D labels.
    if split == "training":
      common.require_file(xyz_path, "FreiHAND training labels")
    self.xyz = self._load(xyz_path, (n, 21, 3), "xyz") if os.path.exists(xyz_path) else None
    n_images = sum(1 for f in os.listdir(self.rgb_dir) if f.endswith(".jpg"))
    if n_images == 0 or n_images % n:
      raise common.DataError(
        f"{self.rgb_dir} holds {n_images} .jpg images but {ann('K')} has {n} entries: expected a positive "
        f"multiple of {n} (one image per id and version)"
      )
    self.n_ids, self.n_versions = n, n_images // n
    for i in (0, n_images - 1):
      common.require_file(self.image_path(i), f"FreiHAND {split} image {i} (files must be numbered %08d.jpg)")
    self.ids = np.arange(n) if ids is None else np.asarray(ids, np.int64)
    self.versions = np.arange(self.n_versions) if versions is None else np.asarray(versions, np.int64)
    if self.ids.size and (self.ids.min() < 0 or self.ids.max() >= n):
      raise common.DataError(f"FreiHAND ids must lie in [0, {n}), got range [{self.ids.min()}, {self.ids.max()}]")
    if self.versions.size and (self.versions.min() < 0 or self.versions.max() >= self.n_versions):
      raise common.DataError(f"{self.rgb_dir} has versions 0..{self.n_versions - 1}, asked for {self.versions}")

  @staticmethod
  def _load(path, shape, what):
    value = common.load_json(path, f"FreiHAND {what}")
    if shape[0] is not None and len(value) != shape[0]:
      raise common.DataError(f"{path}: {len(value)} entries, expected {shape[0]} (one per id, as in the K file)")
    return common.as_array(value, shape, path, what)

  def image_path(self, file_index):
    return os.path.join(self.rgb_dir, f"{file_index:08d}.jpg")

  def mask_path(self, id):
    return os.path.join(self.mask_dir, f"{id:08d}.jpg")

  def __len__(self):
    return len(self.ids) * len(self.versions)

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records")
    id = int(self.ids[index % len(self.ids)])
    file_index = id + self.n_ids * int(self.versions[index // len(self.ids)])
    xyz = None if self.xyz is None else self.xyz[id]
    record = common.make_record(
      image_path=self.image_path(file_index),
      index=index,
      id=id,
      xyz=xyz,
      K=self.K[id],
      scale=self.scale[id],
      image_size=(224, 224),
    )
    if self.with_mask:
      record["mask_bytes"] = common.read_bytes(self.mask_path(id))
    return record

  def __repr__(self):
    return (
      f"FreiHand({self.root!r}, {self.split}, {len(self.ids)} ids x {len(self.versions)} versions"
      f" = {len(self)} records)"
    )
