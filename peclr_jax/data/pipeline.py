"""The grain input pipeline: source -> shuffle/repeat -> this process's share -> decode -> hand crop -> batch.

The host does only what must happen per record in Python (JPEG decode, one affine crop to a fixed size); all
augmentation runs on device inside the jitted step. Each process reads a contiguous block of every global
batch, so the global batch is the same whatever the process count, and the iterator state (grain's
`get_state`/`set_state`) checkpoints the position exactly.
"""

import io
import logging

import grain
import numpy as np
from PIL import Image

from peclr_jax.data import common


def decode(record):
  """Decodes `image_bytes` to `image` uint8 [H, W, 3] (mirrored when `flip`); names the file if it is corrupt."""
  try:
    with Image.open(io.BytesIO(record["image_bytes"])) as im:
      im.load()  # forces the full decode: truncated files fail here, not later
      image = im.convert("RGB")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise common.DataError(f"corrupt or unreadable image {record['image_path']!r}: {e}") from e
  if record.get("flip", False):
    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  sample = {k: v for k, v in record.items() if k not in ("image_bytes", "image_path")}
  sample["image"] = np.asarray(image)
  return sample


class _Decode:
  """`decode`; with skip_corrupt a corrupt record is replaced by the next readable one of the source (logged, and
  counted in the sample's `skipped`, so the count survives worker processes), so batches keep their shape and stay
  deterministic."""

  def __init__(self, source, skip_corrupt):
    self.source, self.skip_corrupt = source, skip_corrupt

  def __call__(self, record):
    for k in range(1, 101):
      try:
        sample = decode(record)
        if self.skip_corrupt:
          sample["skipped"] = np.int32(k - 1)
        return sample
      except common.DataError as e:
        if not self.skip_corrupt:
          raise
        logging.warning("%s; replaced by the next record", e)
        record = self.source[(int(record["index"]) + k) % len(self.source)]
    raise common.DataError(f"100 corrupt images in a row in {self.source!r}")


def crop_transform(box, size, margin):
  """3x3 affine T taking image pixels to a size x size square crop around `box`, its side margin * max(w, h)."""
  x0, y0, x1, y1 = (float(b) for b in box)
  side = max(x1 - x0, y1 - y0, 1.0) * margin
  s = size / side
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  return np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy], [0, 0, 1]])


def crop(sample, size, margin):
  """Hand-centred square crop resized to size x size; uv and K follow (K' = T K), xyz is unchanged.

  Pixel coordinates are continuous (pixel i covers [i, i+1)), the convention of FreiHAND's K (cx = 112 for 224).
  Areas outside the image are black, as in the reference.
  """
  T = crop_transform(sample["box"], size, margin)
  s, tx, ty = T[0, 0], T[0, 2], T[1, 2]
  image = Image.fromarray(sample["image"])
  # Source box of the crop; pad the image where the box leaves it (PIL's resize needs a box inside the image).
  x0, y0, side = -tx / s, -ty / s, size / s
  w, h = image.size
  pad = int(np.ceil(max(0, -x0, -y0, x0 + side - w, y0 + side - h))) + 1
  if pad > 1:
    canvas = Image.new("RGB", (w + 2 * pad, h + 2 * pad))
    canvas.paste(image, (pad, pad))
    image, x0, y0 = canvas, x0 + pad, y0 + pad
  # resize(box=...) filters over the source area, so large boxes are antialiased rather than point-sampled.
  out = image.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
  sample = dict(sample)
  del sample["box"]
  sample["image"] = np.asarray(out)
  sample["uv"] = (sample["uv"] * s + [tx, ty]).astype(np.float32)
  sample["K"] = (T @ sample["K"]).astype(np.float32)
  return sample


class _BlockShard:
  """This process's records of a (shuffled, repeated) dataset: a contiguous block of every global batch."""

  def __init__(self, base, global_batch, index, count):
    if global_batch % count:
      raise ValueError(f"global batch {global_batch} does not split over {count} processes")
    self.base, self.local, self.index, self.count = base, global_batch // count, index, count

  def __len__(self):
    # Full global batches, then this process's block of a partial last one (grain wraps indices past the end).
    b, r = divmod(len(self.base), self.local * self.count)
    return b * self.local + min(max(r - self.index * self.local, 0), self.local)

  def __getitem__(self, i):
    b, k = divmod(i, self.local)
    return self.base[b * self.local * self.count + self.index * self.local + k]


def dataset(
  source,
  batch_size,
  *,
  size=128,
  margin=1.5,
  seed=0,
  shuffle=True,
  num_epochs=None,
  workers=0,
  threads=4,
  skip_corrupt=False,
  process_index=None,
  process_count=None,
  drop_remainder=True,
):
  """A grain IterDataset of batches (dicts of stacked numpy arrays) from a random-access `source`.

  `batch_size` is global; each of `process_count` processes (default: jax's) yields batch_size / count records
  per batch. `num_epochs=None` repeats forever, reshuffling each epoch; `workers` > 0 decodes in processes.
  """
  if process_index is None or process_count is None:
    import jax

    process_index, process_count = jax.process_index(), jax.process_count()
  if len(source) == 0:
    raise common.DataError(f"{source!r} has no records")
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.seed(seed).shuffle()
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  if process_count > 1:
    ds = grain.MapDataset.source(_BlockShard(ds, batch_size, process_index, process_count))
  ds = ds.map(_Decode(source, skip_corrupt)).map(lambda s: crop(s, size, margin))
  # Batch before the workers split the stream, so batches do not depend on the worker count.
  ds = ds.batch(batch_size // process_count, drop_remainder=drop_remainder)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads))
  if workers:
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; we are not run by absl.app
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it


def verify(source, limit=None, progress=False):
  """Decodes every record (or the first `limit`) up front, so a corrupt file fails before training starts."""
  from tqdm import tqdm

  n = len(source) if limit is None else min(limit, len(source))
  for i in tqdm(range(n), desc="verifying images", disable=not progress):
    decode(source[i])
  return n
