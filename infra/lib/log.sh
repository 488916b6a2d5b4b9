# Shared by the infra/ scripts (sourced, not run; lib/daemon.sh and lib/install.sh source it):
# their messages, on stderr so that stdout carries only what callers parse (KEY=VALUE lines,
# paths). Each line starts with the sourcing script's LOG_NAME.
# shellcheck shell=bash

# log MESSAGE...
log() { echo "$LOG_NAME: $*" >&2; }
# die MESSAGE...: logs "ERROR: MESSAGE" and exits 1.
die() { log "ERROR: $*"; exit 1; }
