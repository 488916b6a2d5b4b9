# Shared by infra/kafka.sh, infra/mlflow.sh and infra/prometheus.sh (sourced, not run): how a
# background server is found, started, waited for and stopped, the lock around start and
# stop, and the start/stop/status/help dispatch. (prometheus.sh, which has its own start, stop
# and dispatch, uses only alive, port_open and daemon_pid.)
#
# log and die come from lib/log.sh. The sourcing script defines LOG_NAME and, for what it uses:
#   CACHE_ROOT, DATA_DIR                   the lock (with_lock, daemon_main)
#   PID_FILE, LOG_FILE                     the server's pid file and log file
#   STATE_FILES                            array: PID_FILE and any other file that only
#                                          means something while the server runs
#   START_TIMEOUT, STOP_TIMEOUT            seconds (wait_until_ready, stop_daemon)
#   running_pid                            prints the server's pid if it runs (daemon_pid)
#   wait_ready PID [ARGS...]               waits until PID serves (wait_until_ready)
#   usage, do_start, do_stop, do_status    the commands (daemon_main)
# shellcheck shell=bash

# SCRIPTDIR is infra/lib when shellcheck checks this file, infra/ when it follows a script here.
# shellcheck source-path=SCRIPTDIR source-path=SCRIPTDIR/lib source=log.sh
source "$(dirname "${BASH_SOURCE[0]}")/log.sh"

# Not just kill -0: a server that died while still our child (startup failure in this very
# invocation) stays a zombie, which kill -0 reports as alive.
# alive PID
alive() {
  local stat
  stat="$(ps -p "$1" -o stat= 2>/dev/null)" || return 1
  [[ -n "$stat" && "$stat" != Z* ]]
}

# bash's /dev/tcp: no nc/curl/python needed just to see if something listens.
# port_open PORT
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The pid file alone is not trusted: after a reboot or a crash the pid may belong to some
# unrelated process, which must never be signalled. Prints the pid only when that process
# is alive and its command line matches `grep GREP_ARGS...`.
# daemon_pid PID_FILE GREP_ARGS...
daemon_pid() {
  local file="$1" pid
  shift
  [[ -f "$file" ]] || return 1
  pid="$(cat "$file" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  # -ww: without it ps cuts args at $COLUMNS (pytest sets it), before what is matched.
  ps -ww -p "$pid" -o args= 2>/dev/null | grep -q "$@" || return 1
  echo "$pid"
}

# Removes the pid file and the other STATE_FILES of a server that is gone.
forget_daemon() {
  rm -f "${STATE_FILES[@]}"
}

# Keeps the previous run's log for post-mortems (LOG_FILE.prev) and starts the new one
# empty, so that readiness never matches a line from an earlier run.
rotate_log() {
  [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.prev"
  : >"$LOG_FILE"
}

# Starts COMMAND in the background as a server: setsid + nohup, so that it outlives this
# script and does not die with the caller's terminal or process group (Ctrl-C, a finished CI
# step's shell); stdin/stdout/stderr all redirected, so that a caller capturing our output
# (subprocess.run(capture_output=True)) is not kept waiting on it; 9>&- so that it does not
# inherit the start/stop lock, or it would hold it for its whole life and every later stop
# would block. Its output goes to LOG_FILE, its pid to PID_FILE and to DAEMON_PID.
# spawn_daemon COMMAND...
spawn_daemon() {
  setsid nohup "$@" </dev/null >>"$LOG_FILE" 2>&1 9>&- &
  DAEMON_PID=$!
  echo "$DAEMON_PID" >"$PID_FILE"
}

# Polls READY_COMMAND every 0.5 s for up to START_TIMEOUT s. Returns 0 once it succeeds.
# Returns 1 when PID dies first (logging DIED_MESSAGE and the log's last 40 lines, and
# forgetting the server) or when the time runs out (logging TIMEOUT_MESSAGE and those lines).
# wait_until_ready PID DIED_MESSAGE TIMEOUT_MESSAGE READY_COMMAND...
wait_until_ready() {
  local pid="$1" died="$2" timed_out="$3" deadline=$((SECONDS + START_TIMEOUT))
  shift 3
  while ((SECONDS < deadline)); do
    if ! alive "$pid"; then
      log "$died"
      tail -n 40 "$LOG_FILE" >&2 || true
      forget_daemon
      return 1
    fi
    "$@" && return 0
    sleep 0.5
  done
  log "$timed_out"
  tail -n 40 "$LOG_FILE" >&2 || true
  return 1
}

# Waits for a server spawn_daemon just started (wait_ready PID WAIT_ARGS...). If it does not
# come up, stops it, so that no half-started server holds the ports, and exits 1.
# await_daemon NAME PID [WAIT_ARGS...]
await_daemon() {
  local name="$1" pid="$2"
  shift 2
  if ! wait_ready "$pid" "$@"; then
    do_stop >/dev/null 2>&1 || true
    exit 1
  fi
  log "$name ready (pid $pid) after ${SECONDS}s; log: $LOG_FILE"
}

# SIGTERM (with --group: to the server's whole process group, which it leads after setsid),
# up to STOP_TIMEOUT s to exit, then SIGKILL. A no-op when running_pid finds no server.
# stop_daemon NAME [--group]
stop_daemon() {
  local name="$1" group="${2:-}" pid
  if ! pid="$(running_pid)"; then
    forget_daemon
    log "not running"
    return 0
  fi
  log "stopping $name (pid $pid)"
  signal_daemon TERM "$pid" "$group"
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while alive "$pid" && ((SECONDS < deadline)); do sleep 0.3; done
  if alive "$pid"; then
    log "still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
    signal_daemon KILL "$pid" "$group"
    while alive "$pid"; do sleep 0.2; done
  fi
  # Stragglers of the group (a worker mid-request) get the same end.
  if [[ "$group" == --group ]]; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  forget_daemon
  log "stopped"
}

# signal_daemon SIGNAL PID [--group]
signal_daemon() {
  if [[ "${3:-}" == --group ]]; then
    kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null || true
  else
    kill "-$1" "$2" 2>/dev/null || true
  fi
}

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
