#!/usr/bin/env bash
# Issue 11's GPU figures in one run of a few minutes (benchmarks/STEP.md records them):
#
#   bash benchmarks/gpu_step_check.sh RELEASE_CHECKOUT OUT_DIR [CONFIG] [BATCH] [DTYPE]
#
#   0. attention parity: the step with model.attention "xla" and "cudnn" (and fp32 "xla") from
#      the same state on the same audio, at the config's widths with 2 blocks per stack;
#   1. the release's torch.compile step and ours (model.attention "auto": cuDNN flash attention
#      on a GPU) at BATCH crops, side by side;
#   2. a profile of ours by component and kind of kernel, with XLA:GPU's CUDA-graph command
#      buffers off (kernels replayed from a graph carry no HLO op, so a profile with them on
#      leaves most of the step "unattributed"; the step time of this part says what they save);
#   3. ours with the masked XLA attention (the step before flash attention), same batch;
#   4. ours at twice BATCH (the release's 512-crop global batch on one GPU), and if that fails,
#      the same with remat "dots";
#   5. ours with the blocks unrolled (model.scan_layers=False), at BATCH;
#   6. ours with XLA's Triton GEMMs off (cuBLAS for every matmul), at BATCH.
# PARTS="1 2 4" runs only those parts (default: all; each takes ~1 min on an H200, part 1 ~3 min
# with the release's torch.compile, so all seven overrun one 10-minute device call: split them).
# Defaults: configs/base.py, 256 crops, bfloat16 (the release's per-GPU batch). Each part writes
# OUT_DIR/<part>.txt; a failed part is reported and the next one still runs, and the exit status
# says whether any failed. FLOPS_PER_CROP=N gives the FLOP count for MFU (130.3e9 for base;
# without it each part counts its own model FLOPs, which costs one more compile of the step
# unrolled, with XLA attention, no remat); RELEASE_COMPILE=0 times the release eagerly. `FLOPS_PER_CROP=1 bash ... configs/tiny.py 8 float32` checks the script on a CPU.
set -uo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,28p' "$0"
  exit 2
fi
release=$1 out=$2 config=${3:-configs/base.py} batch=${4:-256} dtype=${5:-bfloat16}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit
flops=(--no-flops)
[[ -n ${FLOPS_PER_CROP:-} ]] && flops=(--flops-per-crop "$FLOPS_PER_CROP")
bench=(python3 benchmarks/step_throughput.py --config "$config" "${flops[@]}")
model=(--config.model.dtype="$dtype")
failed=0

part() {  # part NAME ARGS...: run one benchmark, keep its output, go on if it fails.
  local name=$1
  shift
  [[ " ${PARTS:-0 1 2 3 4 5 6} " == *" ${name%%_*} "* ]] || return 0
  echo "== $name: $*  ($(date +%T))"
  if ! PYTHONUNBUFFERED=1 "$@" 2>&1 | tee "$out/$name.txt"; then
    echo "== $name FAILED (see $out/$name.txt)"
    failed=1
    return 1
  fi
}

part 0_parity python3 benchmarks/attention_parity.py --config "$config" --steps 2 -- \
  --config.batch_size=16 --config.model.encoder_depth=2 --config.model.predictor_depth=2 \
  --config.model.top_k_layers=2
compile=(--release-compile)
[[ ${RELEASE_COMPILE:-1} == 0 ]] && compile=()
part 1_vs_release "${bench[@]}" --steps 8 --warmup 3 --release "$release" "${compile[@]}" \
  -- --config.batch_size="$batch" "${model[@]}"
part 2_profile env XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" "${bench[@]}" \
  --steps 5 --warmup 2 --profile "${TMPDIR:-/tmp}/wavjepa_step_trace" \
  -- --config.batch_size="$batch" "${model[@]}"
part 3_xla_attention "${bench[@]}" --steps 8 --warmup 2 \
  -- --config.batch_size="$batch" "${model[@]}" --config.model.attention=xla
double=$((2 * batch))
part "4_batch_$double" "${bench[@]}" --steps 3 --warmup 1 \
  -- --config.batch_size="$double" "${model[@]}" ||
  part "4_batch_${double}_remat_dots" "${bench[@]}" --steps 3 --warmup 1 \
    -- --config.batch_size="$double" "${model[@]}" --config.model.remat=True \
    --config.model.remat_policy=dots
part 5_unrolled "${bench[@]}" --steps 8 --warmup 2 \
  -- --config.batch_size="$batch" "${model[@]}" --config.model.scan_layers=False
part 6_no_triton_gemm env XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false" \
  "${bench[@]}" --steps 8 --warmup 2 -- --config.batch_size="$batch" "${model[@]}"
exit $failed
