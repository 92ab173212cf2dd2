"""Every config value is checked before any work: each field with a closed set of values or a range, given a wrong
value on the command line, ends the tool with status 1 and one `error:` line naming the key and what is allowed,
with no traceback and nothing created. The allowed values are written out here by hand, not read from the code."""

import os
import subprocess
import sys

import pytest

from peclr_jax import configs, pretrain, probe, study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = "rotate, crop, scale, color_jitter, color_drop, blur, noise, cut_out, sobel"

# (key, wrong value as typed on the command line, words the error must contain besides the key)
DATA = [
  ("data.name", "FreiHAND", "one of synthetic, freihand, interhand, folder"),
  ("data.synthetic_train", "0", "an integer >= 1"),
  ("data.synthetic_versions", "0", "an integer >= 1"),
  ("data.synthetic_eval", "-1", "an integer >= 0"),
  ("data.synthetic_style", "Lifelike", "one of legacy, lifelike"),
  ("data.val_fraction", "1.0", "a number in [0, 1)"),
  ("data.mix_roots", "(1,)", "a tuple of paths"),
  ("data.host_size", "0", "an integer >= 1"),
  ("data.host_margin", "0.0", "a number > 0"),
  ("data.workers", "-1", "an integer >= 0"),
  ("data.threads", "0", "an integer >= 1"),
  ("data.skip_corrupt", "maybe", "True or False"),
]
AUGMENT = [
  ("augment.ops", "('rotate','spin')", f"a tuple of {OPS}"),
  ("augment.out_size", "0", "an integer >= 1"),
  ("augment.rotate_deg", "200.0", "a number in [0, 180]"),
  ("augment.jitter", "-0.1", "a number in [0, 1]"),
  ("augment.jitter_mode", "left", "one of symmetric, reference"),
  ("augment.margin", "0.0", "a number > 0"),
  ("augment.scale_range", "(1.5,0.9)", "a pair (lo, hi) of numbers > 0, lo <= hi"),
  ("augment.fallback_radius", "-1.0", "a number > 0"),
  *[(f"augment.p_{op}", "1.5", "a number in [0, 1]") for op in ("sobel", "cut_out", "blur", "noise", "color_drop")],
  ("augment.hue", "(1.0,0.5)", "a pair (lo, hi) of numbers >= 0, lo <= hi"),
  ("augment.sat", "(-1.0,0.5)", "a pair (lo, hi) of numbers >= 0, lo <= hi"),
  ("augment.value_gain", "(0.5,)", "a pair (lo, hi) of numbers >= 0, lo <= hi"),
  ("augment.value_bias", "(20.0,5.0)", "a pair (lo, hi) of numbers, lo <= hi"),
  ("augment.noise_std", "-1.0", "a number >= 0"),
  ("augment.cut_out_max", "2.0", "a number in [0, 1]"),
  ("augment.blur_sigma", "(0.0,2.0)", "a pair (lo, hi) of numbers > 0, lo <= hi"),
]
MODEL = [
  ("model.name", "ResNet18", "one of resnet18, resnet34, resnet50, resnet101, resnet152, hourglass"),
  ("model.width", "0", "an integer >= 1"),
  ("model.small_stem", "maybe", "True or False"),
  ("model.zero_init_last_bn", "maybe", "True or False"),
  ("model.stacks", "0", "an integer >= 1"),
  ("model.proj_hidden", "0", "an integer >= 1"),
  ("model.proj_out", "0", "an integer >= 1"),
  ("model.rel_hidden", "0", "an integer >= 1"),
  ("model.conv", "fast", "one of auto, xla, cpu, onednn"),
  ("model.dtype", "float16", "one of float32, bfloat16"),
]
RUN = [
  ("seed", "1.5", ""),  # an integer: the flag parser's type check
  ("batch_size", "0", "an integer >= 1"),
  ("batch_size", "3", "a multiple of the mesh's 2 devices"),
  ("total_steps", "1.5", ""),  # an integer; <= 0 means num_epochs, checked below where that is unset too
  ("log_every", "0", "an integer >= 1"),
  ("ckpt_every", "0", "an integer >= 1"),
  ("keep_ckpts", "0", "an integer >= 1"),
]
PRETRAIN = (
  DATA
  + AUGMENT
  + MODEL
  + RUN
  + [
    ("objective", "SimCLR", "one of simclr, peclr, relative, hybrid"),
    ("temperature", "0.0", "a number > 0"),
    ("peclr.transforms", "('rotate','shear')", "a tuple of translate, rotate, scale, crop, random_crop"),
    ("peclr.translation_norm", "pixels", "one of reference, crop"),
    ("relative.transforms", "('rotate','hue')", "a tuple of rotate, translate, crop, scale, random_crop, color_jitter"),
    ("weights.contrastive", "-1.0", "a number >= 0"),
    ("weights.relative", "-1.0", "a number >= 0"),
    ("optim.optimizer", "Adam", "one of lars, lars_adam, adam, sgd"),
    ("optim.base_lr", "-1.0", "a number >= 0"),
    ("optim.lr_rule", "cubic", "one of sqrt, linear, none"),
    ("optim.accum_steps", "0", "an integer >= 1"),
    ("optim.weight_decay", "-1.0", "a number >= 0"),
    ("optim.warmup_epochs", "-1.0", "a number >= 0"),
    ("optim.warmup_steps", "-1", "None or an integer >= 0"),
    ("optim.momentum", "1.0", "a number in [0, 1)"),
    ("optim.trust_coefficient", "0.0", "None or a number > 0"),
    ("num_epochs", "1e400", "a number"),  # inf
    ("total_steps", "0", "total_steps > 0 or num_epochs > 0"),  # the tiny config sets no num_epochs
    ("probe_lr", "-1.0", "a number >= 0"),
  ]
)
PROBE = (
  DATA
  + AUGMENT
  + MODEL
  + RUN
  + [
    ("mode", "Linear", "one of linear, mlp, finetune, scratch, label_fraction"),
    ("data.label_fraction", "0.0", "a number in (0, 1]"),
    ("label_fractions", "(0.5,1.5)", "a tuple of numbers in (0, 1]"),
    ("head.kind", "conv", "one of linear, mlp, direct"),
    ("head.hidden", "0", "an integer >= 1"),
    ("head.zero_init", "maybe", "True or False"),
    ("head.feature_norm", "maybe", "True or False"),
    ("keypoints.bone", "ring", "one of middle, index"),
    ("keypoints.root", "elbow", "one of wrist, palm"),
    ("keypoints.refine_root", "maybe", "True or False"),
    ("keypoints.depth_range", "(50.0,4.0)", "a pair (lo, hi) of numbers > 0, lo <= hi"),
    ("keypoints.w_uv", "-1.0", "a number >= 0"),
    ("keypoints.w_z", "-1.0", "a number >= 0"),
    ("keypoints.w_root", "-1.0", "a number >= 0"),
    ("optim.lr", "-1.0", "a number >= 0"),
    ("optim.weight_decay", "-1.0", "a number >= 0"),
    ("optim.warmup_steps", "-1", "an integer >= 0"),
    ("num_epochs", "1e400", "a number"),
    ("random_init_bn_steps", "-1", "an integer >= 0"),
    ("mode", "finetune", "needs --config.encoder"),  # a mode and an encoder that do not go together
    ("head.kind", "direct", "expected config.model.name='hourglass'"),
  ]
)
STUDY = [
  ("study", "Ablation", "one of objectives, ablation, composition, cross_dataset, supervised"),
  ("size", "huge", "one of full, cpu, tiny"),
  ("parallel", "0", "an integer >= 1"),
  ("dry_run", "maybe", "True or False"),
  ("data_overrides", "(('data.root',),)", "a tuple of (key, value) pairs"),
  ("pretrain_steps", "0", "an integer >= 1, or -1"),
  ("probe_steps", "-2", "an integer >= 1, or -1"),
  ("probe_mode", "finetune", "one of linear, mlp"),
  ("seeds", "(0,0)", "a tuple of one or more distinct integers >= 0"),
  ("measures", "('knn','linear')", "a tuple of knn, equivariance"),
  ("augmentations", "('crop','spin')", f"a tuple of {OPS}"),
  ("objectives", "('simclr','moco')", "a tuple of simclr, peclr, relative, hybrid"),
  ("compose", "('crop','spin')", f"a tuple of {OPS}"),
  ("domain_a", "(('distance',(0.3,0.5)),('fog',1))", "flags among style, distance, skin, backgrounds, seed, versions"),
  ("domain_b", "(('size',1),)", "flags among style, distance, skin, backgrounds, seed, versions"),
  ("domain_train", "0", "an integer >= 1"),
  ("domain_eval", "0", "an integer >= 1"),
  ("cross_probe_modes", "('linear','scratch')", "a tuple of linear, mlp, finetune"),
  ("models", "('resnet18','vit')", "a tuple of resnet18, resnet34, resnet50, resnet101, resnet152, hourglass"),
  ("ops", "('crop','spin')", f"a tuple of {OPS}"),
  ("label_fractions", "(0.0,)", "a tuple of numbers in (0, 1]"),
]
# Fields with no closed set or range: paths and free text (checked when used), and set by the trainer.
FREE = {
  "pretrain": {"data.root", "data.synthetic_seed", "optim.batch_size"},  # optim.batch_size <- batch_size
  "probe": {"data.root", "data.synthetic_seed", "encoder"},
  "study": {"best", "best_from"},
}
TOOLS = {
  "pretrain": (pretrain.main, "pretrain:peclr,tiny", PRETRAIN),
  "probe": (probe.main, "probe:linear,tiny", PROBE),
  "study": (study.main, "study:objectives,tiny", STUDY),
}


def _leaves(c, prefix=""):
  for k, v in c.items():
    if hasattr(v, "items"):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}"


@pytest.mark.parametrize("tool", TOOLS)
def test_every_field_is_walked_or_named_free(tool):
  """A field added to a config must get a wrong-value case above (or be named free): the walk stays complete."""
  _, spec, cases = TOOLS[tool]
  walked = {key for key, _, _ in cases} | FREE[tool]
  missing = [k for k in _leaves(configs.load(spec)) if k not in walked]
  assert not missing, f"{tool} config fields with no wrong-value case: {missing}"
  assert walked <= set(_leaves(configs.load(spec))), "a case names a field the config does not have"


@pytest.mark.parametrize(
  "tool, key, value, words", [(t, *case) for t, (_, _, cases) in TOOLS.items() for case in cases]
)
def test_a_wrong_value_is_one_error_line_before_any_work(tool, key, value, words, tmp_path, capsys):
  main, spec, _ = TOOLS[tool]
  work, data = tmp_path / "w", tmp_path / "data"
  argv = [f"--config={spec}", f"--config.{key}={value}", f"--workdir={work}"]
  if tool != "study":
    argv.append(f"--config.data.root={data}")
  with pytest.raises(SystemExit) as e:
    main(argv)
  err = capsys.readouterr().err
  lines = [x for x in err.splitlines() if x.strip()]
  assert e.value.code == 1, err
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert f"config.{key}" in lines[0] and words in lines[0], lines[0]
  assert not work.exists() and not data.exists()


@pytest.mark.parametrize(
  "spec, words",
  [
    (
      "pretrain:tiny",
      "expected OBJECTIVE[,SIZE] with OBJECTIVE one of simclr, peclr, relative, hybrid and SIZE one of full, cpu, tiny",
    ),
    ("pretrain:peclr,huge", "SIZE one of full, cpu, tiny"),
    (
      "configs/pretrain.py:peclr",
      "no such file; expected a config file's path, a module, or one of pretrain, probe, study",
    ),
  ],
)
def test_a_bad_config_argument_is_one_error_line(spec, words, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    pretrain.main([f"--config={spec}", f"--workdir={tmp_path / 'w'}"])
  (line,) = capsys.readouterr().err.splitlines()
  assert e.value.code == 1 and line.startswith("error: ") and words in line, line
  assert not (tmp_path / "w").exists()


def test_configs_load_by_name_by_path_and_by_module(tmp_path):
  by_name = configs.load("pretrain:simclr,tiny")
  packaged = os.path.join(ROOT, "peclr_jax", "configs", "pretrain.py")
  assert configs.load(f"{packaged}:simclr,tiny").to_dict() == by_name.to_dict()
  assert configs.load("pretrain.py:simclr,tiny").to_dict() == by_name.to_dict()
  assert configs.load("peclr_jax.configs.pretrain:simclr,tiny").to_dict() == by_name.to_dict()
  mine = tmp_path / "mine.py"  # a user's own config file, by path
  mine.write_text(
    "from peclr_jax import configs\n\ndef get_config(arg=None):\n"
    "  c = configs.load('pretrain:peclr,tiny')\n  c.seed = 11\n  return c\n"
  )
  assert configs.load(str(mine)).seed == 11
  assert by_name.objective == "simclr" and configs.load("probe:mlp,cpu").head.kind == "mlp"


def test_the_command_line_outside_the_repository_and_its_help(tmp_path):
  """From another directory a config is found by name; `--help` says what the tool does and exits 0."""
  run = lambda *a: subprocess.run([sys.executable, "-m", *a], capture_output=True, text=True, timeout=120, cwd=tmp_path)
  r = run("peclr_jax.pretrain", "--help")
  assert r.returncode == 0 and r.stdout.startswith("Self-supervised pretraining") and "--config.key=value" in r.stdout
  r = run("peclr_jax.pretrain", "--config=pretrain:peclr,tiny", "--config.objective=SimCLR", "--workdir=w")
  assert (
    r.returncode == 1
    and "Traceback" not in r.stderr
    and r.stderr.strip().splitlines()[-1]
    == ("error: config.objective='SimCLR': expected one of simclr, peclr, relative, hybrid")
  )
  assert not (tmp_path / "w").exists()
