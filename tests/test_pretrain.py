"""The pretraining trainer on the tiny config: every objective runs, sharding, resume, NaN guard, bad config."""

import os

import jax
import numpy as np
import pytest

from peclr_jax import configs, inputs, log, pretrain
from peclr_jax.errors import TrainingError


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("synthetic"))


def tiny(data_root, objective="peclr", **overrides):
  c = configs.load(f"pretrain:{objective},tiny")
  c.data.root = data_root
  for k, v in overrides.items():
    node, *path = k.split(".")
    target = c
    for p in [node, *path][:-1]:
      target = target[p]
    target[[node, *path][-1]] = v
  return c


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


@pytest.mark.parametrize("objective", ["simclr", "peclr", "relative", "hybrid"])
def test_each_objective_trains_and_logs(objective, data_root, tmp_path):
  r = pretrain.train(tiny(data_root, objective, total_steps=2, log_every=1), str(tmp_path), progress=False)
  assert int(r.state.step) == 2
  rows = log.read(str(tmp_path))
  assert [row["step"] for row in rows] == [1, 2]
  for key in ("loss", "lr", "grad_norm", "param_norm", "probe_epe_px", "images_per_s"):
    assert np.isfinite(rows[-1][key])
  if objective in ("relative", "hybrid"):
    assert {"rel_rotate", "sigma_rotate", "relative"} <= set(rows[-1])
  if objective != "relative":
    assert ("nt_xent" if objective == "simclr" else "peclr") in rows[-1]


def test_bfloat16_loss_curve_is_within_the_noise_of_float32(data_root, tmp_path):
  """Mixed precision: bf16 convolutions, float32 params and optimiser state; over 4 steps from the same seed the
  bf16 losses stay closer to the float32 ones than the float32 curve moves from one step to the next (its noise;
  benchmarks/precision.py compares against another seed's curve instead, on longer runs)."""
  import flax.linen as nn
  import jax.numpy as jnp

  def run(dtype):
    # float32: test_resume_reproduces_an_uninterrupted_run's config, so one compilation serves both (conftest's cache)
    c = tiny(data_root, "peclr", total_steps=4, log_every=1, ckpt_every=2, **{"model.dtype": dtype})
    r = pretrain.train(c, str(tmp_path / dtype), progress=False)
    return r, c, np.array([m["loss"] for m in r.metrics])

  bf16, c, loss_bf16 = run("bfloat16")
  _, _, loss_fp32 = run("float32")
  state = jax.tree.leaves((bf16.state.params, bf16.state.opt_state))
  assert {x.dtype for x in state if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
  variables = {"params": bf16.state.params, "batch_stats": bf16.state.batch_stats}
  _, inter = pretrain.Pretrainer(c.model, "peclr").apply(
    variables, jnp.zeros((2, 32, 32, 3)), train=False, capture_intermediates=lambda m, _: isinstance(m, nn.Conv)
  )
  assert {x.dtype for x in jax.tree.leaves(inter)} == {jnp.dtype(jnp.bfloat16)}  # the convolutions ran in bf16
  assert np.isfinite(loss_bf16).all()
  gap, noise = np.abs(loss_bf16 - loss_fp32).mean(), np.abs(np.diff(loss_fp32)).mean()
  assert gap < noise, (gap, noise, loss_bf16, loss_fp32)


def test_two_devices_equal_one_device(data_root, tmp_path):
  """One step with the batch sharded over 2 devices (global BN, global negatives) = the 1-device step, to 1e-5.

  SGD keeps the comparison linear in the gradients (Adam's first step is ~sign(g), which amplifies rounding).
  """
  assert jax.device_count() >= 2, "conftest sets 2 emulated CPU devices"
  # The losses are L1: a residual within rounding of zero flips its gradient's sign between the two reductions. On
  # these tiny lifelike crops some residuals sit there (the online probe's bias differs, the losses agree to 1e-7);
  # the legacy images leave none, so they test the sharding alone.
  c = tiny(
    os.path.join(data_root, "legacy"),
    "hybrid",
    total_steps=1,
    log_every=1,
    **{"optim.optimizer": "sgd", "data.synthetic_style": "legacy"},
  )
  one = pretrain.train(c, str(tmp_path / "one"), progress=False, devices=jax.devices()[:1])
  two = pretrain.train(c, str(tmp_path / "two"), progress=False, devices=jax.devices()[:2])
  (a,), (b,) = one.metrics, two.metrics
  for k in ("loss", "peclr", "relative", "probe_l1", "grad_norm", "param_norm"):
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(_leaves(one.state), _leaves(two.state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resume_reproduces_an_uninterrupted_run(data_root, tmp_path):
  c = tiny(data_root, "peclr", total_steps=4, log_every=1, ckpt_every=2)
  full = pretrain.train(c, str(tmp_path / "full"), progress=False)
  pretrain.train(c, str(tmp_path / "split"), progress=False, stop_at=2)  # as if preempted after step 2
  resumed = pretrain.train(c, str(tmp_path / "split"), progress=False)  # same workdir: resumes at step 2
  assert [r["step"] for r in resumed.metrics] == [3, 4]
  for a, b in zip(full.metrics[2:], resumed.metrics):  # same data order, same randomness, same state
    assert a["loss"] == b["loss"] and a["probe_l1"] == b["probe_l1"]
  for a, b in zip(_leaves(full.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)


def test_gradient_accumulation_updates_every_k_steps(data_root, tmp_path):
  """optax.MultiSteps (the reference's 16 x 128): the model changes only on every accum_steps-th step."""
  c = tiny(data_root, "simclr", total_steps=2, **{"optim.accum_steps": 2})
  one = pretrain.train(c, str(tmp_path / "a"), progress=False, stop_at=1)
  zero = pretrain.train(
    tiny(data_root, "simclr", total_steps=1), str(tmp_path / "b"), freeze_encoder=True, progress=False
  )  # frozen = the initial encoder
  two = pretrain.train(c, str(tmp_path / "a"), progress=False)
  init, after1, after2 = (jax.tree.leaves(r.state.params["encoder"]) for r in (zero, one, two))
  assert all(np.array_equal(a, b) for a, b in zip(init, after1))
  assert any(not np.array_equal(a, b) for a, b in zip(init, after2))


def test_nan_stops_with_a_clear_message_and_keeps_last_good_checkpoint(data_root, tmp_path):
  c = tiny(data_root, "simclr", total_steps=6, log_every=1, ckpt_every=1, **{"optim.optimizer": "sgd"})
  pretrain.train(
    tiny(data_root, "simclr", total_steps=1, log_every=1, ckpt_every=1, **{"optim.optimizer": "sgd"}),
    str(tmp_path),
    progress=False,
  )
  c.optim.base_lr = 1e30  # the next update overflows
  with pytest.raises(TrainingError, match=r"non-finite .* at step 2.*Last good checkpoint: step 1"):
    pretrain.train(c, str(tmp_path), progress=False)
  from peclr_jax import checkpoint

  assert checkpoint.manager(str(tmp_path)).latest_step() == 1


def test_frozen_encoder_trains_only_the_probe(data_root, tmp_path):
  """Two frozen runs of different lengths keep the same (initial) encoder while their probes differ."""
  one = pretrain.train(
    tiny(data_root, "peclr", total_steps=1), str(tmp_path / "a"), freeze_encoder=True, progress=False
  )
  three = pretrain.train(
    tiny(data_root, "peclr", total_steps=3), str(tmp_path / "b"), freeze_encoder=True, progress=False
  )
  for part in ("encoder", "proj"):
    for a, b in zip(jax.tree.leaves(one.state.params[part]), jax.tree.leaves(three.state.params[part])):
      np.testing.assert_array_equal(a, b)
  p1, p3 = jax.tree.leaves(one.state.params["probe"]), jax.tree.leaves(three.state.params["probe"])
  assert any(not np.array_equal(a, b) for a, b in zip(p1, p3))


@pytest.mark.parametrize(
  "override, message", [("--config.batch_sizee=4", "batch_sizee"), ("--config.batch_size=abc", "invalid literal")]
)
def test_bad_command_lines_fail_before_any_work(override, message, tmp_path):
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [
    sys.executable,
    "-m",
    "peclr_jax.pretrain",
    "--config=pretrain:peclr,tiny",
    f"--workdir={tmp_path / 'w'}",
    override,
  ]
  r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and message in r.stderr + r.stdout
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("model.dtype", "float16", "config.model.dtype='float16'"),
    ("model.conv", "fast", "config.model.conv='fast'"),
    ("augment.ops", ("rotate", "spin"), "'spin'"),
  ],
)
def test_bad_config_values_fail_before_any_work(key, value, message, tmp_path):
  import re

  c = tiny(str(tmp_path / "data"), **{key: value})
  with pytest.raises(TrainingError, match=re.escape(message)):
    pretrain.train(c, str(tmp_path / "w"), progress=False)
  assert not (tmp_path / "w").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("problem", ["missing root", "annotation length"])
def test_bad_dataset_is_one_line_naming_the_file(problem, data_root, tmp_path):
  import json
  import shutil
  import subprocess
  import sys

  root = str(tmp_path / "FreiHAND")
  if problem == "missing root":
    path = root
  else:
    from peclr_jax.data import synthetic

    synthetic.generate(data_root, 64, 16, 0, progress=False)  # the tiny config's set (a no-op once rendered)
    shutil.copytree(data_root, root)
    path = os.path.join(root, "training_xyz.json")
    with open(path) as f:
      xyz = json.load(f)
    with open(path, "w") as f:
      json.dump(xyz[:-1], f)  # one label short
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [
    sys.executable,
    "-m",
    "peclr_jax.pretrain",
    "--config=pretrain:peclr,tiny",
    f"--workdir={tmp_path / 'w'}",
    "--config.data.name=freihand",
    f"--config.data.root={root}",
  ]
  r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
  assert r.returncode == 1 and "Traceback" not in r.stderr
  (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
  assert path in line, line
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_unwritable_workdir(data_root, tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(TrainingError, match="not writable"):
    pretrain.train(tiny(data_root), str(tmp_path / "file" / "w"), progress=False)


def test_mix_roots_mix_other_sets_into_the_training_split(data_root, tmp_path):
  from peclr_jax.data import synthetic

  other = str(tmp_path / "other")
  synthetic.generate(other, 24, 4, seed=3, progress=False)
  c = tiny(data_root, **{"data.mix_roots": (other,)})
  src = inputs.source(c.data)
  assert len(src) == 64 + 24
  sources = np.array([int(src[i]["source"]) for i in range(len(src))])
  assert set(sources) == {0, 1} and 0.3 < sources.mean() < 0.7  # equal weights, not equal lengths
  assert not hasattr(inputs.source(c.data, "evaluation"), "sources")  # evaluation stays the main set
