"""Optimisers, learning-rate schedules and the weight-decay / trust-ratio mask (reference §3.3, §8.4-8.5).

* "lars": SimCLR's LARS-SGD via `optax.lars` (trust η = 1e-3, momentum 0.9); decay and adaptation on kernels only.
* "lars_adam": the reference's pl-bolts `LARSWrapper` around Adam (η = 0.02, clipped), ported as `lars_wrap`.
* "adam", "sgd": coupled L2 weight decay on kernels (torch's `weight_decay`), then Adam or momentum SGD.

All schedules warm up linearly from 0 and then follow a cosine to 0, counted in *optimiser* steps: with
`accum_steps` > 1 the optimiser is wrapped in `optax.MultiSteps`, which averages the micro-batch gradients and runs
the inner optimiser (and its step count) once every `accum_steps` calls.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from peclr_jax import validate

OPTIMIZERS = ("lars", "lars_adam", "adam", "sgd")
LR_RULES = ("sqrt", "linear", "none")


def decay_mask(params):
  """True for the leaves that get weight decay and trust ratios: kernels (ndim > 1), not biases or BN scales/biases.

  The reference excludes parameters named "bias" or "bn"; in Flax those are exactly the 1-D leaves. Works on arrays
  and on `jax.ShapeDtypeStruct`s.
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def peak_lr(base_lr, batch_size, rule="sqrt"):
  """base·√batch ("sqrt", the reference and SimCLR's small-batch rule), base·batch/256 ("linear") or base ("none")."""
  if rule == "sqrt":
    return base_lr * batch_size**0.5
  if rule == "linear":
    return base_lr * batch_size / 256
  if rule == "none":
    return base_lr
  raise ValueError(f"unknown lr rule {rule!r}")


def schedule(base_lr, batch_size, total_steps, warmup_steps, rule="sqrt"):
  """Linear warm-up 0 → peak over `warmup_steps`, then cosine to 0 at `total_steps` (both in optimiser steps).

  The reference's `LinearWarmupCosineAnnealingLR` reaches the peak one step earlier (at W-1), which is negligible.
  A run no longer than its warm-up only sees the ramp.
  """
  peak = peak_lr(base_lr, batch_size, rule)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, max(total_steps, warmup_steps + 1))


class LarsWrapState(NamedTuple):
  count: jax.Array  # optimiser steps taken, to evaluate the learning-rate schedule


def lars_wrap(learning_rate, weight_decay=1e-6, trust_coefficient=0.02, eps=1e-8, mask=decay_mask):
  """pl-bolts 0.2.2 `LARSWrapper.update_p` (clip=True) as a gradient transformation, to chain before Adam.

  Per leaf, when ‖p‖ > 0 and ‖g‖ > 0 (else g is left unchanged):
    f = min(η‖p‖ / (‖g‖ + wd‖p‖ + eps) / lr, 1),  g ← (g + wd·p)·f,
  with wd = `weight_decay` where `mask` is True and 0 elsewhere, and f = 1 when lr = 0 (the first warm-up step).
  As in pl-bolts, the factor applies to *every* leaf: the reference's param groups only zero the decay of biases and
  BN, the wrapper still scales their gradients. `learning_rate` is a float or a schedule of the step count.
  """

  def init(params):
    del params
    return LarsWrapState(jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("lars_wrap needs params")
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    decay = mask(params) if callable(mask) else mask
    if isinstance(decay, bool):
      decay = jax.tree.map(lambda _: decay, params)

    def leaf(g, p, d):
      wd = weight_decay * d
      pn, gn = jnp.linalg.norm(p), jnp.linalg.norm(g)
      trust = trust_coefficient * pn / (gn + wd * pn + eps)
      f = jnp.where(trust < lr, trust / lr, 1.0)  # min(trust/lr, 1); 1 when lr == 0
      return jnp.where((pn > 0) & (gn > 0), (g + wd * p) * f, g).astype(g.dtype)

    return jax.tree.map(leaf, updates, params, decay), LarsWrapState(state.count + 1)

  return optax.GradientTransformation(init, update)


def lars_adam(learning_rate, weight_decay=1e-6, trust_coefficient=0.02, eps=1e-8, mask=decay_mask):
  """The reference's optimiser: `LARSWrapper(Adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd), eta=0.02)`."""
  return optax.chain(
    lars_wrap(learning_rate, weight_decay, trust_coefficient, eps, mask),
    optax.scale_by_adam(0.9, 0.999, 1e-8),
    optax.scale_by_learning_rate(learning_rate),
  )


def _base(name, lr, wd, momentum, trust):
  if name == "lars":
    return optax.lars(
      lr,
      weight_decay=wd,
      weight_decay_mask=decay_mask,
      trust_coefficient=trust or 1e-3,
      trust_ratio_mask=decay_mask,
      momentum=momentum,
    )
  if name == "lars_adam":
    return lars_adam(lr, wd, trust or 0.02)
  if name == "adam":
    return optax.chain(optax.add_decayed_weights(wd, decay_mask), optax.adam(lr, 0.9, 0.999, 1e-8))
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(wd, decay_mask), optax.sgd(lr, momentum))
  raise ValueError(f"unknown optimizer {name!r}")


def make(cfg, total_steps, steps_per_epoch=None):
  """Optimiser from a config; returns `(tx, lr_schedule)`.

  `total_steps` and `steps_per_epoch` count optimiser steps (micro-steps // accum_steps). The LR rule uses the
  effective batch `cfg.batch_size * cfg.accum_steps`. Warm-up is `cfg.warmup_steps` if set, otherwise
  `cfg.warmup_epochs * steps_per_epoch`. The learning rate is injected as a hyperparameter, so `current_lr(state)`
  reads the rate of the latest update. `lr_schedule(k)` is the rate of optimiser step k.
  """
  if cfg.optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose from {OPTIMIZERS}")
  accum = cfg.get("accum_steps", 1) or 1
  warmup = cfg.get("warmup_steps", None)
  if warmup is None:
    epochs = cfg.get("warmup_epochs", 0) or 0
    if epochs and not steps_per_epoch:
      raise ValueError("warmup_epochs needs steps_per_epoch")
    warmup = round(epochs * steps_per_epoch) if epochs else 0
  sched = schedule(cfg.base_lr, cfg.batch_size * accum, total_steps, int(warmup), cfg.get("lr_rule", "sqrt"))
  # Only the LR is injected (a partial keeps the masks, callables, from being taken for schedules); the rest is read
  # now, so later edits of `cfg` cannot change the optimiser.
  base = functools.partial(
    _base,
    cfg.optimizer,
    wd=cfg.get("weight_decay", 0.0),
    momentum=cfg.get("momentum", 0.9),
    trust=cfg.get("trust_coefficient"),
  )
  tx = optax.inject_hyperparams(lambda learning_rate: base(learning_rate))(learning_rate=sched)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum).gradient_transformation()
  return tx, sched


def current_lr(opt_state):
  """The learning rate of the latest update (the step-0 rate before any), from a state built by `make`."""
  has = lambda s: hasattr(s, "hyperparams")  # optax's Inject(Stateful)HyperparamsState, possibly inside MultiSteps
  for s in jax.tree.leaves(opt_state, is_leaf=has):
    if has(s):
      return s.hyperparams["learning_rate"]
  raise ValueError("no injected learning rate in this optimiser state")


# config.optim of pretraining (batch_size is set from the trainer's).
RULES = {
  "optimizer": validate.one_of(OPTIMIZERS),
  "base_lr": validate.NON_NEGATIVE,
  "lr_rule": validate.one_of(LR_RULES),
  "accum_steps": validate.COUNT,
  "weight_decay": validate.NON_NEGATIVE,
  "warmup_epochs": validate.NON_NEGATIVE,
  "warmup_steps": validate.optional(validate.integer(0)),
  "momentum": validate.number(0, 1, hi_open=True),
  "trust_coefficient": validate.optional(validate.POSITIVE),
}


def default_config():
  """The reference's PeCLR pre-training optimiser (reference §3.3b): LARS-wrapped Adam, lr 1e-4·√(128·16), wd 1e-6.

  Warm-up 10 epochs, cosine to 0, 100 epochs in all (the epoch count lives with the trainer). ≈86 optimiser steps per
  epoch on FreiHAND + YT3D, so `make(cfg, 8656, 86)` reproduces the reference's ≈865 warm-up and ≈8,656 total steps.
  """
  return ml_collections.ConfigDict(
    dict(
      optimizer="lars_adam",  # lars | lars_adam | adam | sgd
      base_lr=1e-4,
      lr_rule="sqrt",  # peak = base·√(batch_size·accum_steps) = 4.525e-3
      batch_size=128,  # per micro-batch; NT-Xent and BN see this many images
      accum_steps=16,  # 128 × 16 = 2048 effective
      weight_decay=1e-6,
      warmup_epochs=10.0,
      warmup_steps=ml_collections.config_dict.placeholder(int),  # overrides warmup_epochs when set
      momentum=0.9,  # lars and sgd only
      trust_coefficient=ml_collections.config_dict.placeholder(float),  # None: 0.02 for lars_adam, 1e-3 for lars
    )
  )
