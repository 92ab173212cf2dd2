"""The command line of every tool: absl flags with ml_collections' config flag (big_vision's convention), and how a
command ends.

  def define(fv, argv):
    cli.config_flag(fv, argv, "pretrain:OBJECTIVE[,SIZE]")
    cli.workdir_flag(fv)
  args = cli.parse(argv, __doc__, define)   # argv without the program name (None: sys.argv[1:])
  with cli.errors():
    train(args.config, args.workdir)

Each call parses into a fresh FlagValues, so tools (and tests) can run one after another in one process. `--config`
takes a config name (`pretrain:peclr,cpu`, see peclr_jax/configs) or a file path, and `--config.key=value`
overrides; a mistyped key, a wrong type or a bad argument is one `error:` line, as is every error a user can fix
(`errors`). `--help` prints the tool's docstring and its flags.
"""

import contextlib
import os
import re
import sys
import textwrap
import time

from absl import flags
from ml_collections import config_flags

from peclr_jax import checkpoint, configs, sharding
from peclr_jax.errors import ConfigError, DataError, TrainingError, WriteError

HELP = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def config_flag(fv, argv, what, default=None):
  """--config: NAME:ARG or PATH[:ARG]; `what` says which ARG, e.g. "pretrain:OBJECTIVE[,SIZE]"; `default` likewise."""
  if default is not None:
    name, colon, arg = default.partition(":")
    default = f"{configs.path(name)}{colon}{arg}"
  config_flags.DEFINE_config_file(
    "config",
    default,
    f"the config, {what} (peclr_jax/configs/) or a config file's path; then --config.key=value overrides",
    flag_values=fv,
    lock_config=True,
    sys_argv=argv,
  )


def workdir_flag(fv, help_text="where checkpoints, metrics.jsonl and TensorBoard logs go"):
  flags.DEFINE_string("workdir", None, help_text, flag_values=fv)


def encoder_flag(fv):
  """--encoder, for the tools that measure a frozen encoder; `with_encoder` puts it into the config."""
  flags.DEFINE_string(
    "encoder",
    None,
    "a pretraining workdir or encoder export (default: config.encoder; empty = random init)",
    flag_values=fv,
  )


def with_encoder(args):
  config = args.config
  if args.encoder is not None:
    config.encoder = args.encoder
  return config


def print_report(result):
  """Prints a tool's Markdown report and the files it wrote (result["paths"])."""
  with open(result["paths"]["markdown"]) as f:
    print(f.read())
  print("wrote " + ", ".join(result["paths"].values()))


def distributed_flags(fv):
  flags.DEFINE_enum(
    "distributed",
    "auto",
    sharding.MODES,
    "start jax.distributed: auto = when a multi-process "
    "launcher is detected (JAX_COORDINATOR_ADDRESS, srun with several tasks, a TPU pod)",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "coordinator", None, "host:port of process 0 (default: detected, or JAX_COORDINATOR_ADDRESS)", flag_values=fv
  )
  flags.DEFINE_integer("num_processes", None, "number of processes (default: detected)", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "this process's index (default: detected)", flag_values=fv)


def start_distributed(args):
  """jax.distributed from the distributed_flags (sharding.init_distributed), before anything touches a device."""
  try:
    sharding.init_distributed(args.distributed, args.coordinator, args.num_processes, args.process_id)
  except ValueError as e:
    fail(str(e))


def fail(message):
  """Ends the command with one `error:` line on stderr and status 1."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  raise SystemExit(1)


def _resolve_config(argv):
  """`--config=NAME:ARG` with NAME a config of peclr_jax/configs -> that file's path (config_flags loads paths)."""
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a in ("--config", "-config") and i + 1 < len(argv):
      a, i = f"--config={argv[i + 1]}", i + 1
    if a.startswith(("--config=", "-config=")):
      flag, value = a.split("=", 1)
      name, colon, arg = value.partition(":")
      a = f"{flag}={configs.path(name)}{colon}{arg}"
    out.append(a)
    i += 1
  return out


def _message(e):
  msg = str(e).replace("\\n", " ").replace("\\'", "'")
  msg = msg[1:-1] if msg[:1] in "'\"" and msg[-1:] == msg[:1] else msg
  # absl's words for a bad boolean, as one of our `expected ...` messages
  return re.sub(r"\('Non-boolean argument to boolean flag', '(.*)'\)", r"expected True or False, not '\1'", msg)


def usage(fv):
  """One entry per flag the tool defines (not absl's own): name, help, default."""
  lines = []
  for module, defined in fv.flags_by_module_dict().items():
    for flag in sorted(defined, key=lambda f: f.name) if module != "absl.flags" else ():
      shown = (flag.default_as_str or str(flag.default)).strip("'")
      default = "" if flag.default is None else f" (default: {shown})"
      lines.append(
        textwrap.fill(f"--{flag.name}: {flag.help}{default}", 116, initial_indent="  ", subsequent_indent="      ")
      )
  return "\n".join(lines)


def parse(argv: list[str] | None, doc: str, define, required: tuple[str, ...] = ("workdir",)) -> flags.FlagValues:
  """Parses `argv` into the flags `define(fv, full_argv)` defines; returns the FlagValues."""
  argv = list(sys.argv[1:] if argv is None else argv)
  prog = os.path.basename(sys.argv[0]) or "peclr"
  fv = flags.FlagValues()
  if any(a in HELP for a in argv):
    define(fv, [prog])
    print(doc.strip() + "\n\nflags:\n" + usage(fv))
    raise SystemExit(0)
  try:
    full = [prog, *_resolve_config(argv)]
    define(fv, full)
    rest = fv(full)
    if "config" in fv:
      fv.config.keys()  # a config file that failed to load raises here, not at first use
  except ConfigError as e:
    fail(str(e))
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    fail(f"bad command line: {_message(e)}")
  if len(rest) > 1:
    fail(f"unexpected arguments {rest[1:]} (flags are --name=value)")
  missing = [f"--{n}" for n in required if fv[n].value is None]
  if missing:
    fail(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (--help lists the flags)")
  return fv


@contextlib.contextmanager
def errors(*more):
  """How a command ends: one `error:` line (status 1) for TrainingError, DataError and `more`; after a preemption,
  `stopped:` and status 128 + signal, the shell's "killed by signal" (the run is not finished)."""
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
  except (TrainingError, DataError, *more) as e:
    fail(str(e))
  except checkpoint.Preempted as e:
    print(f"stopped: {e}", flush=True)
    raise SystemExit(128 + e.signum) from None
