"""Optional TFDS (array_record) builds of the datasets, written and read without TensorFlow (reference §8.7).

Builders (`freihand.Freihand`, ...) store each record of `common.make_record` minus `index` under the same
feature names (`record_features`), with `image_path` relative to the manual dir and the raw image bytes, so
`TfdsSource` can read any of them back into records without the builder class:

  from peclr_jax.data import tfds as ptfds
  from peclr_jax.data.tfds import freihand
  builder_dir = ptfds.build(freihand.Freihand, manual_dir="/data/FreiHAND_pub_v2", data_dir="/data/tfds")
  src = ptfds.TfdsSource("/data/tfds", "train", name="freihand")  # or TfdsSource(builder_dir, "train")

tensorflow_datasets is imported only when a builder module is imported or a source is opened.
"""

import os
import re

import numpy as np

from peclr_jax import hand
from peclr_jax.data import common

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def require_tfds():
  """Returns the `tensorflow_datasets` module, or raises a DataError saying how to install it."""
  try:
    import array_record  # noqa: F401  (writes and reads the array_record format)
    import importlib_resources  # noqa: F401  (builders need it; tfds 4.9.10 omits it, tensorflow/datasets#11212)
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise common.DataError(
      f"TFDS datasets need tensorflow_datasets, array_record and importlib_resources ({e}): "
      "pip install 'peclr_jax[tfds]'"
    ) from e
  return tfds


_J = hand.NUM_JOINTS
# The record fields a builder stores (all but `index`, the position in the split): name -> (shape, dtype).
# Plain Tensors only, so building and reading need no TensorFlow; object scalars hold bytes (image, path).
FIELDS = dict(
  image_bytes=((), np.object_),
  image_path=((), np.object_),
  xyz=((_J, 3), np.float32),
  uv=((_J, 2), np.float32),
  valid=((_J,), np.bool_),
  has_xyz=((), np.bool_),
  K=((3, 3), np.float32),
  scale=((), np.float32),
  box=((4,), np.float32),
  id=((), np.int64),
  flip=((), np.bool_),
)


def record_features():
  tfds = require_tfds()
  return tfds.features.FeaturesDict(
    {k: tfds.features.Tensor(shape=shape, dtype=dtype) for k, (shape, dtype) in FIELDS.items()}
  )


def to_example(record, root):
  """A record as a TFDS example; `image_path` becomes relative to `root` (build-machine paths are moot)."""
  ex = {k: record[k] for k in FIELDS}
  ex["image_path"] = os.path.relpath(record["image_path"], os.fspath(root)).replace(os.sep, "/").encode()
  return ex


def build(builder_cls, manual_dir, data_dir, **kwargs):
  """Builds `builder_cls` from `manual_dir` into `data_dir` as array_record; returns the builder directory."""
  tfds = require_tfds()
  common.require_dir(os.fspath(manual_dir), f"{builder_cls.__name__} manual_dir")
  builder = builder_cls(data_dir=os.fspath(data_dir), file_format="array_record", **kwargs)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return os.fspath(builder.data_dir)


def find_builder_dir(path, name=None):
  """Resolves a builder dir (`<data_dir>/<name>[/<config>]/<version>`) from it, a dataset dir or a data dir.

  Takes the newest version; `name` picks the dataset when the data dir holds several.
  """
  path = os.fspath(path)
  common.require_dir(path, "TFDS data")
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    return path
  found = {}  # dataset (relative dir) -> [versioned builder dirs]
  for dirpath, dirnames, filenames in os.walk(path):
    depth = 0 if dirpath == path else os.path.relpath(dirpath, path).count(os.sep) + 1
    if depth >= 3:
      dirnames.clear()
    if "dataset_info.json" in filenames and _VERSION.match(os.path.basename(dirpath)):
      found.setdefault(os.path.relpath(os.path.dirname(dirpath), path), []).append(dirpath)
  if name is not None:
    found = {k: v for k, v in found.items() if name in k.split(os.sep)}
  if not found:
    what = f"dataset {name!r}" if name else "datasets"
    raise common.DataError(f"no built TFDS {what} (<name>/<version>/dataset_info.json) under {path!r}")
  if len(found) > 1:
    raise common.DataError(f"{path!r} holds several TFDS datasets {sorted(found)}: pass name=")
  (dirs,) = found.values()
  return max(dirs, key=lambda d: tuple(int(x) for x in os.path.basename(d).split(".")))


def _scalar(x):
  return x.item() if isinstance(x, np.ndarray) else x


class TfdsSource:
  """Records of one split of a built TFDS dataset (`split` may be a TFDS slice such as "train[:10%]").

  `path` is a builder dir, a dataset dir or a data dir (see `find_builder_dir`). The returned records have
  the keys and dtypes of `common.make_record`; `index` is the position in the split. Builders name the
  encoded image `image_bytes` (or `image`) and its path `image_path` (or `file_name`); features outside the
  record schema are passed through as numpy values.
  """

  def __init__(self, path, split, name=None):
    tfds = require_tfds()
    self.builder_dir, self.split = find_builder_dir(path, name), split
    splits = tfds.builder_from_directory(self.builder_dir).info.splits
    if split.split("[")[0] not in splits:
      raise common.DataError(f"{self.builder_dir}: no split {split!r}, it has {sorted(splits)}")
    self._ds = None
    self._len = len(self._source())

  def _source(self):
    if self._ds is None:  # Opened lazily, so that pickled copies (grain workers) reopen the files.
      tfds = require_tfds()
      self._ds = tfds.builder_from_directory(self.builder_dir).as_data_source(split=self.split)
    return self._ds

  def __getstate__(self):
    return {**self.__dict__, "_ds": None}

  def __len__(self):
    return self._len

  def _record(self, ex, index):
    ex = dict(ex)
    pop = lambda *keys, default=None: next((ex.pop(k) for k in keys if k in ex), default)
    has_xyz, xyz = bool(pop("has_xyz", default="xyz" in ex)), pop("xyz")
    path = _scalar(pop("image_path", "file_name", default=f"{self.builder_dir}[{self.split}][{index}]"))
    record = common.make_record(
      image_path=path.decode() if isinstance(path, bytes) else path,
      image_bytes=bytes(_scalar(pop("image_bytes", "image"))),
      index=index,
      id=pop("id", default=index),
      xyz=xyz if has_xyz else None,
      K=pop("K"),
      uv=pop("uv"),
      valid=pop("valid"),
      scale=pop("scale"),
      box=pop("box"),
      flip=bool(pop("flip", default=False)),
    )
    # Features outside the record schema pass through, as the raw sources return them.
    record.update({k: np.asarray(v)[()] if np.ndim(v) == 0 else np.asarray(v) for k, v in ex.items()})
    return record

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} out of range for {self._len} records")
    return self._record(self._source()[index], index)

  def __getitems__(self, indices):
    indices = [int(i) for i in indices]
    return [self._record(ex, i) for ex, i in zip(self._source().__getitems__(indices), indices, strict=True)]

  def __repr__(self):
    return f"TfdsSource({self.builder_dir!r}, {self.split!r}, {self._len} records)"
