"""Self-supervised pretraining of a hand-pose encoder: SimCLR, PeCLR, relative, or a hybrid of them.

  peclr-pretrain --config=pretrain:peclr,cpu --workdir=runs/peclr_cpu      # python -m peclr_jax.pretrain
  peclr-pretrain --config=pretrain:peclr --workdir=runs/peclr --config.batch_size=512

One jitted step over a mesh with a `data` axis (batch sharded, state replicated): two augmented views made on device
from fold_in(seed, step), one forward pass over both (global BatchNorm and global negatives), the objective, an
online linear probe on stop-gradient features (2D keypoints), and the optimiser update. The host loop (loop.py) logs
the step's measurements, stops on NaN/inf, and checkpoints state + data iterator + config (also on SIGTERM / SIGINT,
then exits); restarting with the same workdir resumes. The finished run exports the encoder to <workdir>/encoder/
for the keypoint probe. Several processes (hosts):

  peclr-pretrain --config=... --workdir=... --distributed=on [--coordinator=host:port --num_processes=N
      --process_id=I]      # or bash launch/local.sh N WORKDIR; see sharding.init_distributed
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from peclr_jax import augment, checkpoint, cli, inputs, loop, models, objectives, optim, sharding, validate
from peclr_jax.errors import ConfigError
from peclr_jax.models import heads

DEVICE_KEYS = ("image", "uv", "K", "valid")


class Pretrainer(nn.Module):
  """encoder -> projection head (contrastive) / relative heads, plus an online probe on frozen features."""

  model: ml_collections.ConfigDict
  objective: str
  relative_dims: tuple = ()  # ((name, k), ...) for the relative heads
  frozen: bool = False  # stop gradients at the features: the encoder's backward pass is not even built

  def setup(self):
    m = self.model
    self.encoder = models.encoder(m)
    dtype = models.dtype(m)
    if self.objective != "relative":
      self.proj = heads.ProjectionHead(hidden=m.proj_hidden, out=m.proj_out, dtype=dtype)
    self.rel = {name: heads.RelativeHead(out=k, hidden=m.rel_hidden, dtype=dtype) for name, k in self.relative_dims}
    self.log_sigma = {
      name: self.param(f"log_sigma_{name}", nn.initializers.zeros, ()) for name, _ in self.relative_dims
    }
    self.probe = heads.LinearProbe(out=42)  # stop-gradient inside: trains only itself

  def __call__(self, x, train=True):
    """x: both views stacked [2B, H, W, 3] -> dict of outputs."""
    h = self.encoder(x, train=train)
    if self.frozen:
      h = jax.lax.stop_gradient(h)
    out = dict(h=h, probe=self.probe(h).reshape(-1, 21, 2))
    if self.objective != "relative":
      out["z"] = self.proj(h, train=train)
    if self.relative_dims:
      h1, h2 = jnp.split(h, 2)
      out["rel"] = {name: head(h1, h2, train=train) for name, head in self.rel.items()}
      out["log_sigma"] = dict(self.log_sigma)
    return out


def relative_dims(config):
  if config.objective not in ("relative", "hybrid"):
    return ()
  return tuple((t, objectives.RELATIVE_DIMS[t]) for t in config.relative.transforms)


# ---------------------------------------------------------------------------------------------------------------
# The train step and optimiser.
# ---------------------------------------------------------------------------------------------------------------
def probe_loss(pred, uv, valid, size):
  """L1 between the probe's normalised keypoints and uv mapped to [-1, 1]; also the 2D error in pixels."""
  target = uv / size * 2 - 1
  w = valid[..., None].astype(jnp.float32)
  l1 = jnp.sum(jnp.abs(pred - target) * w) / jnp.maximum(w.sum() * 2, 1)
  epe = jnp.sum(jnp.linalg.norm(pred - target, axis=-1) * valid) / jnp.maximum(valid.sum(), 1) * size / 2
  return l1, epe


def make_train_step(config, model, tx, base_key):
  aug, size = config.augment, config.augment.out_size

  def step_fn(state, batch):
    key = jax.random.fold_in(base_key, state.step)
    (x1, uv1, _, p1, g1), (x2, uv2, _, p2, g2) = augment.views(key, batch, aug)
    x = jnp.concatenate([x1, x2])
    valid = jnp.concatenate([batch["valid"], batch["valid"]])
    uv = jnp.concatenate([uv1, uv2])

    def loss_fn(params):
      out, new = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      m, total = {}, 0.0
      if config.objective != "relative":
        z1, z2 = jnp.split(out["z"].astype(jnp.float32), 2)
        if config.objective == "simclr":
          m["nt_xent"] = objectives.nt_xent(z1, z2, config.temperature)
        else:
          m["peclr"] = objectives.peclr_loss(
            z1, z2, g1, g2, config.temperature, config.peclr.transforms, config.peclr.translation_norm, size
          )
        total += config.weights.contrastive * sum(m.values())
      if "rel" in out:
        targets = objectives.relative_targets({**p1, **g1}, {**p2, **g2}, config.relative.transforms)
        rel, per_head = objectives.relative_loss(out["rel"], targets, out["log_sigma"])
        m.update({f"rel_{k}": v for k, v in per_head.items()})
        m.update({f"sigma_{k}": jnp.exp(v) for k, v in out["log_sigma"].items()})
        m["relative"] = rel
        total += config.weights.relative * rel
      m["probe_l1"], m["probe_epe_px"] = probe_loss(out["probe"], uv, valid, size)
      m["objective"] = total
      # The probe sees stop-gradient features, so its loss trains only the probe.
      return total + m["probe_l1"], (m, new["batch_stats"])

    (loss, (m, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    m.update(loss=loss, lr=_lr(opt_state), grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
    return loop.TrainState(state.step + 1, params, batch_stats, opt_state), m

  return step_fn


def _lr(opt_state):
  try:
    return optim.current_lr(opt_state)
  except ValueError:  # frozen encoder: no schedule
    return jnp.zeros(())


def make_optimizer(config, steps, steps_per_epoch, freeze_encoder=False):
  """The configured optimiser for the model (durations in optimiser steps), Adam for the online probe."""
  o = config.optim.copy_and_resolve_references()
  with o.unlocked():
    o.batch_size = config.batch_size  # the micro-batch; the LR rule multiplies by accum_steps
  accum = o.accum_steps or 1
  main, _ = optim.make(o, max(1, steps // accum), steps_per_epoch / accum)
  if freeze_encoder:  # the random-init baseline: only the probe learns
    main = optax.set_to_zero()
  label = lambda params: jax.tree_util.tree_map_with_path(
    lambda path, _: "probe" if path[0].key == "probe" else "main", params
  )
  return optax.multi_transform({"main": main, "probe": optax.adam(config.probe_lr)}, label)


# ---------------------------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------------------------
RULES = {
  "objective": validate.one_of(objectives.OBJECTIVES),
  "seed": validate.integer(),
  **validate.under("data", inputs.RULES),
  **validate.under("augment", augment.RULES),
  **validate.under("model", models.RULES),
  "temperature": validate.POSITIVE,
  "peclr.transforms": validate.each_of(objectives.PECLR_TRANSFORMS),
  "peclr.translation_norm": validate.one_of(objectives.TRANSLATION_NORMS),
  "relative.transforms": validate.each_of(objectives.RELATIVE_TRANSFORMS),
  "weights.contrastive": validate.NON_NEGATIVE,
  "weights.relative": validate.NON_NEGATIVE,
  **validate.under("optim", optim.RULES),
  "batch_size": validate.COUNT,
  "num_epochs": validate.number(),
  "total_steps": validate.integer(),
  "probe_lr": validate.NON_NEGATIVE,
  "log_every": validate.COUNT,
  "ckpt_every": validate.COUNT,
  "keep_ckpts": validate.COUNT,
}


def check_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Every value of a pretraining config, and the batch against the mesh: one ConfigError before any work."""
  validate.check(config, RULES)
  inputs.check_duration(config)
  if config.objective in ("peclr", "hybrid") and config.model.proj_out % 2:
    raise ConfigError(
      f"config.model.proj_out={config.model.proj_out}: expected an even size (PeCLR reads the projection as 2-D points)"
    )
  if config.objective in ("relative", "hybrid") and not config.relative.transforms:
    raise ConfigError(
      f"config.relative.transforms=(): expected at least one of "
      f"{', '.join(objectives.RELATIVE_TRANSFORMS)} for objective {config.objective}"
    )
  sharding.check_batch_size(config.batch_size, mesh)


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  freeze_encoder: bool = False,
  progress: bool = True,
  devices=None,
  stop_at: int | None = None,
) -> loop.Result:
  """Runs (or resumes) pretraining in `workdir`; returns the final state and the logged metrics.

  `freeze_encoder` trains only the online probe (the random-init baseline); `devices` defaults to all;
  `stop_at` ends the run after that step with a checkpoint, as a preemption would (the schedule is unchanged).
  """
  mesh = sharding.mesh(devices)
  check_config(config, mesh)
  loop.make_workdir(workdir)

  # Input.
  src = inputs.source(config.data)
  steps = inputs.total_steps(config, len(src))
  data_iter = iter(inputs.dataset(config, src))

  # Model and optimiser, initialised from shapes straight into their shardings.
  model = Pretrainer(config.model, config.objective, relative_dims(config), frozen=freeze_encoder)
  steps_per_epoch = max(1.0, len(src) / config.batch_size)
  tx = make_optimizer(config, steps, steps_per_epoch, freeze_encoder)
  base_key = jax.random.key(config.seed)  # threefry: shard-independent augmentation draws
  init_key = jax.random.key(config.seed, impl="rbg")  # initialisation only; compiles ~3x faster on CPU
  h = config.augment.out_size

  def init(key):
    variables = model.init(key, jnp.zeros((4, h, h, 3), jnp.float32), train=True)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return loop.TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))

  repl = sharding.replicated(mesh)
  abstract = jax.eval_shape(init, init_key)
  state_sharding = jax.tree.map(lambda _: repl, abstract)
  state = jax.jit(init, out_shardings=state_sharding)(init_key)

  # Resume from the workdir's latest checkpoint (state and data position).
  mngr = checkpoint.manager(workdir, keep=config.keep_ckpts)
  _, restored = checkpoint.restore(
    mngr,
    jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding),
    data_iter,
  )
  if restored is not None:
    state = restored
  start = int(state.step)
  if start and jax.process_index() == 0:
    print(f"resumed from the checkpoint of step {start} in {workdir}", flush=True)

  step_fn = jax.jit(
    make_train_step(config, model, tx, base_key), donate_argnums=(0,), out_shardings=(state_sharding, repl)
  )
  desc = "random-init encoder, probe only" if freeze_encoder else f"pretrain {config.objective}"
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
    desc=desc,
    progress=progress,
    views=2,
    postfix=dict(loss=".3f", probe_epe_px=".2f"),
  )
  if int(state.step) == steps and steps > start:  # every process takes part in the (process-0) write
    variables = jax.device_get({k: getattr(state, k)["encoder"] for k in ("params", "batch_stats")})
    checkpoint.export_encoder(
      os.path.join(workdir, "encoder"), variables["params"], variables["batch_stats"], config.model.to_dict()
    )
  return loop.Result(state, rows, workdir)


def evaluate_probe(
  config: ml_collections.ConfigDict, state: loop.TrainState, split: str = "evaluation", limit: int | None = None
) -> float:
  """2D error (px of the crop) of the online probe on a split: no augmentation, BatchNorm in inference mode."""
  src = inputs.source(config.data, split)
  aug = config.augment.copy_and_resolve_references()
  with aug.unlocked():
    aug.ops = ()  # identity: keypoint-centred crop with the fixed margin, no colour change
  model = Pretrainer(config.model, config.objective, relative_dims(config))
  size = aug.out_size

  @jax.jit
  def errors(batch):
    x, uv, _, _, _ = augment.augment(jax.random.key(0), batch, aug)
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    d = jnp.linalg.norm(out["probe"] - (uv / size * 2 - 1), axis=-1) * size / 2
    return jnp.sum(d * batch["valid"]), jnp.sum(batch["valid"])

  total, count, n = 0.0, 0.0, 0
  for batch in inputs.dataset(config, src, shuffle=False, num_epochs=1, batch_size=64, drop_remainder=False):
    if limit is not None and n >= limit:
      break
    s, c = errors({k: v for k, v in batch.items() if k in DEVICE_KEYS})
    total, count, n = total + float(s), count + float(c), n + len(batch["index"])
  return total / max(count, 1)


def _flags(fv, argv):
  cli.config_flag(fv, argv, "pretrain:OBJECTIVE[,SIZE]")
  cli.workdir_flag(fv)
  cli.distributed_flags(fv)


def main(argv: list[str] | None = None) -> None:
  args = cli.parse(argv, __doc__, _flags)
  cli.start_distributed(args)
  with cli.errors():
    result = train(args.config, args.workdir)
  if jax.process_index() != 0:
    return
  last = result.metrics[-1] if result.metrics else {}
  print(
    f"done: step {int(result.state.step)}, loss {last.get('loss', float('nan')):.4f}, online probe 2D error "
    f"{last.get('probe_epe_px', float('nan')):.2f} px; checkpoints in {result.workdir}/checkpoints"
  )


if __name__ == "__main__":
  main()
