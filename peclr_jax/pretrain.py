"""Self-supervised pretraining of a hand-pose encoder: SimCLR, PeCLR, relative, or a hybrid of them.

  python -m peclr_jax.pretrain --config=configs/pretrain.py:peclr --workdir=runs/peclr --config.batch_size=512

One jitted step over a mesh with a `data` axis (batch sharded, state replicated): two augmented views made on
device from fold_in(seed, step), one forward pass over both (global BatchNorm and global negatives), the
objective, an online linear probe on stop-gradient features (2D keypoints), and the optimiser update. The host
logs the step's measurements, stops on NaN/inf, and checkpoints state + data iterator + config with Orbax (also on
SIGTERM / SIGINT, then exits); restarting with the same workdir resumes. Several processes (hosts):

  python -m peclr_jax.pretrain --config=... --workdir=... --distributed=on [--coordinator=host:port
      --num_processes=N --process_id=I]      # or bash launch/local.sh N WORKDIR; see sharding.init_distributed
"""

import contextlib
import dataclasses
import math
import os
import shutil
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from peclr_jax import augment, checkpoint, log, models, objectives, optim, sharding
from peclr_jax.data import common, freihand, pipeline, synthetic
from peclr_jax.models import heads


class TrainingError(RuntimeError):
  """The run cannot go on (NaN/inf loss, bad config); the message says why and what was kept."""


class WriteError(TrainingError):
  """A checkpoint or log could not be written (full disk, quota, permissions); names the path and what was kept."""


# ---------------------------------------------------------------------------------------------------------------
# Model: encoder -> projection head (contrastive) / relative heads, plus an online probe on frozen features.
# ---------------------------------------------------------------------------------------------------------------
class Pretrainer(nn.Module):
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
    self.log_sigma = {name: self.param(f"log_sigma_{name}", nn.initializers.zeros, ()) for name, _ in
                      self.relative_dims}
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


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: optax.OptState


def relative_dims(config):
  if config.objective not in ("relative", "hybrid"):
    return ()
  return tuple((t, objectives.RELATIVE_DIMS[t]) for t in config.relative.transforms)


# ---------------------------------------------------------------------------------------------------------------
# Durations and data.
# ---------------------------------------------------------------------------------------------------------------
def total_steps(config, n_records):
  if config.total_steps > 0:
    return int(config.total_steps)
  if config.num_epochs <= 0:
    raise TrainingError("set config.total_steps > 0 or config.num_epochs > 0")
  return max(1, int(math.ceil(config.num_epochs * n_records / config.batch_size)))


def source(data, split="training"):
  """The pretraining source named by config.data (the embedded set is rendered first when missing)."""
  if data.name == "synthetic":
    synthetic.generate(data.root, data.synthetic_train, data.synthetic_eval, data.synthetic_seed,
                       progress=jax.process_index() == 0)
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
  raise TrainingError(f"config.data.name={data['name']!r}: expected synthetic, freihand, interhand or folder")


def input_pipeline(config, src, shuffle=True, num_epochs=None, batch_size=None, drop_remainder=True):
  d = config.data
  return pipeline.dataset(src, batch_size or config.batch_size, size=d.host_size, margin=d.host_margin,
                          seed=config.seed, shuffle=shuffle, num_epochs=num_epochs, workers=d.workers,
                          threads=d.threads, skip_corrupt=d.skip_corrupt, drop_remainder=drop_remainder)


DEVICE_KEYS = ("image", "uv", "K", "valid")


# ---------------------------------------------------------------------------------------------------------------
# The train step.
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
      out, new = model.apply({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                             mutable=["batch_stats"])
      m, total = {}, 0.0
      if config.objective != "relative":
        z1, z2 = jnp.split(out["z"].astype(jnp.float32), 2)
        if config.objective == "simclr":
          m["nt_xent"] = objectives.nt_xent(z1, z2, config.temperature)
        else:
          m["peclr"] = objectives.peclr_loss(z1, z2, g1, g2, config.temperature, config.peclr.transforms,
                                             config.peclr.translation_norm, size)
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
    m.update(loss=loss, lr=_lr(opt_state), grad_norm=tree_norm(grads), param_norm=tree_norm(params))
    return TrainState(state.step + 1, params, batch_stats, opt_state), m

  return step_fn


def tree_norm(tree):
  return optax.tree.norm(tree) if hasattr(optax, "tree") and hasattr(optax.tree, "norm") else optax.global_norm(tree)


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
      lambda path, _: "probe" if path[0].key == "probe" else "main", params)
  return optax.multi_transform({"main": main, "probe": optax.adam(config.probe_lr)}, label)


# ---------------------------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
  state: TrainState
  metrics: list
  workdir: str


def check_config(config):
  """Values the config's types cannot catch (dtype, conv, augmentation ops): one error before any work. The probe's
  config has the same `model` and `augment`, and probe.check_config ends here."""
  try:
    models.dtype(config.model)
    models.conv_mode(config.model)
    augment.check(config.augment)
  except ValueError as e:
    raise TrainingError(str(e)) from None


def check_workdir(workdir):
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}")  # one per process: they may share a disk
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise TrainingError(f"workdir {workdir!r} is not writable: {e}") from e


def train(config, workdir, freeze_encoder=False, progress=True, devices=None, stop_at=None):
  """Runs (or resumes) pretraining in `workdir`; returns the final state and the logged metrics.

  `freeze_encoder` trains only the online probe (the random-init baseline); `devices` defaults to all;
  `stop_at` ends the run after that step with a checkpoint, as a preemption would (the schedule is unchanged).
  """
  check_config(config)
  check_workdir(workdir)
  mesh = sharding.mesh(devices)
  sharding.check_batch_size(config.batch_size, mesh)

  # Input.
  src = source(config.data)
  steps = total_steps(config, len(src))
  ds = input_pipeline(config, src)
  data_iter = iter(ds)

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
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))

  repl = sharding.replicated(mesh)
  abstract = jax.eval_shape(init, init_key)
  state_sharding = jax.tree.map(lambda _: repl, abstract)
  state = jax.jit(init, out_shardings=state_sharding)(init_key)

  # Resume from the workdir's latest checkpoint (state and data position).
  mngr = checkpoint.manager(workdir, keep=config.keep_ckpts)
  step0, restored = checkpoint.restore(mngr, jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding), data_iter)
  if restored is not None:
    state = restored
  start = int(state.step)
  if start and jax.process_index() == 0:
    print(f"resumed from the checkpoint of step {start} in {workdir}", flush=True)

  step_fn = jax.jit(make_train_step(config, model, tx, base_key), donate_argnums=(0,),
                    out_shardings=(state_sharding, repl))
  desc = "random-init encoder, probe only" if freeze_encoder else f"pretrain {config.objective}"
  state, rows = run_steps(step_fn, state, data_iter, config, mesh, mngr, workdir, steps, stop_at=stop_at,
                          desc=desc, progress=progress, views=2, postfix=dict(loss=".3f", probe_epe_px=".2f"),
                          keys=DEVICE_KEYS)
  if int(state.step) == steps and steps > start:  # every process takes part in the (process-0) write
    variables = jax.device_get({k: getattr(state, k)["encoder"] for k in ("params", "batch_stats")})
    checkpoint.export_encoder(os.path.join(workdir, "encoder"), variables["params"], variables["batch_stats"],
                              config.model.to_dict())
  return Result(state, rows, workdir)


def run_steps(step_fn, state, data_iter, config, mesh, mngr, workdir, steps, *, stop_at=None, desc="", progress=True,
              views=1, postfix=(), keys=DEVICE_KEYS):
  """The host loop shared by the trainers: steps from state.step + 1 to `steps` (or `stop_at`).

  Every `log_every` steps the step's measurements go to metrics.jsonl / TensorBoard (plus images_per_s, counting
  `views` images per example); every `ckpt_every` steps and at the end, state + data iterator + config are saved.
  Measurements are checked on the host before each log and save: NaN/inf stops with the step and the last good
  checkpoint named. SIGTERM / SIGINT save the current step and raise checkpoint.Preempted; a corrupt image saves
  the last finished step and names the file; a failed write names the path. Returns (state, logged rows).
  """
  from tqdm import tqdm

  start = int(state.step)
  last = steps if stop_at is None else min(steps, stop_at)
  writer = log.Writer(workdir)
  bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress or jax.process_index() != 0,
             dynamic_ncols=True)
  rows, t_log, n_log, saved, skipped, m = [], time.perf_counter(), 0, start, 0, None

  def kept():
    step = checkpoint.latest_step(workdir)
    return f"{'none' if step is None else f'step {step}'} in {workdir}"

  def finite(m, step):
    m = jax.device_get(m)
    # param_norm is taken after the update, so a finite row also vouches for the state about to be saved.
    bad = [k for k, v in m.items() if not np.isfinite(v)]
    if bad:
      raise TrainingError(f"non-finite {', '.join(bad)} at step {step} (loss={m['loss']}); stopped without "
                          f"saving. Last good checkpoint: {kept()}")
    return m

  def write_failed(what, e):
    return WriteError(f"could not write {what}: {e}. Last complete checkpoint: {kept()}")

  need = sum(x.nbytes for x in jax.tree.leaves(state)) * 1.1 + 2**20  # one more checkpoint until the oldest goes

  def wait(step):
    try:
      mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - an async write error surfaces here, whatever its type
      raise write_failed(f"the checkpoint of step {step} under {mngr.directory}", e) from e

  def save(step, now=False):
    nonlocal saved
    wait(saved)  # the previous async save first, so a failure names its own step
    free = shutil.disk_usage(workdir).free
    if free < need:  # a full disk fails here, cleanly, rather than half-way through Orbax's writer threads
      raise write_failed(f"the checkpoint of step {step} under {mngr.directory}",
                         f"{free / 2**20:.1f} MiB free, about {need / 2**20:.1f} MiB needed")
    try:
      checkpoint.save(mngr, step, state, data_iter, config)
    except Exception as e:  # noqa: BLE001
      raise write_failed(f"the checkpoint of step {step} under {mngr.directory}", e) from e
    saved = step
    if now:
      wait(step)

  def save_now(step):
    """Checkpoints the finished `step` now (a stop that is not at a ckpt_every step); says what was kept."""
    if step > saved:
      finite(m, step)
      save(step, now=True)
      return f"saved a checkpoint at step {step}"
    return f"last checkpoint: step {saved}" if saved > 0 else "no checkpoint yet"

  try:
    with checkpoint.Preemption() as stop:
      for step in range(start + 1, last + 1):
        try:
          record = next(data_iter)
        except common.DataError as e:  # the iterator still points at this batch, so a resume retries it
          # A save needs every process, and the others are not stopping: with several, the last one is kept.
          kept = save_now(step - 1) if jax.process_count() == 1 else f"last checkpoint: step {saved}"
          raise TrainingError(f"{e} (batch of step {step}); {kept}. Fix or remove the file, or set "
                              f"--config.data.skip_corrupt=True, and run again to resume") from None
        skipped += int(np.sum(record.get("skipped", 0)))
        state, m = step_fn(state, sharding.put_batch({k: v for k, v in record.items() if k in keys}, mesh))
        n_log += config.batch_size
        is_log, is_ckpt = step % config.log_every == 0 or step == last, step % config.ckpt_every == 0 or step == last
        if is_log or is_ckpt:
          m = finite(m, step)
        if is_log:
          now = time.perf_counter()
          m["images_per_s"] = views * n_log / (now - t_log)
          if config.data.get("skip_corrupt", False):
            m["skipped_images"] = skipped  # corrupt images this process replaced since the (re)start
          t_log, n_log = now, 0
          try:
            writer.write(step, m)
          except OSError as e:
            raise write_failed(f"{writer.path}", e) from e
          rows.append({"step": step, **{k: float(v) for k, v in m.items()}})
          bar.set_postfix({k: format(m[k], f) for k, f in dict(postfix).items()})
        if is_ckpt:
          save(step)
        bar.update(1)
        if stop.reached(step):
          save_now(step)
          raise checkpoint.Preempted(stop.signum, step, workdir)
    wait(saved)
  finally:
    bar.close()
    writer.close()
    try:
      mngr.wait_until_finished()  # never leave an async save behind; its error, if any, was raised above
    except Exception:  # noqa: BLE001
      pass
  return state, rows


def evaluate_probe(config, state, split="evaluation", limit=None):
  """2D error (px of the crop) of the online probe on a split: no augmentation, BatchNorm in inference mode."""
  src = source(config.data, split)
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
  for batch in input_pipeline(config, src, shuffle=False, num_epochs=1, batch_size=64, drop_remainder=False):
    if limit is not None and n >= limit:
      break
    s, c = errors({k: v for k, v in batch.items() if k in DEVICE_KEYS})
    total, count, n = total + float(s), count + float(c), n + len(batch["index"])
  return total / max(count, 1)


def load_config(spec):
  """`"pretrain.py:peclr,cpu"` -> the ConfigDict of configs/pretrain.py's get_config("peclr,cpu").

  The file is looked up as given, then in the repository's configs/ folder (next to the package).
  """
  import importlib.util

  path, _, arg = spec.partition(":")
  for candidate in (path, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                       os.path.basename(path))):
    if os.path.isfile(candidate):
      mod_spec = importlib.util.spec_from_file_location(f"_config_{os.path.basename(candidate)[:-3]}", candidate)
      module = importlib.util.module_from_spec(mod_spec)
      mod_spec.loader.exec_module(module)
      return module.get_config(arg or None)
  raise FileNotFoundError(f"config file {path!r} not found (also looked in the repository's configs/)")


def parse_flags(argv, config_help, distributed=False):
  """Defines and parses --config/--workdir; a mistyped key or a wrong type is one clear error, before any work.

  With `distributed`, also --distributed/--coordinator/--num_processes/--process_id, and jax.distributed is
  initialised from them (sharding.init_distributed) before anything touches a device.
  """
  import sys

  from absl import flags
  from ml_collections import config_flags

  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    flags.DEFINE_string("workdir", None, "where checkpoints, metrics.jsonl and TensorBoard logs go")
  if distributed and "distributed" not in flags.FLAGS:
    flags.DEFINE_enum("distributed", "auto", sharding.MODES, "start jax.distributed: auto = when a multi-process "
                      "launcher is detected (JAX_COORDINATOR_ADDRESS, srun with several tasks, a TPU pod)")
    flags.DEFINE_string("coordinator", None, "host:port of process 0 (default: detected, or JAX_COORDINATOR_ADDRESS)")
    flags.DEFINE_integer("num_processes", None, "number of processes (default: detected)")
    flags.DEFINE_integer("process_id", None, "this process's index (default: detected)")
  try:
    flags.FLAGS(sys.argv if argv is None else argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    msg = str(e).replace("\\n", " ").replace("\\'", "'")
    msg = msg[1:-1] if msg[:1] in "'\"" and msg[-1:] == msg[:1] else msg
    raise SystemExit(f"error: bad command line: {msg}") from None
  if flags.FLAGS.config is None or flags.FLAGS.workdir is None:
    raise SystemExit("error: --config and --workdir are required")
  if distributed:
    f = flags.FLAGS
    try:
      sharding.init_distributed(f.distributed, f.coordinator, f.num_processes, f.process_id)
    except ValueError as e:
      raise SystemExit(f"error: {e}") from None
  return flags.FLAGS.config, flags.FLAGS.workdir


@contextlib.contextmanager
def cli_errors(*more):
  """How the command-line tools end: one `error:` line (status 1) for TrainingError, DataError and `more`; after a
  preemption, `stopped:` and status 128 + signal, the shell's "killed by signal" (the run is not finished)."""
  import sys

  try:
    yield
  except WriteError as e:  # Orbax's failed writer threads print tracebacks, even at exit: mute them, say why, go
    sys.stderr.flush()
    err = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    time.sleep(0.1)  # a write already under way to the old stderr ends first
    # The newline ends a traceback line a writer thread may have left half-written, so `error:` starts a line.
    os.write(err, f"\nerror: {e}\n".encode())
    os._exit(1)
  except (TrainingError, common.DataError, *more) as e:
    raise SystemExit(f"error: {e}") from None
  except checkpoint.Preempted as e:
    print(f"stopped: {e}", flush=True)
    raise SystemExit(128 + e.signum) from None


def main(argv=None):
  config, workdir = parse_flags(argv, "configs/pretrain.py:OBJECTIVE[,SIZE]", distributed=True)
  with cli_errors():
    result = train(config, workdir)
  if jax.process_index() != 0:
    return
  last = result.metrics[-1] if result.metrics else {}
  print(f"done: step {int(result.state.step)}, loss {last.get('loss', float('nan')):.4f}, online probe 2D error "
        f"{last.get('probe_epe_px', float('nan')):.2f} px; checkpoints in {result.workdir}/checkpoints")


if __name__ == "__main__":
  main()
