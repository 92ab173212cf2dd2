"""2.5-D keypoint regression on a pretrained encoder: linear / MLP probes, fine-tuning, supervised from scratch.

  peclr-probe --config=probe:linear,cpu --config.encoder=runs/main/pretrain --workdir=runs/linear_peclr
  peclr-probe --config=probe:scratch,cpu --workdir=runs/scratch            # python -m peclr_jax.probe

The keypoint model is keypoints.Regressor: per joint (u, v) in crop pixels and the root-relative depth z_rel.
Training follows the reference's linear-evaluation / fine-tuning recipe (§3.3): random rotation + crop jitter at a
fixed margin (no colour), L1 on (u, v) in crop pixels + 5 · L1 on z_rel (+ L1 on the normalised root depth with the
refinement MLP), Adam with coupled weight decay on kernels and a cosine schedule. Evaluation crops without
augmentation.

Modes (`--config=probe:MODE[,SIZE]`):
  linear    frozen encoder (BatchNorm in inference mode), one linear layer -> 21 x 3
  mlp       frozen encoder, an MLP head
  finetune  the pretrained encoder trained end to end with a linear head
  scratch   random init trained end to end: the supervised baseline
  label_fraction   fine-tune (or scratch without an encoder) on 1 %, 10 %, 100 % of the labelled ids, one run each
A frozen encoder with no `config.encoder` is the random-init baseline; its BatchNorm statistics are first estimated
on training batches (`random_init_bn_steps`), since init statistics (mean 0, var 1) would make it a strawman.
The trainer checkpoints, logs, resumes and guards against NaN like pretraining (loop.py), then evaluates the
finished run (evaluate.py).
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from peclr_jax import (
  augment,
  checkpoint,
  cli,
  evaluate,
  features,
  inputs,
  keypoints,
  loop,
  models,
  optim,
  report,
  sharding,
  validate,
)
from peclr_jax.data import freihand
from peclr_jax.errors import ConfigError, TrainingError

DEVICE_KEYS = ("image", "uv", "K", "valid", "xyz", "has_xyz")


# ---------------------------------------------------------------------------------------------------------------
# The train step and optimiser.
# ---------------------------------------------------------------------------------------------------------------
def make_optimizer(config, steps, params):
  """Adam + coupled L2 on kernels (torch's weight_decay), cosine to 0 (optional warm-up); frozen encoders get none."""
  o = config.optim
  sched = (
    optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, max(steps, o.warmup_steps + 1))
    if o.warmup_steps > 0
    else optax.cosine_decay_schedule(o.lr, max(steps, 1))
  )
  tx = optax.chain(
    optax.add_decayed_weights(o.weight_decay, mask=optim.decay_mask),
    optax.scale_by_adam(),
    optax.scale_by_learning_rate(sched),
  )
  frozen = config.mode in keypoints.FROZEN
  labels = {k: ("frozen" if frozen and k == "encoder" else "train") for k in params}
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels), sched


def make_train_step(config, model, tx, sched, base_key):
  aug, kp = config.augment, config.keypoints

  def step_fn(state, batch):
    x, uv, K, _, _ = augment.augment(jax.random.fold_in(base_key, state.step), batch, aug)
    tgt = keypoints.targets(batch["xyz"], K, kp)

    def loss_fn(params):
      pred, new = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, x, K, train=True, mutable=["batch_stats", "intermediates"]
      )
      loss, m = keypoints.loss(pred, uv, tgt, batch["valid"], batch["has_xyz"], kp)
      stacks = new.get("intermediates", {}).get("encoder", {}).get("stacks", ())
      if config.head.kind == "direct" and len(stacks) > 1:  # the hourglass: supervise every stack (Newell)
        inter = [
          keypoints.loss(
            keypoints.decode(keypoints.vector_to_pose(h), x.shape[1], kp.root),
            uv,
            tgt,
            batch["valid"],
            batch["has_xyz"],
            kp,
          )[0]
          for h in stacks[:-1]
        ]
        m["intermediate_loss"] = sum(inter) / len(inter)
        loss = loss + sum(inter)
      xyz = keypoints.reconstruct(pred, K, tgt["s"], kp)
      w = batch["valid"] * batch["has_xyz"][:, None]
      m["epe_3d_mm"] = 1000 * jnp.sum(jnp.linalg.norm(xyz - batch["xyz"], axis=-1) * w) / jnp.maximum(w.sum(), 1)
      return loss, (m, new["batch_stats"])

    (loss, (m, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    m.update(loss=loss, lr=sched(state.step), grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
    return loop.TrainState(state.step + 1, params, batch_stats, opt_state), m

  return step_fn


# ---------------------------------------------------------------------------------------------------------------
# Data: the labelled subset.
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
    keep = np.sort(ids[: max(1, math.ceil(fraction * len(ids)))])
    return freihand.FreiHand(src.root, src.split, ids=keep, versions=src.versions)
  n = len(src)
  return Subset(src, np.sort(np.random.default_rng(seed).permutation(n)[: max(1, math.ceil(fraction * n))]))


def train_source(config):
  return label_subset(inputs.source(config.data, "training"), config.data.label_fraction)


# ---------------------------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------------------------
FRACTION = validate.number(0, 1, lo_open=True)
RULES = {
  "mode": validate.one_of(keypoints.MODES),
  "encoder": validate.TEXT,
  "seed": validate.integer(),
  **validate.under("data", inputs.RULES),
  "data.label_fraction": FRACTION,
  "label_fractions": validate.each(FRACTION),
  **validate.under("model", models.RULES),
  **validate.under("head", keypoints.HEAD_RULES),
  **validate.under("keypoints", keypoints.KEYPOINT_RULES),
  **validate.under("augment", augment.RULES),
  "optim.lr": validate.NON_NEGATIVE,
  "optim.weight_decay": validate.NON_NEGATIVE,
  "optim.warmup_steps": validate.integer(0),
  "batch_size": validate.COUNT,
  "num_epochs": validate.number(),
  "total_steps": validate.integer(),
  "random_init_bn_steps": validate.integer(0),
  "log_every": validate.COUNT,
  "ckpt_every": validate.COUNT,
  "keep_ckpts": validate.COUNT,
}


def check_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Every value of a probe config, the mode against the encoder, the batch against the mesh: one ConfigError."""
  validate.check(config, RULES)
  inputs.check_duration(config)
  if config.mode == "finetune" and not config.encoder:
    raise ConfigError("config.mode='finetune' needs --config.encoder=PRETRAIN_WORKDIR (random init is mode scratch)")
  if config.mode == "scratch" and config.encoder:
    raise ConfigError(
      f"config.mode='scratch' trains from random init; drop --config.encoder={config.encoder!r} or use finetune"
    )
  if config.head.kind == "direct" and config.model.name != "hourglass":
    raise ConfigError(
      f"config.head.kind='direct' trains the encoder's own 2.5-D output: expected "
      f"config.model.name='hourglass', not {config.model.name!r}"
    )
  sharding.check_batch_size(config.batch_size, mesh)


def calibrate_bn(model, state, config, src, steps):
  """Running BatchNorm statistics of a random-init encoder from `steps` training batches (no parameter change)."""
  it = iter(inputs.dataset(config, src, batch_size=config.batch_size))
  calib = keypoints.make_model(config, frozen=False)
  key = jax.random.key(config.seed + 1)

  @jax.jit
  def update(batch_stats, batch, i):
    x, _, K, _, _ = augment.augment(jax.random.fold_in(key, i), batch, config.augment)
    _, new = calib.apply(
      {"params": state.params, "batch_stats": batch_stats}, x, K, train=True, mutable=["batch_stats"]
    )
    return new["batch_stats"]

  stats = state.batch_stats
  for i in range(steps):
    stats = update(stats, {k: v for k, v in next(it).items() if k in DEVICE_KEYS}, i)
  return state.replace(batch_stats={**state.batch_stats, "encoder": stats["encoder"]})


def train(
  config: ml_collections.ConfigDict, workdir: str, progress: bool = True, devices=None, stop_at: int | None = None
) -> loop.Result:
  """Runs (or resumes) one keypoint-regression run in `workdir`; returns the final state and logged metrics."""
  mesh = sharding.mesh(devices)
  check_config(config, mesh)
  loop.make_workdir(workdir)

  src = train_source(config)
  steps = inputs.total_steps(config, len(src))
  data_iter = iter(inputs.dataset(config, src))

  model = keypoints.make_model(config)
  size = config.augment.out_size
  init_key = jax.random.key(config.seed, impl="rbg")

  def init_variables(key):
    return model.init(key, jnp.zeros((2, size, size, 3)), jnp.tile(jnp.eye(3), (2, 1, 1)), train=True)

  abstract_vars = jax.eval_shape(init_variables, init_key)
  tx, sched = make_optimizer(config, steps, abstract_vars["params"])

  def init(key):
    v = init_variables(key)
    return loop.TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"], tx.init(v["params"]))

  repl = sharding.replicated(mesh)
  abstract = jax.eval_shape(init, init_key)
  state_sharding = jax.tree.map(lambda _: repl, abstract)

  mngr = checkpoint.manager(workdir, keep=config.keep_ckpts)
  _, restored = checkpoint.restore(
    mngr,
    jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding),
    data_iter,
  )
  if restored is not None:
    state = restored
  else:
    state = jax.jit(init, out_shardings=state_sharding)(init_key)
    if config.encoder:
      params, stats = features.load_encoder(config.encoder, config, abstract_vars)
      state = state.replace(
        params={**state.params, "encoder": params}, batch_stats={**state.batch_stats, "encoder": stats}
      )
      state = jax.device_put(state, state_sharding)
    elif model.frozen and config.random_init_bn_steps > 0:
      state = calibrate_bn(model, state, config, src, config.random_init_bn_steps)
    write_info(workdir, config, src)

  step_fn = jax.jit(
    make_train_step(config, model, tx, sched, jax.random.key(config.seed)),
    donate_argnums=(0,),
    out_shardings=(state_sharding, repl),
  )
  init_name = "random init" if not config.encoder else os.path.basename(os.path.normpath(config.encoder))
  state, rows = loop.run(
    step_fn,
    state,
    data_iter,
    config,
    mesh,
    mngr,
    workdir,
    steps,
    keys=DEVICE_KEYS,
    stop_at=stop_at,
    desc=f"{config.mode} ({init_name})",
    progress=progress,
    postfix=dict(loss=".3f", epe_2d_px=".2f", epe_3d_mm=".1f"),
  )
  return loop.Result(state, rows, workdir)


def write_info(workdir, config, src):
  """probe.json: what the run started from, and the training labels' median bone length (predict's default)."""
  if jax.process_index() != 0:
    return
  scale = getattr(src, "scale", None)
  if isinstance(src, freihand.FreiHand):
    scale = src.scale[src.ids]
  info = dict(
    mode=config.mode,
    encoder=os.path.abspath(config.encoder) if config.encoder else None,
    train_records=len(src),
    label_fraction=config.data.label_fraction,
    median_bone_m=float(np.median(scale)) if scale is not None and len(scale) else None,
  )
  with open(os.path.join(workdir, "probe.json"), "w") as f:
    json.dump(info, f, indent=1)


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  progress: bool = True,
  evaluate_splits: tuple[str, ...] = ("evaluation",),
) -> tuple[loop.Result | None, dict | list]:
  """Trains (or resumes) and evaluates; label_fraction runs one sub-run per fraction and tabulates them."""
  if config.mode != "label_fraction":
    result = train(config, workdir, progress=progress)
    reports = {s: evaluate.evaluate(workdir, s, progress=progress) for s in evaluate_splits}
    return result, reports
  check_config(config, sharding.mesh())  # before the first sub-run's directory
  rows = []
  for f in config.label_fractions:
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.mode = "finetune" if config.encoder else "scratch"
      c.data.label_fraction = float(f)
    sub = os.path.join(workdir, f"labels_{100 * f:g}pct")
    r = train(c, sub, progress=progress)
    rep = evaluate.evaluate(sub, evaluate_splits[0], progress=progress)
    rows.append(
      dict(
        label_fraction=float(f),
        train_records=len(train_source(c)),
        steps=int(r.state.step),
        workdir=sub,
        **{k: rep["metrics"][k] for k in report.TABLE_KEYS},
        anchor=rep.get("mean_pose_baseline", {}),
      )
    )
  report.write_table(
    rows,
    os.path.join(workdir, "label_fraction"),
    f"Label fractions ({'fine-tuned from ' + config.encoder if config.encoder else 'scratch'})",
  )
  return None, rows


def _flags(fv, argv):
  cli.config_flag(fv, argv, "probe:MODE[,SIZE]")
  cli.workdir_flag(fv)


def main(argv: list[str] | None = None) -> None:
  args = cli.parse(argv, __doc__, _flags)
  config, workdir = args.config, args.workdir
  with cli.errors(FileNotFoundError):
    result, reports = run(config, workdir)
  if result is None:
    print(f"label-fraction table: {workdir}/label_fraction.md")
    return
  for split, rep in reports.items():
    mt = rep.get("metrics")
    if mt is None:
      print(
        f"done: {config.mode}, step {int(result.state.step)}; {split} has no 3-D labels: predictions in "
        f"{rep['paths']['pred_json']}"
      )
      continue
    print(
      f"done: {config.mode}, step {int(result.state.step)}; {split}: 2D {mt['epe_2d_px']:.2f} px, "
      f"3D EPE {mt['epe_mm']:.1f} mm, PA-EPE {mt['pa_epe_mm']:.2f} mm, PA-AUC {mt['pa_auc']:.3f} "
      f"(report: {rep['paths']['markdown']})"
    )


if __name__ == "__main__":
  main()
