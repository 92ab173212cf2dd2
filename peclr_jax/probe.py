"""2.5-D keypoint regression on a pretrained encoder: linear / MLP probes, fine-tuning, supervised from scratch.

  python -m peclr_jax.probe --config=configs/probe.py:linear,cpu --config.encoder=runs/main/pretrain \
      --workdir=runs/probe_linear

The regressor predicts, per joint, (u, v) in pixels of the crop and z_rel = (Z − Z_root) / s, the root-relative
depth over the reference bone's length (reference §4); metric 3-D comes from `geometry.from_25d`. Training follows
the reference's linear-evaluation / fine-tuning recipe (§3.3): random rotation + crop jitter at a fixed margin
(no colour), L1 on (u, v) in crop pixels + 5 · L1 on z_rel (+ L1 on the normalised root depth with the refinement
MLP), Adam with coupled weight decay on kernels and a cosine schedule. Evaluation crops without augmentation.

Modes (`configs/probe.py:MODE[,SIZE]`):
  linear    frozen encoder (BatchNorm in inference mode), one linear layer -> 21 x 3
  mlp       frozen encoder, an MLP head
  finetune  the pretrained encoder trained end to end with a linear head
  scratch   random init trained end to end: the supervised baseline
  label_fraction   fine-tune (or scratch without an encoder) on 1 %, 10 %, 100 % of the labelled ids, one run each
A frozen encoder with no `config.encoder` is the random-init baseline; its BatchNorm statistics are first estimated
on training batches (`random_init_bn_steps`), since init statistics (mean 0, var 1) would make it a strawman.
The trainer checkpoints, logs, resumes and guards against NaN like pretraining, then evaluates (`evaluate.py`).
"""

import dataclasses
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from peclr_jax import augment, checkpoint, geometry, models, optim, pretrain, sharding
from peclr_jax.data import freihand
from peclr_jax.models import heads

MODES = ("linear", "mlp", "finetune", "scratch", "label_fraction")
TrainingError = pretrain.TrainingError
TrainState = pretrain.TrainState
DEVICE_KEYS = ("image", "uv", "K", "valid", "xyz", "has_xyz")


# ---------------------------------------------------------------------------------------------------------------
# Model: encoder -> (feature norm) -> linear or MLP head -> 21 x (u, v, z_rel) [-> root-depth refinement].
# ---------------------------------------------------------------------------------------------------------------
class Regressor(nn.Module):
  model: ml_collections.ConfigDict  # the encoder's architecture (configs' `model`)
  head: ml_collections.ConfigDict
  keypoints: ml_collections.ConfigDict
  frozen: bool = False

  @nn.compact
  def __call__(self, x, K, train: bool):
    m = self.model
    encoder = models.encoder(m, name="encoder")
    # A frozen encoder runs in inference mode and under stop_gradient: its backward pass is never built.
    h = encoder(x, train=train and not self.frozen)
    if self.frozen:
      h = jax.lax.stop_gradient(h)
    if self.head.kind == "direct":  # the encoder's own 2.5-D output (the hourglass): u, v in [-1, 1], then z_rel
      if h.shape[-1] != 63:
        raise ValueError(f"head.kind='direct' needs an encoder with 63 outputs (hourglass); {m.name} has {h.shape[-1]}")
      out = vector_to_pose(h)
    elif self.head.feature_norm:  # affine-free BN: still a linear probe, but conditioned (MAE's linear probe)
      h = nn.BatchNorm(use_running_average=not train, use_scale=False, use_bias=False, momentum=0.9, epsilon=1e-6,
                       name="feature_norm")(h)
    if self.head.kind == "linear":
      init = nn.initializers.zeros if self.head.get("zero_init", False) else nn.linear.default_kernel_init
      out = nn.Dense(63, kernel_init=init, name="head")(h).reshape(-1, 21, 3)
    elif self.head.kind == "mlp":
      out = heads.MLPHead(self.head.hidden, 63, name="head")(h, train).reshape(-1, 21, 3)
    pred = decode(out, x.shape[1], self.keypoints.root)
    uv, z_rel = pred["uv"], pred["z_rel"]
    if self.keypoints.refine_root:
      # The refiner learns from detached keypoints, so its loss never bends the keypoint head.
      sg = jax.lax.stop_gradient
      pred["z_root"] = geometry.RootRefiner(name="refiner")(sg(uv), sg(z_rel), K, train, bone=self.keypoints.bone)
    return pred


def vector_to_pose(h):
  """[B, 63] (21 x (u, v), then 21 z_rel; the hourglass's layout) -> [B, 21, 3]."""
  return jnp.concatenate([h[:, :42].reshape(-1, 21, 2), h[:, 42:, None]], -1)


def decode(out, size, root):
  """[B, 21, 3] head output ((u, v) in [-1, 1], z_rel) -> dict(uv in crop pixels, z_rel)."""
  z_rel = out[..., 2]
  if root == "wrist":  # the root's own z_rel is 0 by definition (the reference forces it)
    z_rel = z_rel.at[:, 0].set(0.0)
  return dict(uv=(out[..., :2] + 1) * (size / 2), z_rel=z_rel)


def make_model(config, frozen=None):
  if frozen is None:
    frozen = config.mode in ("linear", "mlp")
  return Regressor(config.model, config.head, config.keypoints, frozen=frozen)


# ---------------------------------------------------------------------------------------------------------------
# Targets, loss and metric-space reconstruction.
# ---------------------------------------------------------------------------------------------------------------
def targets(xyz, K, kp):
  """2.5-D targets of camera-frame joints under intrinsics K (the augmented crop's): z_rel, s, Ẑ_root = Z_root / s."""
  _, z_rel, s = geometry.to_25d(xyz, K, kp.bone, kp.root)
  s_safe = jnp.maximum(s, 1e-6)  # unlabelled samples have xyz = 0; their terms are masked out
  z_root = geometry.root_point(xyz[..., 2:], kp.root)[..., 0] / s_safe
  return dict(z_rel=z_rel, s=s_safe, z_root=z_root)


def keypoint_loss(pred, uv, tgt, valid, has_xyz, kp):
  """(total, measurements): L1 on uv (crop px, ÷2 over coordinates) + w_z · L1 on z_rel (+ w_root · L1 on Ẑ_root)."""
  v = valid.astype(jnp.float32)
  v3 = v * has_xyz[:, None].astype(jnp.float32)
  m = {}
  m["uv_l1"] = jnp.sum(jnp.abs(pred["uv"] - uv) * v[..., None]) / jnp.maximum(2 * v.sum(), 1)
  m["z_l1"] = jnp.sum(jnp.abs(pred["z_rel"] - tgt["z_rel"]) * v3) / jnp.maximum(v3.sum(), 1)
  total = kp.w_uv * m["uv_l1"] + kp.w_z * m["z_l1"]
  if "z_root" in pred:
    h = has_xyz.astype(jnp.float32)
    m["root_l1"] = jnp.sum(jnp.abs(pred["z_root"] - tgt["z_root"]) * h) / jnp.maximum(h.sum(), 1)
    total = total + kp.w_root * m["root_l1"]
  m["epe_2d_px"] = jnp.sum(jnp.linalg.norm(pred["uv"] - uv, axis=-1) * v) / jnp.maximum(v.sum(), 1)
  return total, m


def reconstruct(pred, K, scale, kp):
  """Camera-frame joints (metres when `scale` is the bone's metric length) from a prediction.

  Without a refined root depth, the closed-form Ẑ is clamped to kp.depth_range (bone lengths), as the reference
  clamps it before refinement: a bone predicted nearly end-on would otherwise put the hand kilometres away.
  """
  z_root = pred.get("z_root")
  if z_root is None:
    z_root = jnp.clip(geometry.root_depth(pred["uv"], pred["z_rel"], K, kp.bone)[0],
                      *kp.get("depth_range", geometry.DEPTH_RANGE))
  return geometry.from_25d(pred["uv"], pred["z_rel"], K, kp.bone, kp.root, scale=scale, z_root=z_root)


# ---------------------------------------------------------------------------------------------------------------
# The train step and optimiser.
# ---------------------------------------------------------------------------------------------------------------
def make_optimizer(config, steps, params):
  """Adam + coupled L2 on kernels (torch's weight_decay), cosine to 0 (optional warm-up); frozen encoders get none."""
  o = config.optim
  sched = optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, max(steps, o.warmup_steps + 1)) \
      if o.warmup_steps > 0 else optax.cosine_decay_schedule(o.lr, max(steps, 1))
  tx = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=optim.decay_mask),
                   optax.scale_by_adam(), optax.scale_by_learning_rate(sched))
  frozen = config.mode in ("linear", "mlp")
  labels = {k: ("frozen" if frozen and k == "encoder" else "train") for k in params}
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels), sched


def make_train_step(config, model, tx, sched, base_key):
  aug, kp = config.augment, config.keypoints

  def step_fn(state, batch):
    x, uv, K, _, _ = augment.augment(jax.random.fold_in(base_key, state.step), batch, aug)
    tgt = targets(batch["xyz"], K, kp)

    def loss_fn(params):
      pred, new = model.apply({"params": params, "batch_stats": state.batch_stats}, x, K, train=True,
                              mutable=["batch_stats", "intermediates"])
      loss, m = keypoint_loss(pred, uv, tgt, batch["valid"], batch["has_xyz"], kp)
      stacks = new.get("intermediates", {}).get("encoder", {}).get("stacks", ())
      if config.head.kind == "direct" and len(stacks) > 1:  # the hourglass: supervise every stack (Newell)
        inter = [keypoint_loss(decode(vector_to_pose(h), x.shape[1], kp.root), uv, tgt, batch["valid"],
                               batch["has_xyz"], kp)[0] for h in stacks[:-1]]
        m["intermediate_loss"] = sum(inter) / len(inter)
        loss = loss + sum(inter)
      xyz = reconstruct(pred, K, tgt["s"], kp)
      w = batch["valid"] * batch["has_xyz"][:, None]
      m["epe_3d_mm"] = 1000 * jnp.sum(jnp.linalg.norm(xyz - batch["xyz"], axis=-1) * w) / jnp.maximum(w.sum(), 1)
      return loss, (m, new["batch_stats"])

    (loss, (m, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    m.update(loss=loss, lr=sched(state.step), grad_norm=pretrain.tree_norm(grads),
             param_norm=pretrain.tree_norm(params))
    return TrainState(state.step + 1, params, batch_stats, opt_state), m

  return step_fn


# ---------------------------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------------------------
class Subset:
  """Records `indices` of a source (grain random access)."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]

  def __repr__(self):
    return f"Subset({self.source!r}, {len(self)} records)"


def label_subset(src, fraction, seed=0):
  """The first ⌈fraction · n⌉ of a fixed permutation of the labelled ids (nested: 1 % ⊂ 10 % ⊂ 100 %).

  FreiHAND-style sources are cut by unique id, so all versions of a hand stay together.
  """
  if not 0 < fraction <= 1:
    raise TrainingError(f"config.data.label_fraction={fraction}: expected a fraction in (0, 1]")
  if fraction == 1:
    return src
  if isinstance(src, freihand.FreiHand):
    ids = src.ids[np.random.default_rng(seed).permutation(len(src.ids))]
    keep = np.sort(ids[:max(1, math.ceil(fraction * len(ids)))])
    return freihand.FreiHand(src.root, src.split, ids=keep, versions=src.versions)
  n = len(src)
  return Subset(src, np.sort(np.random.default_rng(seed).permutation(n)[:max(1, math.ceil(fraction * n))]))


def train_source(config):
  return label_subset(pretrain.source(config.data, "training"), config.data.label_fraction)


def eval_augment(config):
  """The evaluation crop: keypoint-centred at the training margin, no rotation, jitter or colour."""
  aug = config.augment.copy_and_resolve_references()
  with aug.unlocked():
    aug.ops = ()
  return aug


# ---------------------------------------------------------------------------------------------------------------
# Encoder hand-over.
# ---------------------------------------------------------------------------------------------------------------
ARCH_KEYS = ("name", "width", "small_stem")


def encoder_dir(path):
  """A pretraining workdir or an exported encoder directory -> the directory holding model.json."""
  for d in (os.path.join(path, "encoder"), path):
    if os.path.isfile(os.path.join(d, "model.json")):
      return d
  raise TrainingError(f"config.encoder={path!r}: no exported encoder (expected {os.path.join(path, 'encoder')}/"
                      "model.json, which pretraining writes when it finishes)")


def load_encoder(path, config, abstract):
  """The exported encoder's (params, batch_stats), checked against config.model and the shapes in `abstract`."""
  d = encoder_dir(path)
  variables, arch = checkpoint.load_encoder(d)
  diff = [f"{k}: encoder {arch.get(k)!r} vs config {config.model[k]!r}" for k in ARCH_KEYS
          if arch.get(k) != config.model[k]]
  if diff:
    fix = " ".join(f"--config.model.{k}={arch.get(k)}" for k in ARCH_KEYS if arch.get(k) != config.model[k])
    raise TrainingError(f"encoder {d} does not match config.model ({'; '.join(diff)}); pass {fix} or use the "
                        "probe config of the pretraining size")
  for col in ("params", "batch_stats"):
    want = jax.tree_util.tree_flatten_with_path(abstract[col]["encoder"])[0]
    have = dict(jax.tree_util.tree_flatten_with_path(variables[col])[0])
    for path_, leaf in want:
      got = have.get(path_)
      if got is None or tuple(got.shape) != tuple(leaf.shape):
        name = "/".join(str(getattr(p, "key", p)) for p in path_)
        raise TrainingError(f"encoder {d}: {col}/{name} is {None if got is None else tuple(got.shape)}, the model "
                            f"expects {tuple(leaf.shape)}")
  return variables["params"], variables["batch_stats"]


# ---------------------------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
  state: TrainState
  metrics: list
  workdir: str


def check_config(config):
  if config.mode not in MODES:
    raise TrainingError(f"config.mode={config.mode!r}: expected one of {MODES}")
  if config.mode in ("finetune",) and not config.encoder:
    raise TrainingError("mode finetune needs --config.encoder=PRETRAIN_WORKDIR (random init is mode scratch)")
  if config.mode == "scratch" and config.encoder:
    raise TrainingError(f"mode scratch trains from random init; drop --config.encoder={config.encoder!r} or use "
                        "finetune")
  if config.head.kind not in ("linear", "mlp", "direct"):
    raise TrainingError(f"config.head.kind={config.head.kind!r}: expected linear, mlp or direct (hourglass)")
  if config.keypoints.bone not in geometry.BONES or config.keypoints.root not in geometry.ROOTS:
    raise TrainingError(f"config.keypoints bone={config.keypoints.bone!r} root={config.keypoints.root!r}: expected "
                        f"bone in {tuple(geometry.BONES)}, root in {tuple(geometry.ROOTS)}")
  pretrain.check_config(config)  # model.dtype, model.conv, augment


def calibrate_bn(model, state, config, src, steps):
  """Running BatchNorm statistics of a random-init encoder from `steps` training batches (no parameter change)."""
  it = iter(pretrain.input_pipeline(config, src, batch_size=config.batch_size))
  calib = Regressor(config.model, config.head, config.keypoints, frozen=False)
  key = jax.random.key(config.seed + 1)

  @jax.jit
  def update(batch_stats, batch, i):
    x, _, K, _, _ = augment.augment(jax.random.fold_in(key, i), batch, config.augment)
    _, new = calib.apply({"params": state.params, "batch_stats": batch_stats}, x, K, train=True,
                         mutable=["batch_stats"])
    return new["batch_stats"]

  stats = state.batch_stats
  for i in range(steps):
    stats = update(stats, {k: v for k, v in next(it).items() if k in DEVICE_KEYS}, i)
  return state.replace(batch_stats={**state.batch_stats, "encoder": stats["encoder"]})


def train(config, workdir, progress=True, devices=None, stop_at=None):
  """Runs (or resumes) one keypoint-regression run in `workdir`; returns the final state and logged metrics."""
  check_config(config)
  pretrain.check_workdir(workdir)
  mesh = sharding.mesh(devices)
  sharding.check_batch_size(config.batch_size, mesh)

  src = train_source(config)
  steps = pretrain.total_steps(config, len(src))
  data_iter = iter(pretrain.input_pipeline(config, src))

  model = make_model(config)
  size = config.augment.out_size
  init_key = jax.random.key(config.seed, impl="rbg")

  def init_variables(key):
    return model.init(key, jnp.zeros((2, size, size, 3)), jnp.tile(jnp.eye(3), (2, 1, 1)), train=True)

  abstract_vars = jax.eval_shape(init_variables, init_key)
  tx, sched = make_optimizer(config, steps, abstract_vars["params"])

  def init(key):
    v = init_variables(key)
    return TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"], tx.init(v["params"]))

  repl = sharding.replicated(mesh)
  abstract = jax.eval_shape(init, init_key)
  state_sharding = jax.tree.map(lambda _: repl, abstract)

  mngr = checkpoint.manager(workdir, keep=config.keep_ckpts)
  _, restored = checkpoint.restore(mngr, jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding), data_iter)
  if restored is not None:
    state = restored
  else:
    state = jax.jit(init, out_shardings=state_sharding)(init_key)
    if config.encoder:
      params, stats = load_encoder(config.encoder, config, abstract_vars)
      state = state.replace(params={**state.params, "encoder": params},
                            batch_stats={**state.batch_stats, "encoder": stats})
      state = jax.device_put(state, state_sharding)
    elif model.frozen and config.random_init_bn_steps > 0:
      state = calibrate_bn(model, state, config, src, config.random_init_bn_steps)
    _write_info(workdir, config, src)

  step_fn = jax.jit(make_train_step(config, model, tx, sched, jax.random.key(config.seed)), donate_argnums=(0,),
                    out_shardings=(state_sharding, repl))
  init_name = "random init" if not config.encoder else os.path.basename(os.path.normpath(config.encoder))
  state, rows = pretrain.run_steps(step_fn, state, data_iter, config, mesh, mngr, workdir, steps, stop_at=stop_at,
                                   desc=f"{config.mode} ({init_name})", progress=progress, keys=DEVICE_KEYS,
                                   postfix=dict(loss=".3f", epe_2d_px=".2f", epe_3d_mm=".1f"))
  return Result(state, rows, workdir)


def _write_info(workdir, config, src):
  """probe.json: what the run started from, and the training labels' median bone length (predict's default)."""
  if jax.process_index() != 0:
    return
  scale = getattr(src, "scale", None)
  if isinstance(src, freihand.FreiHand):
    scale = src.scale[src.ids]
  info = dict(mode=config.mode, encoder=os.path.abspath(config.encoder) if config.encoder else None,
              train_records=len(src), label_fraction=config.data.label_fraction,
              median_bone_m=float(np.median(scale)) if scale is not None and len(scale) else None)
  with open(os.path.join(workdir, "probe.json"), "w") as f:
    json.dump(info, f, indent=1)


# ---------------------------------------------------------------------------------------------------------------
# Restoring a finished run (for evaluate / predict).
# ---------------------------------------------------------------------------------------------------------------
def restore(workdir, step=None):
  """(config, variables) of a probe workdir's latest (or given) checkpoint; no code is executed."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise TrainingError(f"{workdir!r} has no checkpoints/ (not a probe workdir, or the run never saved)")
  config = ml_collections.ConfigDict(checkpoint.restore_config(workdir, step))
  if "keypoints" not in config or "head" not in config:
    raise TrainingError(f"{workdir!r} is not a keypoint-regression workdir (its config has no head/keypoints)")
  model = make_model(config)
  size = config.augment.out_size

  def init(key):
    v = model.init(key, jnp.zeros((1, size, size, 3)), jnp.eye(3)[None], train=False)
    tx, _ = make_optimizer(config, 1, v["params"])  # the optimiser state's structure, to match the checkpoint
    return TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"], tx.init(v["params"]))

  _, state = checkpoint.restore(checkpoint.manager(workdir), jax.eval_shape(init, jax.random.key(0, impl="rbg")),
                                step=step)
  return config, {"params": state.params, "batch_stats": state.batch_stats}


def predictor(config, variables):
  """A jitted fn(images normalised [B, S, S, 3], K [B, 3, 3]) -> dict(uv (crop px), z_rel[, z_root])."""
  model = make_model(config)
  return jax.jit(lambda x, K: model.apply(variables, x, K, train=False))


# ---------------------------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------------------------
def run(config, workdir, progress=True, evaluate_splits=("evaluation",)):
  """Trains (or resumes) and evaluates; label_fraction runs one sub-run per fraction and tabulates them."""
  from peclr_jax import evaluate

  if config.mode != "label_fraction":
    result = train(config, workdir, progress=progress)
    reports = {s: evaluate.evaluate(workdir, s, progress=progress) for s in evaluate_splits}
    return result, reports
  rows = []
  for f in config.label_fractions:
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.mode = "finetune" if config.encoder else "scratch"
      c.data.label_fraction = float(f)
    sub = os.path.join(workdir, f"labels_{100 * f:g}pct")
    r = train(c, sub, progress=progress)
    report = evaluate.evaluate(sub, evaluate_splits[0], progress=progress)
    rows.append(dict(label_fraction=float(f), train_records=len(train_source(c)), steps=int(r.state.step),
                     workdir=sub, **{k: report["metrics"][k] for k in evaluate.TABLE_KEYS}))
  evaluate.write_table(rows, os.path.join(workdir, "label_fraction"),
                       f"Label fractions ({'fine-tuned from ' + config.encoder if config.encoder else 'scratch'})")
  return None, rows


def main(argv=None):
  config, workdir = pretrain.parse_flags(argv, "configs/probe.py:MODE[,SIZE]")
  with pretrain.cli_errors(FileNotFoundError):
    result, reports = run(config, workdir)
  if result is None:
    print(f"label-fraction table: {workdir}/label_fraction.md")
    return
  for split, rep in reports.items():
    mt = rep.get("metrics")
    if mt is None:
      print(f"done: {config.mode}, step {int(result.state.step)}; {split} has no 3-D labels: predictions in "
            f"{rep['paths']['pred_json']}")
      continue
    print(f"done: {config.mode}, step {int(result.state.step)}; {split}: 2D {mt['epe_2d_px']:.2f} px, "
          f"3D EPE {mt['epe_mm']:.1f} mm, PA-EPE {mt['pa_epe_mm']:.2f} mm, PA-AUC {mt['pa_auc']:.3f} "
          f"(report: {rep['paths']['markdown']})")


if __name__ == "__main__":
  main()
