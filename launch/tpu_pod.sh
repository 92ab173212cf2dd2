#!/usr/bin/env bash
# Pretraining on a Cloud TPU VM pod slice: create it, copy this repository to every worker, install, run one
# process per host (jax.distributed reads the pod's layout from the TPU metadata), then copy the results back.
#
#   TPU=peclr-v4-32 ZONE=us-central2-b BUCKET=my-bucket bash launch/tpu_pod.sh [--config.key=value ...]
#   TPU=peclr-v4-32 ZONE=us-central2-b BUCKET=my-bucket STEP=run bash launch/tpu_pod.sh   # after a preemption
#
# Settings (environment): TPU (name), ZONE, BUCKET (a GCS bucket, mounted with gcsfuse at /mnt/peclr on every
# worker: checkpoints must be on storage every host sees), TYPE (v4-32), RUNTIME (tpu-ubuntu2204-base), NAME
# (peclr; the run's folder in the bucket), CONFIG (pretrain:peclr, the reference's setting),
# SPOT=1 (a preemptible slice), STEP (create | copy | run | fetch | delete; default: create, copy, run, fetch).
# Results: gs://$BUCKET/$NAME (checkpoints/, metrics.jsonl, tb/, encoder/), fetched to runs/$NAME. A preempted run
# resumes from its last checkpoint when the run step is repeated (on a recreated slice: create, copy, run).
# The global batch (--config.batch_size) must divide by the slice's device count; the data root
# (--config.data.root) is read on every host (the embedded set is rendered on each, identically).
set -euo pipefail
: "${TPU:?set TPU}" "${ZONE:?set ZONE}" "${BUCKET:?set BUCKET}"
TYPE=${TYPE:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
NAME=${NAME:-peclr}
CONFIG=${CONFIG:-pretrain:peclr}
repo="$(cd "$(dirname "$0")/.." && pwd)"
vm=(gcloud compute tpus tpu-vm --zone "$ZONE")
overrides=$(printf ' %q' "$@")

create() {
  "${vm[@]}" create "$TPU" --accelerator-type "$TYPE" --version "$RUNTIME" ${SPOT:+--spot}
}

copy() {
  tar -C "$repo" -czf /tmp/peclr_jax.tgz --exclude=.venv --exclude=runs --exclude=data --exclude=.git .
  "${vm[@]}" scp /tmp/peclr_jax.tgz "$TPU":~/ --worker=all
  "${vm[@]}" ssh "$TPU" --worker=all --command "set -e; mkdir -p peclr_jax && tar -xzf peclr_jax.tgz -C peclr_jax
    cd peclr_jax && python3 -m venv .venv && . .venv/bin/activate && pip install -q -e . 'jax[tpu]'
    sudo mkdir -p /mnt/peclr && sudo chown \$USER /mnt/peclr
    mountpoint -q /mnt/peclr || gcsfuse --implicit-dirs $BUCKET /mnt/peclr"
}

run() {
  "${vm[@]}" ssh "$TPU" --worker=all --command "cd peclr_jax && . .venv/bin/activate && python -m peclr_jax.pretrain \
    --config=$CONFIG --workdir=/mnt/peclr/$NAME --distributed=on $overrides"
}

fetch() {
  mkdir -p runs
  gsutil -m rsync -r "gs://$BUCKET/$NAME" "runs/$NAME"
}

delete() {
  "${vm[@]}" delete "$TPU" --quiet
}

if [[ -n ${STEP:-} ]]; then
  "$STEP"
else
  create
  copy
  run
  fetch
fi
