# Shared by infra/kafka.sh and infra/mlflow.sh (sourced, not run): the lock around start and
# stop, and the start/stop/status/help dispatch. The sourcing script defines CACHE_ROOT,
# DATA_DIR, and the functions log, usage, do_start, do_stop and do_status.
# shellcheck shell=bash

# start and stop take a lock so that two concurrent callers (parallel test sessions, a
# script and a person) cannot both launch a server on the same data dir.
# with_lock NAME COMMAND...
with_lock() {
  local name="$1"
  shift
  mkdir -p "$CACHE_ROOT"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE_ROOT/.$name-$(echo "$DATA_DIR" | cksum | cut -d' ' -f1).lock"
    flock 9
  fi
  "$@"
}

# daemon_main NAME "$@": NAME keys the lock file.
daemon_main() {
  local name="$1"
  shift
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    start) with_lock "$name" do_start "$@" ;;
    stop) with_lock "$name" do_stop ;;
    status) do_status ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) log "unknown command: $cmd"; usage >&2; exit 2 ;;
  esac
}
