"""Optimisers against NumPy re-implementations of SimCLR's LARS and the reference's LARS-wrapped Adam."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from peclr_jax import models, optim


def _cfg(**kw):
  base = dict(
    optimizer="lars",
    base_lr=0.1,
    lr_rule="none",
    batch_size=64,
    accum_steps=1,
    weight_decay=0.1,
    warmup_steps=2,
    momentum=0.9,
    trust_coefficient=None,
  )
  return ml_collections.ConfigDict({**base, **kw})


def _closed_form(peak, warmup, total):
  """Linear 0 → peak over `warmup` steps, then ½·peak·(1 + cos(π(s−W)/(T−W))), 0 after T."""

  def lr(s):
    if s < warmup:
      return peak * s / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * min(s - warmup, total - warmup) / (total - warmup)))

  return lr


# A toy tree shaped like a conv net: kernels (masked: decayed and adapted), BN scale/bias and a Dense bias (not).
SHAPES = {
  "conv": {"kernel": (3, 3, 2, 4)},
  "bn": {"scale": (4,), "bias": (4,)},
  "dense": {"kernel": (4, 5), "bias": (5,)},
}


def _toy(seed=0, steps=5):
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda s: isinstance(s, tuple))
  params = [rng.normal(size=s).astype(np.float32) for s in leaves]
  params[leaves.index((4, 5))][:] = 0  # a zero kernel: its trust ratio must fall back to 1
  grads = [[rng.normal(size=s).astype(np.float32) * (0.03 if s == (4,) else 1.0) for s in leaves] for _ in range(steps)]
  grads[2][0][:] = 0  # a zero gradient: the update must not be scaled
  mask = [len(s) > 1 for s in leaves]
  return params, grads, mask, treedef


def _run(tx, params, grads, treedef):
  """Applies `tx` on the gradient sequence; returns the parameter trajectory as lists of NumPy leaves."""
  p = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in params])
  state, update = tx.init(p), jax.jit(tx.update)
  out = []
  for g in grads:
    u, state = update(jax.tree.unflatten(treedef, [jnp.asarray(x) for x in g]), state, p)
    p = optax.apply_updates(p, u)
    out.append([np.asarray(x) for x in jax.tree.leaves(p)])
  return out, state


def test_decay_mask_hits_exactly_the_kernels():
  enc, head = models.ResNet(depth=18, width=8), models.ProjectionHead()
  x = jnp.zeros((1, 32, 32, 3))
  params = {
    "encoder": jax.eval_shape(functools.partial(enc.init, train=False), jax.random.key(0), x)["params"],
    "head": jax.eval_shape(functools.partial(head.init, train=False), jax.random.key(0), jnp.zeros((1, 64)))["params"],
  }
  flat = jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))
  assert all(isinstance(m, bool) for _, m in flat)
  by_name = {}
  for path, m in flat:
    by_name.setdefault(path[-1].key, set()).add(m)
  assert by_name == {"kernel": {True}, "scale": {False}, "bias": {False}}  # BN scale/bias and Dense bias never
  # 20 convolutions (stem + 16 in blocks + 3 down-samples) and the head's two Dense layers.
  assert sum(m for _, m in flat) == 22
  # The same rule on concrete arrays, including a 0-d leaf (e.g. an uncertainty weight).
  assert optim.decay_mask({"w": jnp.ones((2, 3)), "b": jnp.ones(3), "s": jnp.zeros(())}) == {
    "w": True,
    "b": False,
    "s": False,
  }


@pytest.mark.parametrize("rule,peak", [("sqrt", 1e-4 * math.sqrt(2048)), ("linear", 1e-4 * 8), ("none", 1e-4)])
def test_schedule_closed_form(rule, peak):
  w, t = 10, 100
  s, ref = optim.schedule(1e-4, 2048, t, w, rule), _closed_form(peak, w, t)
  for step in (0, 3, w // 2, w, 30, (w + t) // 2, 90, t, t + 20):
    np.testing.assert_allclose(s(step), ref(step), rtol=1e-5, atol=1e-12)
  assert s(0) == 0 and s(t) == 0
  np.testing.assert_allclose([s(w), s((w + t) // 2)], [peak, peak / 2], rtol=1e-5)
  np.testing.assert_allclose(optim.schedule(1e-4, 2048, t, 0, rule)(0), peak, rtol=1e-6)  # no warm-up: starts at peak
  with pytest.raises(ValueError):
    optim.schedule(1e-4, 2048, t, w, "cubic")


def test_lars_matches_simclr():
  params, grads, mask, treedef = _toy()
  cfg = _cfg(optimizer="lars")  # trust_coefficient None → 1e-3, SimCLR's
  tx, sched = optim.make(cfg, total_steps=6)
  traj, state = _run(tx, params, grads, treedef)

  # google-research/simclr tf2/lars_optimizer.py, classic momentum, no Nesterov.
  eta, wd, m, lr = 1e-3, cfg.weight_decay, cfg.momentum, _closed_form(0.1, 2, 6)
  p, v = [x.astype(np.float64) for x in params], [np.zeros_like(x, np.float64) for x in params]
  for t, g in enumerate(grads):
    for i in range(len(p)):
      gi = g[i] + wd * p[i] if mask[i] else g[i].astype(np.float64)
      trust = 1.0
      if mask[i]:
        wn, gn = np.linalg.norm(p[i]), np.linalg.norm(gi)
        trust = eta * wn / gn if wn > 0 and gn > 0 else 1.0
      v[i] = m * v[i] + lr(t) * trust * gi
      p[i] = p[i] - v[i]
    for got, want in zip(traj[t], p):
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
  assert not np.allclose(traj[-1][0], params[0])  # the run moved the parameters at all
  np.testing.assert_allclose(optim.current_lr(state), sched(len(grads) - 1), rtol=1e-6)


def test_lars_adam_matches_reference_pseudocode():
  params, grads, mask, treedef = _toy(seed=1)
  cfg = _cfg(optimizer="lars_adam")  # trust_coefficient None → 0.02, pl-bolts' default
  traj, _ = _run(optim.make(cfg, total_steps=6)[0], params, grads, treedef)

  # pl-bolts LARSWrapper.update_p (clip=True) on every leaf, wd only on kernels, then torch Adam (wd 0).
  eta, wd, eps, lr = 0.02, cfg.weight_decay, 1e-8, _closed_form(0.1, 2, 6)
  p = [x.astype(np.float64) for x in params]
  mu, nu = [np.zeros_like(x) for x in p], [np.zeros_like(x) for x in p]
  factors = []
  for t, g in enumerate(grads):
    for i in range(len(p)):
      gi, wdi = g[i].astype(np.float64), wd if mask[i] else 0.0
      pn, gn = np.linalg.norm(p[i]), np.linalg.norm(gi)
      if pn > 0 and gn > 0:
        trust = eta * pn / (gn + wdi * pn + eps)
        f = min(trust / lr(t), 1.0) if lr(t) > 0 else 1.0
        gi = (gi + wdi * p[i]) * f
        factors.append(f)
      mu[i] = 0.9 * mu[i] + 0.1 * gi
      nu[i] = 0.999 * nu[i] + 0.001 * gi**2
      mhat, vhat = mu[i] / (1 - 0.9 ** (t + 1)), nu[i] / (1 - 0.999 ** (t + 1))
      p[i] = p[i] - lr(t) * mhat / (np.sqrt(vhat) + 1e-8)
    for got, want in zip(traj[t], p):
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)  # Adam steps are ~lr = 0.1 per element
  # Both branches were exercised: clipped factors below 1 and unclipped ones.
  assert min(factors) < 0.5 and max(factors) == 1.0


def test_lars_adam_direct_with_float_lr_and_zero_lr():
  # lr == 0 must not divide by zero: the factor is 1 and the update is exactly 0.
  p = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  g = {"w": jnp.full((2, 2), 5.0), "b": jnp.ones(2)}
  tx = optim.lars_adam(0.0)
  u, _ = tx.update(g, tx.init(p), p)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  wrap = optim.lars_wrap(0.0, weight_decay=0.5)
  gw, st = wrap.update(g, wrap.init(p), p)
  np.testing.assert_allclose(gw["w"], 5.0 + 0.5)  # factor 1, decay added on the kernel
  np.testing.assert_allclose(gw["b"], 1.0)  # no decay on the bias
  assert int(st.count) == 1


@pytest.mark.parametrize("name", ["lars_adam", "lars", "sgd", "adam"])
def test_multisteps_equals_one_step_on_mean_gradient(name):
  params, grads, _, treedef = _toy(seed=2, steps=8)
  k = 4
  # The LR rule sees the effective batch 16 × 4 = 64 in both runs; no warm-up, so step 0 has a non-zero rate.
  tx, sched = optim.make(_cfg(optimizer=name, batch_size=16, accum_steps=k, warmup_steps=0, lr_rule="linear"), 10)
  ref, ref_sched = optim.make(_cfg(optimizer=name, batch_size=64, accum_steps=1, warmup_steps=0, lr_rule="linear"), 10)
  np.testing.assert_allclose([sched(3), ref_sched(3)], _closed_form(0.1 * 64 / 256, 0, 10)(3), rtol=1e-6)

  traj, state = _run(tx, params, grads, treedef)
  means = [[np.mean([g[i] for g in grads[j : j + k]], axis=0) for i in range(len(params))] for j in (0, k)]
  want, _ = _run(ref, params, means, treedef)
  for t in range(len(grads)):
    expected = params if t < k - 1 else want[0] if t < 2 * k - 1 else want[1]  # updates only every 4th call
    for got, w in zip(traj[t], expected):
      np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
  assert not np.allclose(want[1][0], want[0][0])
  # The schedule counted optimiser steps: the latest update used step 1's rate, not micro-step 7's.
  np.testing.assert_allclose(optim.current_lr(state), sched(1), rtol=1e-6)
  assert sched(1) != sched(7)


def test_make_from_default_config():
  cfg = optim.default_config()
  assert (cfg.optimizer, cfg.base_lr, cfg.lr_rule, cfg.weight_decay, cfg.warmup_epochs) == (
    "lars_adam",
    1e-4,
    "sqrt",
    1e-6,
    10,
  )
  tx, sched = optim.make(cfg, total_steps=8656, steps_per_epoch=86)
  peak = 1e-4 * math.sqrt(128 * 16)
  np.testing.assert_allclose([sched(0), sched(430), sched(860), sched(8656)], [0, peak / 2, peak, 0], atol=1e-9)
  assert isinstance(tx, optax.GradientTransformation)
  cfg.warmup_steps = 100  # explicit steps win over epochs
  np.testing.assert_allclose(optim.make(cfg, 8656)[1](100), 4.525483e-3, rtol=1e-6)
  with pytest.raises(ValueError):
    optim.make(optim.default_config(), 8656)  # warm-up in epochs needs steps_per_epoch
  with pytest.raises(ValueError):
    optim.make(_cfg(optimizer="rmsprop"), 10)
