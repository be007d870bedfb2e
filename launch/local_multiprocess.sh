#!/usr/bin/env bash
# N CPU processes of `python -m clipjax.main` on this machine, joined by jax.distributed
# through a coordinator on a free localhost port: a multi-host run for tests and debugging.
#
#   launch/local_multiprocess.sh N -- --config configs/quickstart.py --workdir runs/mp
#   CLIPJAX_MODULE=clipjax.embed launch/local_multiprocess.sh N -- --config ... --workdir ...
#
# Environment: CLIPJAX_MODULE (the entry point, default clipjax.main; the jobs
# clipjax.embed and clipjax.analysis.frequency join the same way),
# DEVICES_PER_PROCESS (simulated CPU devices per process, default 4),
# PYTHON (default python3), KILL_GRACE (seconds between SIGTERM and SIGKILL, default 5),
# CLIPJAX_HEARTBEAT_TIMEOUT / CLIPJAX_INIT_TIMEOUT (see clipjax/train/distributed.py).
# Output lines are prefixed with [p<i>]. When one process exits non-zero the others are
# stopped, and the launcher exits with the first failure's status (0 if all succeed).
set -euo pipefail

usage() {
  echo "usage: $0 NUM_PROCESSES -- <python -m \${CLIPJAX_MODULE:-clipjax.main} arguments>" >&2
  exit 2
}

[[ $# -ge 2 && $1 =~ ^[1-9][0-9]*$ && $2 == -- ]] || usage
num_processes=$1
shift 2

python=${PYTHON:-python3}
module=${CLIPJAX_MODULE:-clipjax.main}
devices=${DEVICES_PER_PROCESS:-4}
grace=${KILL_GRACE:-5}
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}"
export JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}"
export JAX_NUM_PROCESSES="${num_processes}"
export PYTHONUNBUFFERED=1

pids=()
stop_all() {
  local signal=$1 pid
  for pid in "${pids[@]}"; do
    kill "-${signal}" "${pid}" 2>/dev/null || true
  done
}

stop_then_kill() {
  stop_all TERM
  local deadline=$((SECONDS + grace)) pid alive
  while ((SECONDS < deadline)); do
    alive=0
    for pid in "${pids[@]}"; do
      if kill -0 "${pid}" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || return 0
    sleep 0.2
  done
  stop_all KILL
}

trap 'echo "[launcher] interrupted: stopping all processes" >&2; stop_then_kill; exit 130' INT TERM

echo "[launcher] ${num_processes} processes x ${devices} CPU devices, coordinator ${JAX_COORDINATOR_ADDRESS}" >&2
for ((i = 0; i < num_processes; i++)); do
  JAX_PROCESS_ID=$i "${python}" -m "${module}" "$@" > >(sed -u "s/^/[p${i}] /") 2>&1 &
  pids+=("$!")
  echo "[launcher] process ${i}: pid $!" >&2
done

status=0
running=${num_processes}
finished=()
while ((running > 0)); do
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [[ -z ${finished[$i]:-} ]] || continue
    if ! kill -0 "${pid}" 2>/dev/null; then
      rc=0
      wait "${pid}" || rc=$?
      finished[i]=1
      running=$((running - 1))
      if ((rc != 0 && status == 0)); then
        status=${rc}
        echo "[launcher] process ${i} (pid ${pid}) exited with status ${rc}: stopping the others" >&2
        stop_then_kill
      fi
    fi
  done
  sleep 0.2
done
wait  # the log prefixers
exit "${status}"
