#!/usr/bin/env bash
# Issue 11's GPU figures in one run of a few minutes (benchmarks/STEP.md records them):
#
#   bash benchmarks/gpu_step_check.sh RELEASE_CHECKOUT OUT_DIR [CONFIG] [BATCH] [DTYPE]
#
#   1. the release's torch.compile step and ours at BATCH crops, side by side (the ratio);
#   2. ours with remat "dots" and with remat "nothing" (what memory costs in time);
#   3. the largest batch whose compiled step fits, with remat "dots";
#   4. a profile of our default step by component and kind of kernel.
# Defaults: configs/base.py, 256 crops, bfloat16 (the release's per-GPU batch). Each part writes
# OUT_DIR/<part>.txt; a failed part is reported and the next one still runs, and the exit status
# says whether any failed. MEMORY_GIB=N sets the memory budget of part 3 (needed where the
# device reports none, e.g. a CPU: `MEMORY_GIB=0.2 ... configs/tiny.py 8 float32` checks the
# script itself in a few minutes); RELEASE_COMPILE=0 times the release eagerly instead.
set -uo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,15p' "$0"
  exit 2
fi
release=$1 out=$2 config=${3:-configs/base.py} batch=${4:-256} dtype=${5:-bfloat16}
mkdir -p "$out"
cd "$(dirname "$0")/.."
bench=(python benchmarks/step_throughput.py --config "$config")
model=(--config.batch_size="$batch" --config.model.dtype="$dtype")
failed=0

part() {  # part NAME ARGS...: run one benchmark, keep its output, go on if it fails.
  local name=$1
  shift
  echo "== $name: $*"
  if ! PYTHONUNBUFFERED=1 "$@" 2>&1 | tee "$out/$name.txt"; then
    echo "== $name FAILED (see $out/$name.txt)"
    failed=1
  fi
}

compile=(--release-compile)
[[ ${RELEASE_COMPILE:-1} == 0 ]] && compile=()
part 1_vs_release "${bench[@]}" --steps 10 --warmup 2 --release "$release" "${compile[@]}" \
  -- "${model[@]}"
part 2_remat_dots "${bench[@]}" --steps 10 --warmup 2 --no-flops \
  -- "${model[@]}" --config.model.remat=True --config.model.remat_policy=dots
part 2_remat_nothing "${bench[@]}" --steps 10 --warmup 2 --no-flops \
  -- "${model[@]}" --config.model.remat=True
part 3_max_batch "${bench[@]}" --steps 2 --warmup 1 --no-flops --max-batch \
  ${MEMORY_GIB:+--memory-gib "$MEMORY_GIB"} \
  -- "${model[@]}" --config.model.remat=True --config.model.remat_policy=dots
part 4_profile "${bench[@]}" --steps 3 --warmup 1 --no-flops --profile "$out/trace" \
  -- "${model[@]}"
exit $failed
