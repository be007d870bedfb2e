#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it (or reuse it), copy this checkout to every
# worker, install it, start `python -m clipjax.main` on all workers, stream worker 0's log.
#
#   TPU_NAME=clip-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#     launch/tpu_pod.sh -- --config configs/quickstart.py --workdir /mnt/shared/runs/q
#
# Environment: TPU_NAME, ZONE (required); PROJECT (default: gcloud's); ACCELERATOR_TYPE
# (default v4-8); RUNTIME_VERSION (default tpu-ubuntu2204-base); SPOT=1 for a spot slice;
# JAX_SPEC (pip requirement for JAX on TPU, default 'jax[tpu]>=0.7,<0.11'); CLIPJAX_MODULE
# (the entry point, default clipjax.main, or a job: clipjax.embed, ...); DRY_RUN=1
# prints the commands instead of running them. --workdir must be storage every worker
# sees (a mounted bucket or NFS): every host writes its own checkpoint shards.
set -euo pipefail

usage() {
  echo "usage: TPU_NAME=... ZONE=... $0 -- <python -m clipjax.main arguments>" >&2
  exit 2
}

[[ $# -ge 1 && $1 == -- ]] || usage
module=${CLIPJAX_MODULE:-clipjax.main}
shift
: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
accelerator=${ACCELERATOR_TYPE:-v4-8}
runtime=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
jax_spec=${JAX_SPEC:-'jax[tpu]>=0.7,<0.11'}
dry_run=${DRY_RUN:-0}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tarball=${TMPDIR:-/tmp}/clipjax-${TPU_NAME}.tar.gz

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone "${ZONE}")
if [[ -n ${PROJECT:-} ]]; then where+=(--project "${PROJECT}"); fi

# One word for a POSIX shell: as it is when plain, else in single quotes.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints a command as a shell would read it; runs it unless DRY_RUN=1.
run() {
  local word line='+'
  for word in "$@"; do line+=" $(quote "${word}")"; done
  echo "${line}"
  if [[ ${dry_run} != 1 ]]; then "$@"; fi
}

# 1. Reuse the slice if it exists, else create it.
if [[ ${dry_run} == 1 ]]; then
  echo "# if this fails (no such TPU VM):"
  run "${gcloud_tpu[@]}" describe "${TPU_NAME}" "${where[@]}" --format='value(state)'
  create=1
elif state=$("${gcloud_tpu[@]}" describe "${TPU_NAME}" "${where[@]}" --format='value(state)' 2>/dev/null); then
  echo "Reusing TPU VM ${TPU_NAME} (state ${state})" >&2
  create=0
else
  create=1
fi
if ((create)); then
  spot=()
  if [[ ${SPOT:-0} == 1 ]]; then spot=(--spot); fi
  run "${gcloud_tpu[@]}" create "${TPU_NAME}" "${where[@]}" --accelerator-type "${accelerator}" \
    --version "${runtime}" "${spot[@]}"
fi

# 2. This checkout (working tree, without .git and run outputs) onto every worker.
run tar -czf "${tarball}" -C "${repo}" --exclude=.git --exclude=runs --exclude=.venv \
  --exclude='*.egg-info' --exclude=__pycache__ .
run "${gcloud_tpu[@]}" scp "${tarball}" "${TPU_NAME}:clipjax.tar.gz" "${where[@]}" --worker=all

# 3. Install into a virtual environment on every worker, after stopping a run we started
#    before (its own process group: setsid below).
install="set -e; if [ -f clipjax-run.pid ]; then kill -- -\$(cat clipjax-run.pid) 2>/dev/null || true; fi
rm -rf clipjax && mkdir clipjax && tar -xzf clipjax.tar.gz -C clipjax
python3 -m venv clipjax-venv && clipjax-venv/bin/pip install -q $(quote "${jax_spec}") -e ./clipjax"
run "${gcloud_tpu[@]}" ssh "${TPU_NAME}" "${where[@]}" --worker=all --command "${install}"

# 4. Start training on all workers, detached from ssh: each logs to ~/clipjax-run.log and
#    leaves its exit status in ~/clipjax-run.rc. JAX reads the slice from TPU metadata.
train="cd clipjax && CLIPJAX_DISTRIBUTED=1 ../clipjax-venv/bin/python -m $(quote "${module}")"
for word in "$@"; do train+=" $(quote "${word}")"; done
train+="; echo \$? > ../clipjax-run.rc"
start="rm -f clipjax-run.rc; setsid nohup bash -c $(quote "${train}") > clipjax-run.log 2>&1 < /dev/null & echo \$! > clipjax-run.pid"
run "${gcloud_tpu[@]}" ssh "${TPU_NAME}" "${where[@]}" --worker=all --command "${start}"

# 5. Follow worker 0 until its run ends; exit with its status.
follow="tail -n +1 --pid=\$(cat clipjax-run.pid) -F clipjax-run.log; exit \$(cat clipjax-run.rc 2>/dev/null || echo 1)"
run "${gcloud_tpu[@]}" ssh "${TPU_NAME}" "${where[@]}" --worker=0 --command "${follow}"
