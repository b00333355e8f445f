#!/usr/bin/env bash
# Run experiments in this checkout and push them: what each machine of a multi-machine study
# does (docs/many-machines.md). Used by launch/slurm-array.sbatch and launch/skypilot.yaml.
#
#   launch/run-experiments.sh [dvc exp run options]
#   launch/run-experiments.sh -n r56 -S 'run_variants=[resnet56]'
#   launch/run-experiments.sh -S 'run_variants=[resnet20]' -S 'train.lr=0.05,0.1,0.2'
#
# The options are `dvc exp run`'s; a grid (`-S 'key=a,b,c'`) queues one experiment per point.
# Every experiment goes through DVC's queue, RESNETLAB_JOBS (default 1) at a time; the script
# waits for them, then pushes those that succeeded (`dvc exp push origin <names>`: the git refs
# to the git remote `origin`, the outputs to the default DVC remote) and exits 1 if any failed.
# Before running it pulls the prepared data from the DVC remote, if it is there, so the archive
# is not downloaded again on every machine.
#
# The environment decides where runs are recorded: MLFLOW_TRACKING_URI names the shared MLflow
# server (e.g. http://mlflow.internal:5000), and every machine records into it.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 [dvc exp run options], e.g. -n r56 -S 'run_variants=[resnet56]'" >&2
  exit 2
fi
if [ -z "${MLFLOW_TRACKING_URI:-}" ]; then
  echo "$0: MLFLOW_TRACKING_URI is not set: runs would be recorded in this machine's mlflow.db" \
    "and no other machine would see them; set it to the shared MLflow server" >&2
  exit 2
fi

# The prepared arrays, if another machine pushed them (the first machine prepares them).
dvc pull prepare >/dev/null 2>&1 || echo "prepared data not in the DVC remote: the experiments prepare it"

queued=$(dvc exp run --queue "$@")
echo "$queued"
# "Queued experiment 'name' for future execution.": this script's experiments, and no other.
mapfile -t names < <(sed -n "s/^Queued experiment '\([^']*\)'.*/\1/p" <<<"$queued")
if [ "${#names[@]}" -eq 0 ]; then
  echo "$0: dvc queued no experiment" >&2
  exit 1
fi
dvc queue start -j "${RESNETLAB_JOBS:-1}"
# `dvc queue start` returns at once; the workers run in the background until the queue is empty.
# (Not `dvc queue status | grep -q`: grep stops reading at its match, and under pipefail the
# status command's broken pipe would end the wait.)
while grep -Eq '\b(Queued|Running)\b' <<<"$(dvc queue status)"; do
  sleep 5
done
status=$(dvc queue status)
echo "$status"

failed=()
succeeded=()
for name in "${names[@]}"; do
  if grep -Eq "(^|[[:space:]])$name[[:space:]].*\bSuccess\b" <<<"$status"; then
    succeeded+=("$name")
  else
    failed+=("$name")
  fi
done
if [ "${#succeeded[@]}" -gt 0 ]; then
  dvc exp push origin "${succeeded[@]}"
fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "$0: ${failed[*]} did not succeed; \`dvc queue logs <name>\` shows why" >&2
  exit 1
fi
