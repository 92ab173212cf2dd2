"""A frozen encoder as a library: load an exported encoder (or a random init), compute pooled features of a split's
evaluation crops, and read them out in closed form (ridge regression), for the probes that train nothing
(knn.py, equivariance.py) and for the probe trainer's encoder hand-over.

  config = configs.load("probe:linear,cpu"); config.encoder = "runs/peclr_cpu"   # "" = random init
  variables = features.encoder_variables(config)    # {"params", "batch_stats"} of the encoder alone
  f = features.extract(config, variables, "evaluation")   # f["f"] [N, D], with the 2.5-D targets and labels

The crops are evaluate.py's protocol: centred on the ground-truth keypoints at the training margin, no rotation,
jitter or colour. A random-init encoder is the probe trainer's random-init baseline: the same initialisation key
and the same BatchNorm calibration on `random_init_bn_steps` training batches.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from peclr_jax import augment, checkpoint, inputs, keypoints, models, validate
from peclr_jax.errors import TrainingError

ARCH_KEYS = ("name", "width", "small_stem")
EXTRACT_KEYS = ("image", "uv", "K", "valid", "xyz", "scale")
CALIBRATE_KEYS = ("image", "uv", "K", "valid", "xyz", "has_xyz")
# The sections of a probe config these tools read (the trainer checks the rest).
RULES = {
  "encoder": validate.TEXT,
  "seed": validate.integer(),
  **validate.under("data", inputs.RULES),
  **validate.under("model", models.RULES),
  **validate.under("keypoints", keypoints.KEYPOINT_RULES),
  **validate.under("augment", augment.RULES),
  "batch_size": validate.COUNT,
  "random_init_bn_steps": validate.integer(0),
}


# ---------------------------------------------------------------------------------------------------------------
# The encoder.
# ---------------------------------------------------------------------------------------------------------------
def encoder_dir(path):
  """A pretraining workdir or an exported encoder directory -> the directory holding model.json."""
  for d in (os.path.join(path, "encoder"), path):
    if os.path.isfile(os.path.join(d, "model.json")):
      return d
  raise TrainingError(
    f"config.encoder={path!r}: no exported encoder (expected {os.path.join(path, 'encoder')}/"
    "model.json, which pretraining writes when it finishes)"
  )


def load_encoder(path, config, abstract):
  """The exported encoder's (params, batch_stats), checked against config.model and the shapes in `abstract`
  (the keypoint model's variables, whose `encoder` subtree the export must fill)."""
  d = encoder_dir(path)
  variables, arch = checkpoint.load_encoder(d)
  diff = [
    f"{k}: encoder {arch.get(k)!r} vs config {config.model[k]!r}" for k in ARCH_KEYS if arch.get(k) != config.model[k]
  ]
  if diff:
    fix = " ".join(f"--config.model.{k}={arch.get(k)}" for k in ARCH_KEYS if arch.get(k) != config.model[k])
    raise TrainingError(
      f"encoder {d} does not match config.model ({'; '.join(diff)}); pass {fix} or use the "
      "probe config of the pretraining size"
    )
  for col in ("params", "batch_stats"):
    want = jax.tree_util.tree_flatten_with_path(abstract[col]["encoder"])[0]
    have = dict(jax.tree_util.tree_flatten_with_path(variables[col])[0])
    for path_, leaf in want:
      got = have.get(path_)
      if got is None or tuple(got.shape) != tuple(leaf.shape):
        name = "/".join(str(getattr(p, "key", p)) for p in path_)
        raise TrainingError(
          f"encoder {d}: {col}/{name} is {None if got is None else tuple(got.shape)}, the model "
          f"expects {tuple(leaf.shape)}"
        )
  return variables["params"], variables["batch_stats"]


def encoder_variables(config, progress=False) -> dict:
  """{"params", "batch_stats"} of the encoder `config.encoder` names (a probe config), or of a random init."""
  validate.check(config, RULES)
  model = keypoints.make_model(config)
  size = config.augment.out_size
  key = jax.random.key(config.seed, impl="rbg")  # the probe trainer's initialisation key

  def init(k):
    return model.init(k, jnp.zeros((2, size, size, 3)), jnp.tile(jnp.eye(3), (2, 1, 1)), train=True)

  if config.encoder:
    params, stats = load_encoder(config.encoder, config, jax.eval_shape(init, key))
    return {"params": params, "batch_stats": stats}
  v = jax.jit(init)(key)
  variables = {"params": v["params"]["encoder"], "batch_stats": v["batch_stats"]["encoder"]}
  if config.random_init_bn_steps > 0:
    variables = calibrate(config, variables, config.random_init_bn_steps, progress)
  return variables


def calibrate(config, variables, steps, progress=False):
  """BatchNorm statistics of an encoder from `steps` augmented training batches (as the probe trainer's random init)."""
  enc = models.encoder(config.model)
  src = inputs.source(config.data, "training")
  it = iter(inputs.dataset(config, src, batch_size=config.batch_size))
  key = jax.random.key(config.seed + 1)

  @jax.jit
  def update(stats, batch, i):
    x, _, _, _, _ = augment.augment(jax.random.fold_in(key, i), batch, config.augment)
    _, new = enc.apply({"params": variables["params"], "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
    return new["batch_stats"]

  stats = variables["batch_stats"]
  for i in tqdm(range(steps), desc="BatchNorm statistics", disable=not progress):
    stats = update(stats, {k: v for k, v in next(it).items() if k in CALIBRATE_KEYS}, i)
  return {"params": variables["params"], "batch_stats": stats}


# ---------------------------------------------------------------------------------------------------------------
# Features of a split.
# ---------------------------------------------------------------------------------------------------------------
def batches(config, src, batch_size, limit=None):
  """(batch, n) over `src` in source order, every batch padded to `batch_size` rows (so one compile serves all);
  the first n rows are real."""
  seen = 0
  for b in inputs.dataset(config, src, shuffle=False, num_epochs=1, batch_size=batch_size, drop_remainder=False):
    n = len(b["index"])
    if limit is not None:
      n = min(n, limit - seen)
    if n <= 0:
      break
    pad = batch_size - len(b["index"])
    if pad:
      b = {k: np.concatenate([v, np.repeat(np.asarray(v)[-1:], pad, 0)]) for k, v in b.items()}
    yield b, n
    seen += n


def extract(config, variables, split="evaluation", batch_size=100, limit=None, progress=False) -> dict:
  """The encoder's pooled features of a split's evaluation crops, in source order, as numpy arrays:

  f [N, D] float64; uv [N, 21, 2] ground truth in crop pixels; z_rel [N, 21] the 2.5-D depth target; K [N, 3, 3]
  the crop's intrinsics; s [N] the reference bone's length (FreiHAND's `scale` for the middle bone when known, else
  the ground truth's, as evaluate.py scores); xyz, valid, has_xyz, id, index from the records.
  """
  enc = models.encoder(config.model)
  aug = keypoints.eval_augment(config)
  kp = config.keypoints

  @jax.jit
  def run(batch):
    x, uv, K, _, _ = augment.augment(jax.random.key(0), batch, aug)
    tgt = keypoints.targets(batch["xyz"], K, kp)
    given = (batch["scale"] > 0) & (kp.bone == "middle")
    s = jnp.where(given, batch["scale"], tgt["s"])
    f = enc.apply(variables, x, train=False).astype(jnp.float32)
    return dict(f=f, uv=uv, z_rel=tgt["z_rel"], K=K, s=s)

  src = inputs.source(config.data, split)
  keys = ("xyz", "valid", "has_xyz", "id", "index")
  out = {k: [] for k in ("f", "uv", "z_rel", "K", "s", *keys)}
  total = len(src) if limit is None else min(limit, len(src))
  with tqdm(total=total, desc=f"features {split}", disable=not progress) as bar:
    for b, n in batches(config, src, batch_size, limit):
      r = jax.device_get(run({k: b[k] for k in EXTRACT_KEYS}))
      for k, v in (*r.items(), *((k, b[k]) for k in keys)):
        out[k].append(np.asarray(v)[:n])
      bar.update(n)
  out = {k: np.concatenate(v) for k, v in out.items()}
  out["f"] = out["f"].astype(np.float64)
  return out


def split_ids(ids, fraction, seed=0):
  """A boolean mask over rows: True for the rows of a random `fraction` of the unique ids (at least one id, and at
  least one left out when there are two), so all rows of an id fall on one side."""
  ids = np.asarray(ids)
  unique = np.unique(ids)
  n = int(round(len(unique) * fraction))
  n = min(max(n, 1), max(len(unique) - 1, 1))
  chosen = np.random.default_rng(seed).permutation(unique)[:n]
  return np.isin(ids, chosen)


# ---------------------------------------------------------------------------------------------------------------
# The closed-form linear readout.
# ---------------------------------------------------------------------------------------------------------------
def ridge_fit(x, y, lam):
  """Ridge regression of y [N, T] on standardised x [N, D] with an unpenalised intercept, solved exactly:
  argmin_w mean ||x_s w + b - y||^2 + lam ||w||^2. Returns the model for `ridge_predict`.

  Features with no spread are dropped by the standardisation (they stay 0), so a constant encoder predicts the
  mean. Solved in the dual when D > N.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mu, sd = x.mean(0), x.std(0)
  sd = np.where(sd > 1e-12 * np.maximum(np.abs(mu), 1.0), sd, np.inf)
  xs = (x - mu) / sd
  ym = y.mean(0)
  n, d = xs.shape
  if d <= n:
    w = np.linalg.solve(xs.T @ xs + n * lam * np.eye(d), xs.T @ (y - ym))
  else:
    w = xs.T @ np.linalg.solve(xs @ xs.T + n * lam * np.eye(n), y - ym)
  return dict(mu=mu, sd=sd, w=w, b=ym)


def ridge_predict(model, x):
  return ((np.asarray(x, np.float64) - model["mu"]) / model["sd"]) @ model["w"] + model["b"]
