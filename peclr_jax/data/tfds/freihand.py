"""TFDS builder of FreiHAND (reference §6.1) from a local copy, as array_record, readable without TensorFlow.

Splits: `train` = every training image (all ids x versions, in `FreiHand` order: position = file index) and
`evaluation` when `evaluation/rgb` exists (without 3D labels if `evaluation_xyz.json` is absent). Examples are
stored in generation order (no key shuffling), so position i of a split is `FreiHand(root, split)[i]`; the
evaluation order is the order of the prediction file. Build with `peclr_jax.data.tfds.build(Freihand, ROOT,
DATA_DIR)`; the `tfds build` CLI imports TensorFlow.
"""

import os

from peclr_jax.data import freihand
from peclr_jax.data import tfds as ptfds

tfds = ptfds.require_tfds()

SPLITS = {"train": "training", "evaluation": "evaluation"}


class Freihand(tfds.core.GeneratorBasedBuilder):
  """FreiHAND v2: raw JPEG bytes with xyz, uv, K, scale and box labels (see `common.make_record`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Raw JPEGs and labels of training (all versions) and evaluation."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download FreiHAND_pub_v2 (and optionally FreiHAND_pub_v2_eval) from "
    "https://lmb.informatik.uni-freiburg.de/projects/freihand/ and pass the root holding training/rgb, "
    "training_{xyz,K,scale}.json (and evaluation/rgb, evaluation_{K,scale}[,_xyz].json) as manual_dir."
  )

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__.splitlines()[0],
      features=ptfds.record_features(),
      homepage="https://lmb.informatik.uni-freiburg.de/projects/freihand/",
      disable_shuffling=True,  # Keep FreiHAND's order (the evaluation protocol depends on it).
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    return {
      name: self._generate_examples(root, split)
      for name, split in SPLITS.items()
      if split == "training" or os.path.isdir(os.path.join(root, split, "rgb"))
    }

  def _generate_examples(self, root, split):
    src = freihand.FreiHand(root, split)
    for i in range(len(src)):
      yield i, ptfds.to_example(src[i], root)
