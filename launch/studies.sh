#!/usr/bin/env bash
# The papers' studies, the research result (objectives) first, one after another, on the embedded data (or on the
# data given by extra overrides).
#
#   bash launch/studies.sh [SIZE] [WORKDIR] [extra --config.key=value ...]
#   bash launch/studies.sh cpu runs/studies
#   bash launch/studies.sh full /bucket/studies '--config.data_overrides=(("data.name","freihand"),("data.root","/data/FreiHAND_pub_v2"))'
#
# Each study resumes where it stopped (finished runs are skipped), so re-run the same command after a preemption.
# The composition study reads the ablation's best objective per augmentation. Results: WORKDIR/<study>/results.md.
set -euo pipefail
size=${1:-cpu}
root=${2:-runs/studies}
shift $(( $# > 2 ? 2 : $# ))
for study in objectives ablation composition cross_dataset supervised; do
  extra=()
  if [[ $study == composition ]]; then
    extra=(--config.best_from="$root/ablation/best_objectives.json")
  fi
  python -m peclr_jax.study --config="study:$study,$size" --workdir="$root/$study" "${extra[@]}" "$@"
done
