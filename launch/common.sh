# shellcheck shell=bash
# shellcheck disable=SC2034  # CONFIG, WORKDIR, EXTRA are read by the launchers
# Shared by the launchers: argument parsing, quoting and --dry-run. Source it; do not run it.
# Sets CONFIG, WORKDIR, DRY_RUN and EXTRA (the remaining arguments, passed on to main).
# Keep arguments in arrays ("${EXTRA[@]}") end to end; where a command line must become one
# string (sbatch scripts, ssh --command), build it with `quote`, never with ${EXTRA[*]}.

usage() {
  sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
  exit "${1:-0}"
}

parse_args() {
  DRY_RUN=0
  EXTRA=()
  POSITIONAL=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      -h|--help) usage 0 ;;
      --*) EXTRA+=("$1") ;;
      *) POSITIONAL+=("$1") ;;
    esac
    shift
  done
  if [ "${#POSITIONAL[@]}" -lt 2 ]; then
    echo "error: expected CONFIG and WORKDIR" >&2
    usage 2
  fi
  CONFIG="${POSITIONAL[0]}"
  WORKDIR="${POSITIONAL[1]}"
}

# Prints its arguments as one bash command line that reproduces them word for word
# (e.g. "--config.stages=('finetune','sweep')" survives a shell that re-reads it).
quote() {
  local out
  printf -v out ' %q' "$@"
  printf '%s\n' "${out# }"
}

# Prints the command; runs it unless --dry-run.
run() {
  printf '+ %s\n' "$(quote "$@")"
  if [ "$DRY_RUN" -eq 0 ]; then
    "$@"
  fi
}

# The install command of a target (cpu, gpu or tpu): its line in fixres_jax/install.txt, which
# README's "Install" section shows.
install_line() {
  sed -n "s/^$1: //p" fixres_jax/install.txt
}
