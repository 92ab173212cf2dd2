"""TFDS builder of InterHand2.6M single hands (reference §6.2) from a local copy, as array_record, no TF.

Splits: those of train / val / test whose `annotations/<split>/InterHand2.6M_<split>_data.json` exists.
Examples are the records of `interhand.InterHand(root, split)` with the default options (single right and left
hands, left ones mirrored with `flip` set, all 21 joints labelled), stored in its order, so position i of a
split is `InterHand(root, split)[i]`. Features are `ptfds.record_features()` (raw JPEG bytes, no
`tfds.features.Image`, which needs TensorFlow). Build with `peclr_jax.data.tfds.build(Interhand26m, ...)` or
`tfds build peclr_jax/data/tfds/interhand26m.py --manual_dir=ROOT --file_format=array_record`; read with
`tfds.builder_from_directory(dir).as_data_source(split)` or `ptfds.TfdsSource`.
"""

import os

from peclr_jax.data import interhand
from peclr_jax.data import tfds as ptfds

tfds = ptfds.require_tfds()


class Interhand26m(tfds.core.GeneratorBasedBuilder):
  """InterHand2.6M single hands: the raw JPEG frame and one hand's labels (see `common.make_record`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Single right and left hands in FreiHAND order, left hands mirrored."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download InterHand2.6M (5 fps, v1.0) from https://mks0601.github.io/InterHand2.6M/ and pass the root "
    "holding annotations/<split>/InterHand2.6M_<split>_{data,camera,joint_3d}.json and images/<split>/ as "
    "manual_dir."
  )

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__.splitlines()[0],
      features=ptfds.record_features(),
      homepage="https://mks0601.github.io/InterHand2.6M/",
      disable_shuffling=True,  # Position i stays InterHand(root, split)[i].
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    splits = [s for s in interhand.SPLITS if os.path.isfile(interhand.annotation_path(root, s, "data"))]
    if not splits:
      want = interhand.annotation_path("", "<split>", "data")
      raise FileNotFoundError(f"manual_dir {root!r} has no {want} for any of {interhand.SPLITS}")
    return {s: self._generate_examples(root, s) for s in splits}

  def _generate_examples(self, root, split):
    src = interhand.InterHand(root, split)
    for i in range(len(src)):
      yield i, ptfds.to_example(src[i], root)
