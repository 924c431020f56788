#!/usr/bin/env bash
# Launch WavJEPA pretraining on a Cloud TPU VM slice: one training process per TPU VM host.
#
#   create or reuse the slice -> copy the code to every worker -> install it with jax[tpu]
#   -> start training on every worker -> stream worker 0's log -> (optionally) delete the slice
#
# Training runs detached on the workers (setsid + nohup), so losing the ssh session that streams
# the log does not stop it; `--attach` streams it again and `--stop` ends it. JAX finds the
# coordinator, the process count and the process id by itself on TPU VMs.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --workdir gs://BUCKET/RUN [options] [-- --config.leaf=value ...]

Creates (or reuses) a Cloud TPU VM slice, copies this checkout to every worker, installs it with
jax[tpu] into ~/wavjepa_venv, runs `python -m wavjepa_jax.train` on all workers and streams
worker 0's log until training ends. Everything after `--` is passed to the training command.

Slice:
  --name NAME              TPU VM (or queued resource) name          [wavjepa-$USER]
  --zone ZONE              e.g. us-east5-a        [gcloud config compute/zone]
  --project PROJECT                               [gcloud config project]
  --accelerator-type TYPE  e.g. v5p-64, v5litepod-64, v6e-64, v4-32  [v5p-8]
  --runtime-version V      TPU software version      [from the accelerator type: v5p
                           v2-alpha-tpuv5, v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e,
                           v4 and older tpu-ubuntu2204-base]
  --spot                   Spot capacity (cheaper, preemptible; training resumes from the
                           last checkpoint in --workdir when relaunched)
  --queued                 Request the slice as a queued resource and wait until it is ACTIVE
  --num-slices N           Multislice: N slices over the data-centre network (implies --queued,
                           adds --config.dcn_mesh.data=N unless given after --)      [1]
  --delete                 Delete the slice when training ends (also with --attach / --stop)

Code:
  --repo-url URL           `git clone` URL on the workers instead of copying this checkout
  --ref REF                Branch, tag or commit to check out with --repo-url       [default branch]
  --python-version V       Python for the workers' venv (installed with uv)          [3.11]
  --pip SPEC               Extra package to install on every worker (repeatable)
  --worker-setup CMD       Shell command run on every worker after the install, e.g. mount
                           the data bucket: 'mkdir -p ~/data && { mountpoint -q ~/data ||
                           gcsfuse --implicit-dirs BUCKET ~/data; }'

Training:
  --config PATH            Config file, relative to the repository root   [configs/base.py]
  --workdir URL            Checkpoints and metrics; must be gs:// for a multi-host slice
  --detach                 Start training and return without streaming the log

Other actions:
  --attach                 Only stream worker 0's log of the running training (repeat the
                           --queued / --num-slices of the launch)
  --stop                   Only stop the training on all workers (SIGTERM: JAX's preemption
                           service has every host save a checkpoint at the same step and exit)

  --dry-run                Print the commands (prefixed "+ ") without running anything
  -h, --help               This help

Examples:
  launch/tpu_pod.sh --name wj --zone us-east5-a --accelerator-type v5p-64 --queued --spot \
      --workdir gs://my-bucket/wavjepa/base -- --config.mesh.fsdp=8
  launch/tpu_pod.sh --name wj --zone us-east5-a --queued --attach --delete
EOF
}

# SC1091: shellcheck follows lib.sh only with -x; the tests lint each script on its own.
# shellcheck source=launch/lib.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404 )); then
  die "needs bash >= 4.4 (macOS: brew install bash), this is $BASH_VERSION"
fi

NAME="wavjepa-${USER:-tpu}"
ZONE=""
PROJECT=""
ACCELERATOR_TYPE="v5p-8"
RUNTIME_VERSION=""
SPOT=0
QUEUED=0
NUM_SLICES=1
DELETE=0
REPO_URL=""
REF=""
PYTHON_VERSION="3.11"
EXTRA_PIP=()
WORKER_SETUP=""
CONFIG="configs/base.py"
WORKDIR=""
DETACH=0
ACTION="launch"
DRY_RUN=0
OVERRIDES=()

while (( $# )); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    --name|--zone|--project|--accelerator-type|--runtime-version|--num-slices|--repo-url|--ref|\
    --python-version|--pip|--worker-setup|--config|--workdir)
      (( $# >= 2 )) || die "$1 needs a value"
      case $1 in
        --name) NAME=$2 ;;
        --zone) ZONE=$2 ;;
        --project) PROJECT=$2 ;;
        --accelerator-type) ACCELERATOR_TYPE=$2 ;;
        --runtime-version) RUNTIME_VERSION=$2 ;;
        --num-slices) NUM_SLICES=$2 ;;
        --repo-url) REPO_URL=$2 ;;
        --ref) REF=$2 ;;
        --python-version) PYTHON_VERSION=$2 ;;
        --pip) EXTRA_PIP+=("$2") ;;
        --worker-setup) WORKER_SETUP=$2 ;;
        --config) CONFIG=$2 ;;
        --workdir) WORKDIR=$2 ;;
      esac
      shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --delete) DELETE=1; shift ;;
    --detach) DETACH=1; shift ;;
    --attach) ACTION="attach"; shift ;;
    --stop) ACTION="stop"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option '$1' (training overrides go after --; see --help)" ;;
  esac
done

[[ $NUM_SLICES =~ ^[1-9][0-9]*$ ]] || die "--num-slices must be a positive integer"
if (( NUM_SLICES > 1 )); then QUEUED=1; fi
if [[ -n $REF && -z $REPO_URL ]]; then die "--ref needs --repo-url"; fi
if (( DETACH && DELETE )); then die "--detach with --delete would delete a running slice"; fi
if [[ $ACTION == launch ]]; then
  [[ -n $WORKDIR ]] || die "--workdir is required (a gs:// URL for multi-host slices)"
  if [[ $WORKDIR != gs://* ]]; then
    printf 'tpu_pod.sh: warning: --workdir %s is not on GCS; on a multi-host slice each %s\n' \
      "$WORKDIR" "host would write its own, incomplete checkpoints" >&2
  fi
fi
if [[ -z $RUNTIME_VERSION ]]; then
  case $ACCELERATOR_TYPE in
    v5p-*) RUNTIME_VERSION="v2-alpha-tpuv5" ;;
    v5litepod-*|v5e-*) RUNTIME_VERSION="v2-alpha-tpuv5-lite" ;;
    v6e-*) RUNTIME_VERSION="v2-alpha-tpuv6e" ;;
    *) RUNTIME_VERSION="tpu-ubuntu2204-base" ;;
  esac
fi
if (( NUM_SLICES > 1 )) && [[ " ${OVERRIDES[*]} " != *" --config.dcn_mesh.data="* ]]; then
  OVERRIDES=("--config.dcn_mesh.data=$NUM_SLICES" "${OVERRIDES[@]}")
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GCLOUD_SCOPE=()
if [[ -n $ZONE ]]; then GCLOUD_SCOPE+=("--zone=$ZONE"); fi
if [[ -n $PROJECT ]]; then GCLOUD_SCOPE+=("--project=$PROJECT"); fi

# A queued resource (one or more slices) is reached through `queued-resources ssh/scp`, which
# fans out over its nodes too; a plain TPU VM through `tpu-vm ssh/scp`.
if (( QUEUED )); then
  SSH_ALL=(gcloud compute tpus queued-resources ssh "$NAME" --node=all --worker=all)
  SSH_WORKER0=(gcloud compute tpus queued-resources ssh "$NAME" --node=0 --worker=0)
  SCP_ALL=(gcloud compute tpus queued-resources scp --node=all --worker=all)
else
  SSH_ALL=(gcloud compute tpus tpu-vm ssh "$NAME" --worker=all)
  SSH_WORKER0=(gcloud compute tpus tpu-vm ssh "$NAME" --worker=0)
  SCP_ALL=(gcloud compute tpus tpu-vm scp --worker=all)
fi

# How to name this resource again in a later --attach / --stop.
QUEUED_FLAG=()
if (( NUM_SLICES > 1 )); then
  QUEUED_FLAG=(--num-slices "$NUM_SLICES")
elif (( QUEUED )); then
  QUEUED_FLAG=(--queued)
fi

# Files on each worker, relative to its home directory.
CODE_DIR="wavjepa_jax"
TARBALL="wavjepa_jax.tar.gz"
VENV="wavjepa_venv"
LOG="wavjepa_train.log"
PID_FILE="wavjepa_train.pid"
EXIT_FILE="wavjepa_train.exit_code"

if (( DRY_RUN )); then
  STAGING_DIR="${TMPDIR:-/tmp}/tmp.XXXXXXXXXX"  # what mktemp -d would make
else
  STAGING_DIR="$(mktemp -d)"
  trap 'rm -rf "$STAGING_DIR"' EXIT
fi

REFUSE_IF_RUNNING="if [ -f $PID_FILE ] && kill -0 \"\$(cat $PID_FILE)\" 2>/dev/null; then \
echo \"training is already running on \$(hostname); stop it with --stop\" >&2; exit 1; fi"

ensure_slice() {
  local state
  if (( QUEUED )); then
    local describe=(gcloud compute tpus queued-resources describe "$NAME" "${GCLOUD_SCOPE[@]}"
                    --format=value\(state.state\))
    printf '+ %s\n' "$(shell_join "${describe[@]}")"
    if (( DRY_RUN )); then
      note "dry run: assuming queued resource $NAME does not exist yet"
      state=""
    else
      state="$("${describe[@]}" 2>/dev/null || true)"
    fi
    if [[ -z $state ]]; then
      local create=(gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_SCOPE[@]}"
                    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION")
      if (( NUM_SLICES > 1 )); then
        create+=(--node-count="$NUM_SLICES" --node-prefix="$NAME")
      else
        create+=(--node-id="$NAME")
      fi
      if (( SPOT )); then create+=(--spot); fi
      run "${create[@]}"
    else
      note "reusing queued resource $NAME ($state)"
    fi
    note "waiting until queued resource $NAME is ACTIVE (polling every 30 s)"
    if (( DRY_RUN )); then
      printf '+ %s\n' "$(shell_join "${describe[@]}")"
      return
    fi
    while true; do
      state="$("${describe[@]}")" || die "could not read the state of queued resource $NAME"
      [[ $state == ACTIVE ]] && break
      case $state in
        FAILED|SUSPENDING|SUSPENDED) die "queued resource $NAME is $state; delete it and retry" ;;
      esac
      note "$NAME: $state"
      sleep 30
    done
  else
    local describe=(gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_SCOPE[@]}"
                    --format=value\(state\))
    printf '+ %s\n' "$(shell_join "${describe[@]}")"
    if (( DRY_RUN )); then
      note "dry run: assuming TPU VM $NAME does not exist yet"
      state=""
    else
      state="$("${describe[@]}" 2>/dev/null || true)"
    fi
    if [[ -z $state ]]; then
      local create=(gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_SCOPE[@]}"
                    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
      if (( SPOT )); then create+=(--spot); fi
      run "${create[@]}"
    elif [[ $state == READY ]]; then
      note "reusing TPU VM $NAME"
    else
      die "TPU VM $NAME exists but is $state; delete it (--stop --delete) and retry"
    fi
  fi
}

# Copy the code to every worker (tarball of this checkout, or git clone there), then install it
# into a venv with jax[tpu]. TPU VM images ship Python 3.10; uv brings the Python we need.
setup_workers() {
  local fetch
  if [[ -n $REPO_URL ]]; then
    fetch="rm -rf $CODE_DIR && git clone --quiet $(shell_join "$REPO_URL") $CODE_DIR"
    if [[ -n $REF ]]; then fetch+=" && git -C $CODE_DIR checkout --quiet $(shell_join "$REF")"; fi
  else
    printf '+ %s | %s  # deleted files skipped\n' \
      "$(shell_join git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard)" \
      "$(shell_join tar -czf "$STAGING_DIR/$TARBALL" -C "$REPO_ROOT" --null -T -)"
    if (( ! DRY_RUN )); then
      git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard \
        | (cd "$REPO_ROOT" && while IFS= read -r -d '' file; do
             if [[ -e $file ]]; then printf '%s\0' "$file"; fi
           done) \
        | tar -czf "$STAGING_DIR/$TARBALL" -C "$REPO_ROOT" --null -T -
    fi
    run "${SCP_ALL[@]}" "${GCLOUD_SCOPE[@]}" "$STAGING_DIR/$TARBALL" "$NAME:$TARBALL"
    fetch="rm -rf $CODE_DIR && mkdir $CODE_DIR && tar -xzf $TARBALL -C $CODE_DIR && rm $TARBALL"
  fi
  local install
  install="python3 -m pip install --user --quiet --upgrade uv \
&& ~/.local/bin/uv venv --quiet --allow-existing --python $(shell_join "$PYTHON_VERSION") $VENV \
&& ~/.local/bin/uv pip install --quiet --python $VENV/bin/python -e ./$CODE_DIR \"jax[tpu]\""
  if (( ${#EXTRA_PIP[@]} )); then install+=" $(shell_join "${EXTRA_PIP[@]}")"; fi
  if [[ -n $WORKER_SETUP ]]; then install+=" && { $WORKER_SETUP; }"; fi
  run "${SSH_ALL[@]}" "${GCLOUD_SCOPE[@]}" --command="$REFUSE_IF_RUNNING; $fetch && $install"
}

start_training() {
  local train job
  train="\$HOME/$VENV/bin/python -m wavjepa_jax.train \
$(shell_join --config "$CONFIG" --workdir "$WORKDIR" "${OVERRIDES[@]}")"
  # The job records its exit code (read by `stream_log`) and, for a GCS workdir, keeps a copy of
  # each worker's log there, since the VM's disk goes with the slice. `trap : TERM` keeps this
  # bash alive through --stop's SIGTERM to the process group (Python, whose handler it does not
  # inherit, still gets the signal and saves a checkpoint), so the exit code and log are kept.
  job="trap : TERM; cd \$HOME/$CODE_DIR && $train; code=\$?; echo \$code > \$HOME/$EXIT_FILE"
  if [[ $WORKDIR == gs://* ]]; then
    job+="; gcloud storage cp --quiet \$HOME/$LOG \
$(shell_join "${WORKDIR%/}")/logs/tpu_\$(hostname).log || true"
  fi
  run "${SSH_ALL[@]}" "${GCLOUD_SCOPE[@]}" --command="$REFUSE_IF_RUNNING; rm -f $EXIT_FILE; \
setsid nohup bash -c $(shell_join "$job") > $LOG 2>&1 < /dev/null & echo \$! > $PID_FILE"
}

# Follow worker 0's log until its training process exits, then exit with its exit code.
stream_log() {
  note "streaming worker 0's log; Ctrl-C stops the streaming, not the training (see --attach)"
  run "${SSH_WORKER0[@]}" "${GCLOUD_SCOPE[@]}" \
    --command="tail -n +1 -F --pid=\"\$(cat $PID_FILE)\" $LOG; \
exit \"\$(cat $EXIT_FILE 2>/dev/null || echo 1)\""
}

# SIGTERM, then wait (up to 10 minutes) until the checkpoint is saved and the process is gone,
# so that a following --delete does not cut the save short.
stop_training() {
  run "${SSH_ALL[@]}" "${GCLOUD_SCOPE[@]}" --command="if [ -f $PID_FILE ]; then \
pid=\$(cat $PID_FILE); kill -TERM -- -\$pid 2>/dev/null || true; \
for i in \$(seq 300); do kill -0 -- -\$pid 2>/dev/null || break; sleep 2; done; \
kill -KILL -- -\$pid 2>/dev/null || true; fi"
}

delete_slice() {
  if (( QUEUED )); then
    run gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_SCOPE[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_SCOPE[@]}" --quiet
  fi
}

status=0
case $ACTION in
  launch)
    ensure_slice
    setup_workers
    start_training
    if (( DETACH )); then
      note "training started; follow it with: $(shell_join launch/tpu_pod.sh --name "$NAME" \
        "${GCLOUD_SCOPE[@]}" "${QUEUED_FLAG[@]}" --attach)"
    else
      stream_log || status=$?
    fi
    ;;
  attach) stream_log || status=$? ;;
  stop) stop_training ;;
esac
if (( DELETE )); then delete_slice; fi
exit "$status"
