#!/usr/bin/env bash
# Issue 10's recipe search on a lent GPU: several variants of a config trained side by side on one
# device, each probed as benchmarks/learning.py does, in one call of a few minutes.
#
#   bash benchmarks/gpu_learning_search.sh PACKED OUT_DIR "NAME: OVERRIDES" ["NAME: OVERRIDES" ...]
#   bash benchmarks/gpu_learning_search.sh PACKED OUT_DIR @VARIANTS_FILE   (one variant a line;
#                                             blank lines and lines starting with # are skipped)
#
# PACKED holds corpus/ and tasks/ as benchmarks/learning/pack.py writes them (Ogg Opus, ~12 kbit/s,
# so both fit in a device call's 64 MiB); they are unpacked to WAV under $SCRATCH first. Each
# variant is a name (letters, digits, '_', '-') and the training overrides after its colon (split
# at spaces), e.g.
#   "con_chroma_s1: --config.loss.clip_objective=contrastive --config.model.clip_projector=0
#    --config.model.chroma_bins=12 --config.loss.spectrogram_chroma_weight=10 --config.seed=1"
# Every variant runs `benchmarks/learning.py --config $CONFIG` in its own process at the same
# time (CONFIG default configs/cpu.py: the CPU recipe's batch and steps, so what wins here is what
# to run on the CPU next), with $WORKERS Grain workers each (default: the cores / variants) and
# no GPU memory preallocated. The log-mel baseline is probed once and shared. OUT_DIR gets
# summary.md (every variant's table, its wall time and exit status), results.json (each variant's
# learning.json) and logs.txt (the end of each variant's log): three files, within what a device
# call brings back. Env: FRACTIONS (default 0,0.25,0.5,1), SNRS (default 10,0), SCRATCH (default
# /tmp/wavjepa_search; an existing run there resumes, cached probes are reused). The exit status
# says whether any variant failed; the others still finish.
set -uo pipefail

if [[ $# -lt 3 ]]; then
  awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"
  exit 2
fi
packed=$(cd "$1" && pwd) || exit 2
mkdir -p "$2"
out=$(cd "$2" && pwd)
shift 2
config=${CONFIG:-configs/cpu.py}
fractions=${FRACTIONS:-0,0.25,0.5,1}
snrs=${SNRS:-10,0}
scratch=${SCRATCH:-/tmp/wavjepa_search}
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1

variants=()
for arg in "$@"; do
  if [[ $arg == @* ]]; then
    [[ -f ${arg#@} ]] || { echo "variants file ${arg#@}: missing" >&2; exit 2; }
    while IFS= read -r line || [[ -n $line ]]; do
      [[ $line =~ ^[[:space:]]*(#|$) ]] || variants+=("$line")
    done <"${arg#@}"
  else
    variants+=("$arg")
  fi
done
names=() overrides=()
for variant in "${variants[@]}"; do
  name=${variant%%:*}
  if [[ $variant != *:* || ! $name =~ ^[A-Za-z0-9_-]+$ ]]; then
    echo "variant '$variant': expected 'NAME: OVERRIDES' with NAME in letters, digits, _ and -" >&2
    exit 2
  fi
  for seen in "${names[@]}"; do
    [[ $seen == "$name" ]] && { echo "variant name '$name' given twice" >&2; exit 2; }
  done
  names+=("$name")
  overrides+=("${variant#*:}")
done

((${#names[@]})) || { echo "no variants given" >&2; exit 2; }
workers=${WORKERS:-$(($(nproc) / ${#names[@]}))}
((workers < 1)) && workers=1
cd "$(dirname "$0")/.." || exit

echo "== unpacking $packed ($(date +%T))"
for part in corpus tasks; do
  [[ -d $packed/$part ]] || { echo "$packed/$part: missing (benchmarks/learning/pack.py)" >&2; exit 2; }
  if [[ ! -d $scratch/$part ]]; then
    rm -rf "$scratch/$part.partial"
    python3 benchmarks/learning/pack.py unpack "$packed/$part" "$scratch/$part.partial" &&
      mv "$scratch/$part.partial" "$scratch/$part" || exit 1
  fi
done

echo "== log-mel baseline ($(date +%T))"
mkdir -p "$scratch/logmel"
for task_dir in "$scratch"/tasks/*/; do
  task=$(basename "$task_dir")
  [[ -f $scratch/logmel/${task}__logmel.json ]] && continue
  python3 -m wavjepa_jax.probe --features logmel --data "$task_dir" --noise-snr="$snrs" \
    --seed=0 --out "$scratch/logmel/${task}__logmel.json" >>"$scratch/logmel/log.txt" 2>&1 &
done
wait

echo "== ${#names[@]} variants of $config side by side, $workers Grain workers each ($(date +%T))"
pids=()
for i in "${!names[@]}"; do
  work=$scratch/runs/${names[$i]}
  mkdir -p "$work/probes"
  cp -n "$scratch"/logmel/*__logmel.json "$work/probes/" 2>/dev/null
  # shellcheck disable=SC2086  # the overrides are words on purpose
  (start=$(date +%s)
   python3 benchmarks/learning.py --config "$config" --corpus "$scratch/corpus" \
     --tasks "$scratch/tasks" --workdir "$work" --fractions "$fractions" --snrs "$snrs" \
     -- --config.data.num_workers="$workers" ${overrides[$i]} >"$work/stdout.txt" 2>&1
   status=$?
   echo "$status $(($(date +%s) - start))" >"$work/status") &
  pids+=($!)
done
wait "${pids[@]}"

failed=0
: >"$out/summary.md" && : >"$out/logs.txt"
echo "{" >"$out/results.json"
for i in "${!names[@]}"; do
  work=$scratch/runs/${names[$i]}
  status=1 seconds=?
  [[ -f $work/status ]] && read -r status seconds <"$work/status"
  ((status)) && failed=1
  {
    echo "## ${names[$i]}: exit $status, ${seconds} s"
    echo
    echo "\`$config\` ${overrides[$i]}"
    echo
    if [[ -f $work/learning.md ]]; then cat "$work/learning.md"; else echo "(no table)"; fi
    echo
  } >>"$out/summary.md"
  { echo "== ${names[$i]}"; tail -n 40 "$work/stdout.txt"; } >>"$out/logs.txt"
  sep=$([[ $i -lt $((${#names[@]} - 1)) ]] && echo "," || echo "")
  if [[ -f $work/learning.json ]]; then
    echo "\"${names[$i]}\": $(cat "$work/learning.json")$sep" >>"$out/results.json"
  else
    echo "\"${names[$i]}\": null$sep" >>"$out/results.json"
  fi
done
echo "}" >>"$out/results.json"
cat "$out/summary.md"
echo "== done ($(date +%T))"
exit $failed
