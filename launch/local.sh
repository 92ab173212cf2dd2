#!/usr/bin/env bash
# Multi-process pretraining on this machine: N processes joined by jax.distributed (coordinator on 127.0.0.1, a
# free port; CPU collectives through gloo), exactly as the hosts of a pod or cluster run; each process loads only
# its block of every global batch.
#
#   bash launch/local.sh N WORKDIR [--config.key=value ...]
#   bash launch/local.sh 2 runs/local2 --config.total_steps=200
#   CONFIG=pretrain:simclr,cpu DEVICES_PER_PROCESS=2 bash launch/local.sh 2 runs/local2x2
#
# CONFIG defaults to pretrain:peclr,cpu and JAX_PLATFORMS to cpu. Results land in WORKDIR as for one
# process (checkpoints/, metrics.jsonl and tb/ from process 0, encoder/), each process's output in
# WORKDIR/process_<i>.log. Ctrl-C or SIGTERM to this script: every process checkpoints the same step and exits
# (status 143); the same command resumes.
set -euo pipefail
n=${1:?usage: launch/local.sh N WORKDIR [--config.key=value ...]}
workdir=${2:?usage: launch/local.sh N WORKDIR [--config.key=value ...]}
shift 2
config=${CONFIG:-pretrain:peclr,cpu}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$workdir"
pids=()
# The processes run in the background, so a terminal's Ctrl-C does not reach them; it is passed on as SIGTERM, the
# preemption signal they agree on (jax's preemption sync point).
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}" \
    python -m peclr_jax.pretrain --config="$config" --workdir="$workdir" "$@" --distributed=on \
    --coordinator="127.0.0.1:$port" --num_processes="$n" --process_id="$i" >"$workdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  while true; do  # `wait` returns early when a trapped signal arrives; wait again for the real exit
    wait "$pid" && rc=0 || rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  if ((rc != 0 && status == 0)); then status=$rc; fi
done
tail -n 1 "$workdir/process_0.log"
exit "$status"
