#!/usr/bin/env bash
# Run WavJEPA training as N cooperating JAX processes on this machine's CPU: the same
# multi-host code path as a TPU pod or GPU cluster (jax.distributed, a global mesh, per-process
# data shards), small enough for a laptop or a test. Process 0 hosts the coordinator on a free
# localhost port; each process gets D virtual CPU devices.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_multiprocess.sh --workdir DIR [options] [-- --config.leaf=value ...]

Starts processes 0..N-1 of `python -m wavjepa_jax.train` on the CPU (JAX_PLATFORMS=cpu,
XLA_FLAGS=--xla_force_host_platform_device_count=D), waits for all of them and exits non-zero if
any fails (the others are then stopped). Everything after `--` is passed to every process.

Options:
  --num-processes N          Processes (simulated hosts)                      [2]
  --devices-per-process D    CPU devices per process                          [1]
  --config PATH              Config file                  [configs/tiny.py of this checkout]
  --workdir DIR              Metrics and checkpoints; logs go to DIR/logs/process_<i>.log
  --port N                   Coordinator port on localhost                    [a free port]
  --python PY                Interpreter                                      [python3]
  --timeout SECONDS          Stop every process and exit 124 after this long  [no limit]
  --dry-run                  Print the commands (prefixed "+ ") without running anything
  -h, --help                 This help

Example (2 hosts x 4 devices, FSDP over 4 of the 8 devices):
  launch/local_multiprocess.sh --num-processes 2 --devices-per-process 4 \
      --workdir /tmp/wavjepa_mp -- --config.mesh.fsdp=4 --config.total_steps=20
EOF
}

# SC1091: shellcheck follows lib.sh only with -x; the tests lint each script on its own.
# shellcheck source=launch/lib.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404 )); then
  die "needs bash >= 4.4 (macOS: brew install bash), this is $BASH_VERSION"
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NUM_PROCESSES=2
DEVICES_PER_PROCESS=1
CONFIG="$REPO_ROOT/configs/tiny.py"
WORKDIR=""
PORT=""
PYTHON="python3"
TIMEOUT=0
DRY_RUN=0
OVERRIDES=()

while (( $# )); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    --num-processes|--devices-per-process|--config|--workdir|--port|--python|--timeout)
      (( $# >= 2 )) || die "$1 needs a value"
      case $1 in
        --num-processes) NUM_PROCESSES=$2 ;;
        --devices-per-process) DEVICES_PER_PROCESS=$2 ;;
        --config) CONFIG=$2 ;;
        --workdir) WORKDIR=$2 ;;
        --port) PORT=$2 ;;
        --python) PYTHON=$2 ;;
        --timeout) TIMEOUT=$2 ;;
      esac
      shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option '$1' (training overrides go after --; see --help)" ;;
  esac
done

[[ -n $WORKDIR ]] || die "--workdir is required"
[[ $NUM_PROCESSES =~ ^[1-9][0-9]*$ ]] || die "--num-processes must be a positive integer"
[[ $DEVICES_PER_PROCESS =~ ^[1-9][0-9]*$ ]] || die "--devices-per-process must be positive"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds"

if [[ -z $PORT ]]; then
  # Bind port 0 to let the kernel pick a free port, then release it for the coordinator.
  PORT="$("$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("localhost", 0))
print(s.getsockname()[1])')"
fi
LOG_DIR="$WORKDIR/logs"

# Keep the caller's XLA flags but our device count; run this checkout's code, whatever the
# current directory.
xla_flags=()
read -r -a inherited_xla_flags <<< "${XLA_FLAGS:-}"
for flag in "${inherited_xla_flags[@]}"; do
  if [[ $flag != --xla_force_host_platform_device_count=* ]]; then xla_flags+=("$flag"); fi
done
xla_flags+=("--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS")
ENVIRONMENT=(
  JAX_PLATFORMS=cpu
  "XLA_FLAGS=${xla_flags[*]}"
  "PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
)

printf '+ %s\n' "$(shell_join mkdir -p "$LOG_DIR")"
if (( ! DRY_RUN )); then mkdir -p "$LOG_DIR"; fi

PIDS=()
declare -A PROCESS_OF_PID=()
timer=()

# Stop processes started by this script. Each leads its own process group (started under
# `set -m`), so its children, e.g. Grain's data workers, go too. SIGTERM first, SIGKILL what is
# left after 5 s: JAX's preemption service turns SIGTERM into a request to checkpoint, which a
# process stuck in a collective never answers.
stop_processes() {
  local pid attempt
  (( $# )) || return 0
  for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for (( attempt = 0; attempt < 25; attempt++ )); do
    alive "$@" || break
    sleep 0.2
  done
  for pid in "$@"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait "$@" 2>/dev/null || true
}

# Whether any of the given child processes is still running (bash reaps exited children itself,
# so `kill -0` fails for them; `wait PID` still returns their exit status afterwards).
alive() {
  local pid
  for pid in "$@"; do
    if kill -0 "$pid" 2>/dev/null; then return 0; fi
  done
  return 1
}

trap 'stop_processes "${PIDS[@]}" "${timer[@]}"; exit 130' INT TERM

for (( process = 0; process < NUM_PROCESSES; process++ )); do
  command=(env "${ENVIRONMENT[@]}" "$PYTHON" -m wavjepa_jax.train --config "$CONFIG"
           --workdir "$WORKDIR" --coordinator_address "localhost:$PORT"
           --num_processes "$NUM_PROCESSES" --process_id "$process" "${OVERRIDES[@]}")
  log="$LOG_DIR/process_$process.log"
  printf '+ %s > %s 2>&1 &\n' "$(shell_join "${command[@]}")" "$(shell_join "$log")"
  if (( ! DRY_RUN )); then
    set -m  # a new process group per process
    "${command[@]}" > "$log" 2>&1 &
    set +m
    PIDS+=("$!")
    PROCESS_OF_PID[$!]=$process
  fi
done
printf '+ wait  # for all %d processes; stop the rest if one fails\n' "$NUM_PROCESSES"
if (( DRY_RUN )); then exit 0; fi

# Poll until every process has exited; the first failure (or the timeout) stops the others.
status=0
if (( TIMEOUT > 0 )); then
  set -m
  sleep "$TIMEOUT" &
  set +m
  timer=("$!")
fi
running=("${PIDS[@]}")
while (( ${#running[@]} )); do
  still_running=()
  for pid in "${running[@]}"; do
    if alive "$pid"; then still_running+=("$pid"); continue; fi
    code=0
    wait "$pid" || code=$?
    if (( code != 0 && status == 0 )); then
      status=$code
      process=${PROCESS_OF_PID[$pid]}
      log="$LOG_DIR/process_$process.log"
      printf 'local_multiprocess.sh: process %d failed (exit code %d); stopping the others. ' \
        "$process" "$code" >&2
      printf 'Last lines of %s:\n' "$log" >&2
      tail -n 20 "$log" >&2
    fi
  done
  running=("${still_running[@]}")
  if (( status == 0 && ${#timer[@]} && ${#running[@]} )) && ! alive "${timer[@]}"; then
    printf 'local_multiprocess.sh: timed out after %d s; stopping all processes\n' "$TIMEOUT" >&2
    status=124
  fi
  if (( status != 0 )); then break; fi
  sleep 0.2
done
stop_processes "${running[@]}" "${timer[@]}"
if (( status == 0 )); then
  printf 'local_multiprocess.sh: all %d processes finished; logs in %s\n' \
    "$NUM_PROCESSES" "$LOG_DIR"
fi
exit "$status"
