#!/usr/bin/env bash
# A real Prometheus server (Debian's `prometheus` package) on loopback, for tests, the
# canary-analysis drill in the README and CI. No Docker: the packaged binary runs as a plain
# background process with its own data directory, one per port.
#
#   infra/prometheus.sh install                  install prometheus + promtool if missing
#   infra/prometheus.sh start CONFIG_FILE [PORT] start a server (default port 9090), wait for
#                                                /-/ready, print PROMETHEUS_URL=http://127.0.0.1:PORT
#   infra/prometheus.sh stop [PORT]              stop the server on PORT (no-op if none)
#   infra/prometheus.sh status [PORT]            exit 0 if the server on PORT is ready
#   infra/prometheus.sh promtool ARGS...         run promtool (installing it first if needed)
#
# Run `infra/prometheus.sh --help` for the environment variables.
set -euo pipefail

usage() {
  cat <<EOF
Usage: $(basename "$0") {install | start CONFIG_FILE [PORT] | stop [PORT] | status [PORT] | promtool ARGS... | --help}

  install   apt-get install prometheus (gives prometheus and promtool) when either is
            missing; needs root or sudo. A no-op when both are on PATH.
  start     Check CONFIG_FILE with promtool, start prometheus on 127.0.0.1:PORT in the
            background with a fresh data dir, wait until /-/ready answers 200, and print
            PROMETHEUS_URL=http://127.0.0.1:PORT. Refuses a port that is already serving.
  stop      SIGTERM the server started for PORT, wait up to PROMETHEUS_STOP_TIMEOUT s, then
            SIGKILL. A no-op when none is running.
  status    Exit 0 when the server started for PORT is running and ready, 1 otherwise.
  promtool  Run promtool with the remaining arguments (e.g. check rules FILE).

Environment (defaults in brackets):
  SNAP2CAPTION_CACHE         cache root [\$HOME/.cache/snap2caption]
  PROMETHEUS_DATA_DIR        data dir for this server: TSDB, pid, log
                             [\$cache/prometheus-data/PORT]
  PROMETHEUS_RETENTION       TSDB retention [1d]
  PROMETHEUS_START_TIMEOUT   seconds to wait for /-/ready [60]
  PROMETHEUS_STOP_TIMEOUT    seconds to wait after SIGTERM before SIGKILL [20]
EOF
}

CACHE_ROOT="${SNAP2CAPTION_CACHE:-$HOME/.cache/snap2caption}"
START_TIMEOUT="${PROMETHEUS_START_TIMEOUT:-60}"
STOP_TIMEOUT="${PROMETHEUS_STOP_TIMEOUT:-20}"
RETENTION="${PROMETHEUS_RETENTION:-1d}"

LOG_NAME=prometheus.sh  # prefix of its messages (log, die)
# apt_install, and the pid file and port checks of the other servers' scripts.
# shellcheck source-path=SCRIPTDIR source=lib/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/install.sh"
# shellcheck source-path=SCRIPTDIR source=lib/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemon.sh"

have_tools() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }

install_tools() {
  have_tools && return 0
  apt_install "prometheus/promtool not found and no apt-get; install Prometheus 2.x with your package manager" \
    "need root or sudo to apt-get install prometheus" "installing the Debian package prometheus (apt-get)" \
    prometheus
  have_tools || die "prometheus/promtool still missing after apt-get install"
  log "installed $(prometheus --version 2>&1 | head -1)"
}

paths_for() {  # PORT -> DATA_DIR, PID_FILE, LOG_FILE
  local port="$1"
  if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then die "bad port: '$port'"; fi
  DATA_DIR="${PROMETHEUS_DATA_DIR:-$CACHE_ROOT/prometheus-data/$port}"
  PID_FILE="$DATA_DIR/prometheus.pid"
  LOG_FILE="$DATA_DIR/prometheus.log"
}

# Prints the pid when our server for this data dir is alive (see daemon_pid in lib/daemon.sh).
running_pid() { daemon_pid "$PID_FILE" -F prometheus; }

ready() { curl -fsS -m 2 "http://127.0.0.1:$1/-/ready" >/dev/null 2>&1; }

cmd_start() {
  local config="${1:-}" port="${2:-9090}"
  [[ -n "$config" ]] || die "start needs CONFIG_FILE (see --help)"
  [[ -f "$config" ]] || die "config file not found: $config"
  config="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"
  paths_for "$port"
  install_tools
  command -v curl >/dev/null 2>&1 || die "curl is needed to wait for /-/ready"
  if running_pid >/dev/null; then
    die "a server started by this script already runs on port $port (pid $(running_pid)); stop it first"
  fi
  if ready "$port" || port_open "$port"; then
    die "port $port is already in use by another process"
  fi
  # A bad config makes prometheus exit at once with a log line that is easy to miss; promtool
  # says what is wrong and where.
  promtool check config "$config" >&2 || die "promtool rejected $config"
  # Fresh TSDB on every start: a test's samples must never mix with a previous run's.
  rm -rf "$DATA_DIR"
  mkdir -p "$DATA_DIR/tsdb"
  log "starting prometheus on 127.0.0.1:$port (config $config, data $DATA_DIR)"
  # setsid: its own session, so the caller's Ctrl-C or process-group kill does not race
  # `stop`; --web.enable-lifecycle lets tests and drills reload the config over HTTP.
  setsid prometheus \
    --config.file="$config" \
    --storage.tsdb.path="$DATA_DIR/tsdb" \
    --storage.tsdb.retention.time="$RETENTION" \
    --web.listen-address="127.0.0.1:$port" \
    --web.enable-lifecycle \
    >"$LOG_FILE" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  local deadline=$((SECONDS + START_TIMEOUT))
  until ready "$port"; do
    if ! running_pid >/dev/null; then
      tail -n 30 "$LOG_FILE" >&2 || true
      die "prometheus exited during start-up (log above: $LOG_FILE)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$LOG_FILE" >&2 || true
      cmd_stop "$port"
      die "prometheus not ready after ${START_TIMEOUT}s (log above: $LOG_FILE)"
    fi
    sleep 0.2
  done
  log "ready (pid $(cat "$PID_FILE"), log $LOG_FILE)"
  echo "PROMETHEUS_URL=http://127.0.0.1:$port"
}

cmd_stop() {
  local port="${1:-9090}" pid
  paths_for "$port"
  pid="$(running_pid)" || { rm -f "$PID_FILE"; log "not running on port $port"; return 0; }
  kill -TERM "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "no exit ${STOP_TIMEOUT}s after SIGTERM; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  log "stopped (port $port)"
}

cmd_status() {
  local port="${1:-9090}"
  paths_for "$port"
  running_pid >/dev/null && ready "$port"
}

case "${1:-}" in
  install) install_tools; log "prometheus: $(command -v prometheus), promtool: $(command -v promtool)" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  promtool) shift; install_tools; exec promtool "$@" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
