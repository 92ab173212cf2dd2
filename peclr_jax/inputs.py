"""A config's input: the data source `config.data` names, its batches, and the run length in steps.

src = inputs.source(config.data, "training")   # the embedded set is rendered first when missing
it = iter(inputs.dataset(config, src))         # batches of config.batch_size host crops
"""

import math

import jax

from peclr_jax import validate
from peclr_jax.data import freihand, pipeline, synthetic
from peclr_jax.errors import ConfigError

SOURCES = ("synthetic", "freihand", "interhand", "folder")

# config.data, as the pretraining and probe configs share it.
RULES = {
  "name": validate.one_of(SOURCES),
  "root": validate.TEXT,
  "synthetic_train": validate.COUNT,
  "synthetic_eval": validate.integer(0),
  "synthetic_seed": validate.integer(),
  "synthetic_versions": validate.COUNT,
  "synthetic_style": validate.one_of(tuple(synthetic.STYLES)),
  "val_fraction": validate.number(0, 1, hi_open=True),
  "mix_roots": validate.PATHS,
  "host_size": validate.COUNT,
  "host_margin": validate.POSITIVE,
  "workers": validate.integer(0),
  "threads": validate.COUNT,
  "skip_corrupt": validate.BOOL,
}


def source(data, split: str = "training"):
  """The source named by config.data (the embedded set is rendered first when missing)."""
  if data.name == "synthetic":
    synthetic.generate(
      data.root,
      data.synthetic_train,
      data.synthetic_eval,
      data.synthetic_seed,
      data.synthetic_versions,
      style=synthetic.STYLES[data.synthetic_style](),
      progress=jax.process_index() == 0,
    )
    data = dict(data, name="freihand")
  if data["name"] == "freihand":
    src = freihand.FreiHand(data["root"], split)
    if split == "training" and data["val_fraction"] > 0:
      train_ids, _ = freihand.split_ids(src.n_ids, data["val_fraction"], seed=0)
      src = freihand.FreiHand(data["root"], split, ids=train_ids)
    extra = tuple(data.get("mix_roots", ())) if split == "training" else ()
    if extra:  # more FreiHAND-layout sets, mixed 1:1:... with replacement (the reference's FreiHAND + YT3D)
      from peclr_jax.data import mix

      sources = [src, *(freihand.FreiHand(r, split) for r in extra)]
      src = mix.Mix(sources, [1.0] * len(sources), num_records=sum(len(x) for x in sources), seed=0)
    return src
  if data["name"] == "interhand":
    from peclr_jax.data import interhand

    return interhand.InterHand(data["root"], {"training": "train", "evaluation": "test"}[split])
  if data["name"] == "folder":
    from peclr_jax.data import folder

    return folder.ImageFolder(data["root"])
  raise ConfigError(f"config.data.name={data['name']!r}: expected one of {', '.join(SOURCES)}")


def dataset(config, src, shuffle=True, num_epochs=None, batch_size=None, drop_remainder=True):
  """Batches of `src` (config.batch_size by default) as config.data and config.seed set them."""
  d = config.data
  return pipeline.dataset(
    src,
    batch_size or config.batch_size,
    size=d.host_size,
    margin=d.host_margin,
    seed=config.seed,
    shuffle=shuffle,
    num_epochs=num_epochs,
    workers=d.workers,
    threads=d.threads,
    skip_corrupt=d.skip_corrupt,
    drop_remainder=drop_remainder,
  )


def check_duration(config):
  if config.total_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError(
      f"config.total_steps={config.total_steps} and config.num_epochs={config.num_epochs}: expected "
      "total_steps > 0 or num_epochs > 0"
    )


def total_steps(config, n_records):
  """config.total_steps, or num_epochs over `n_records` in batches of config.batch_size."""
  if config.total_steps > 0:
    return int(config.total_steps)
  return max(1, int(math.ceil(config.num_epochs * n_records / config.batch_size)))
