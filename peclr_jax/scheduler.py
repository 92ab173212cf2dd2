"""Runs a set of commands as subprocesses: dependencies, a few at a time, failures contained, signals passed on.

A run is anything with `name`, `command(root)` (argv), `workdir(root)` (its run.log goes there), `done(root)` (its
output exists) and `requires()` (names of the runs it needs). Finished runs are skipped, so executing the same set
again resumes it.
"""

import os
import shlex
import signal
import subprocess
import time

from peclr_jax import checkpoint


def execute(runs, root: str, parallel: int = 1, log=print, poll: float = 1.0) -> list[str]:
  """Runs what is not done yet, respecting `requires`; returns the names of runs that failed.

  On SIGTERM / SIGINT no new run starts; SIGTERM is passed on to the running ones (a terminal's Ctrl-C reaches them
  already), which checkpoint and exit, and then checkpoint.Preempted is raised: executing again resumes.
  """
  pending = [r for r in runs if not r.done(root)]
  for r in runs:
    if r.done(root):
      log(f"[done]    {r.name}")
  failed, active, stop = [], {}, []

  def on_signal(signum, frame):
    stop.append(signum)
    if signum == signal.SIGTERM:
      for _, proc, _, _ in active.values():
        proc.send_signal(signum)

  with checkpoint.handling((signal.SIGTERM, signal.SIGINT), on_signal):
    while (pending and not stop) or active:
      # A run whose input run failed can never start.
      for r in [r for r in pending if set(r.requires()) & set(failed)]:
        pending.remove(r)
        failed.append(r.name)
        log(f"[skipped] {r.name}: {', '.join(sorted(set(r.requires()) & set(failed)))} failed")
      blocked = {r.name for r in pending} | set(active) | set(failed)
      ready = [r for r in pending if not set(r.requires()) & blocked]
      while ready and len(active) < parallel and not stop:
        r = ready.pop(0)
        pending.remove(r)
        os.makedirs(r.workdir(root), exist_ok=True)
        out = open(os.path.join(r.workdir(root), "run.log"), "a")
        log(f"[start]   {r.name}: {shlex.join(r.command(root))}")
        active[r.name] = (
          r,
          subprocess.Popen(r.command(root), stdout=out, stderr=subprocess.STDOUT),
          out,
          time.perf_counter(),
        )
      for name, (r, proc, out, t0) in list(active.items()):
        if proc.poll() is None:
          continue
        out.close()
        del active[name]
        if proc.returncode == 0 and r.done(root):
          log(f"[ok]      {name} ({time.perf_counter() - t0:.0f} s)")
        elif stop and proc.returncode > 128:  # checkpointed on the signal; resumes with the study
          log(f"[stopped] {name} (exit {proc.returncode})")
        else:
          failed.append(name)
          log(f"[failed]  {name} (exit {proc.returncode}); see {os.path.join(r.workdir(root), 'run.log')}")
      if active:
        time.sleep(poll)
  if stop:
    raise checkpoint.Preempted(stop[0], None, root)
  return failed


def write_commands(runs, root):
  """`<root>/commands.sh`: every run's command in order, so any run can be repeated by hand."""
  with open(os.path.join(root, "commands.sh"), "w") as f:
    f.write("# The study's runs, in order; each resumes from its own checkpoint.\n")
    for r in runs:
      f.write(shlex.join(r.command(root)) + "\n")
