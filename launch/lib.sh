# shellcheck shell=bash
# Helpers shared by the launchers (sourced, not run): launch/tpu_pod.sh,
# launch/local_multiprocess.sh and launch/slurm_gpu.sbatch.

# Stop with "<launcher>: MESSAGE" on stderr (exit 2: a usage or set-up error). LAUNCHER names
# the script where $0 does not (sbatch runs a spooled copy).
die() { printf '%s: %s\n' "${LAUNCHER:-$(basename "$0")}" "$*" >&2; exit 2; }

# Show a command, then run it unless this is a dry run (DRY_RUN=1).
run() {
  printf '+ %s\n' "$(shell_join "$@")"
  if (( ! ${DRY_RUN:-0} )); then "$@"; fi
}

# A comment line in the launcher's output.
note() { printf '# %s\n' "$*"; }

# Print the arguments as one shell command line; words that need no quoting stay bare, and
# `--flag=value` keeps the flag outside the quotes.
shell_join() {
  local word flag quoted=()
  for word in "$@"; do
    flag=""
    if [[ $word =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
      flag=${BASH_REMATCH[1]}
      word=${BASH_REMATCH[2]}
    fi
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      quoted+=("$flag$word")
    else
      quoted+=("$flag'${word//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${quoted[*]}"
}
