# shellcheck shell=bash
# Helpers shared by launch/tpu_pod.sh and launch/local_multiprocess.sh (sourced, not run).
# launch/slurm_gpu.sbatch keeps its own copy: sbatch runs a spooled copy of the script, where
# this file is not next to it.

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
