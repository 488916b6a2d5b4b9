#!/usr/bin/env bash
# A real MLflow tracking server for local development, tests, CI and `snap2caption retrain`:
# sqlite backend store, local artifact root served through the server (clients upload and
# download artifacts over HTTP, exactly as they would against a remote server), bound to
# loopback, running from the project's Python environment.
#
#   infra/mlflow.sh start [PORT]   start (or reuse) the server, print MLFLOW_TRACKING_URI=...
#   infra/mlflow.sh stop           stop it (no-op if not running)
#   infra/mlflow.sh status         exit 0 and print the URI if running and healthy, 1 otherwise
#
# Run `infra/mlflow.sh --help` for the environment variables.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<EOF
Usage: $(basename "$0") {start [PORT] | stop | status | --help}

  start [PORT]  Start \`mlflow server\` in the background on 127.0.0.1:PORT and wait until
                /health answers. Prints MLFLOW_TRACKING_URI=http://127.0.0.1:PORT, so
                \`export \$(infra/mlflow.sh start)\` points MLflow clients at it.
                A no-op (still printing the line) when it is already running.
  stop          SIGTERM to the server's process group, wait up to
                SNAP2CAPTION_MLFLOW_STOP_TIMEOUT s, then SIGKILL. No-op if not running.
  status        Print the URI and exit 0 if the server is running and healthy, else exit 1.

Environment (defaults in brackets):
  SNAP2CAPTION_CACHE                  cache root [\$HOME/.cache/snap2caption]
  SNAP2CAPTION_MLFLOW_DATA_DIR        sqlite db, artifacts, pid, port and log file
                                      [\$cache/mlflow-data]
  SNAP2CAPTION_MLFLOW_PORT            port when start gets none [5000]
  SNAP2CAPTION_MLFLOW_WORKERS         uvicorn workers [1]
  SNAP2CAPTION_MLFLOW_START_TIMEOUT   seconds to wait for /health [120]
  SNAP2CAPTION_MLFLOW_STOP_TIMEOUT    seconds to wait after SIGTERM before SIGKILL [20]
  SNAP2CAPTION_MLFLOW_BIN             mlflow executable [\$(infra/python_env.sh)/bin/mlflow]

Layout of the data dir: mlflow.db (runs, metrics, registry), artifacts/ (everything
clients upload through the server), mlflow.log (+ .prev), mlflow.pid, mlflow.port.
EOF
}

CACHE_ROOT="${SNAP2CAPTION_CACHE:-$HOME/.cache/snap2caption}"
# Absolute: it goes into a sqlite:/// URI, and the pid check matches on it.
DATA_DIR="$(realpath -m "${SNAP2CAPTION_MLFLOW_DATA_DIR:-$CACHE_ROOT/mlflow-data}")"
DEFAULT_PORT="${SNAP2CAPTION_MLFLOW_PORT:-5000}"
WORKERS="${SNAP2CAPTION_MLFLOW_WORKERS:-1}"
START_TIMEOUT="${SNAP2CAPTION_MLFLOW_START_TIMEOUT:-120}"
STOP_TIMEOUT="${SNAP2CAPTION_MLFLOW_STOP_TIMEOUT:-20}"

PID_FILE="$DATA_DIR/mlflow.pid"
PORT_FILE="$DATA_DIR/mlflow.port"
LOG_FILE="$DATA_DIR/mlflow.log"
DB_FILE="$DATA_DIR/mlflow.db"
ARTIFACTS_DIR="$DATA_DIR/artifacts"
STATE_FILES=("$PID_FILE" "$PORT_FILE")

LOG_NAME=mlflow.sh  # prefix of its messages (log, die)
# From lib/daemon.sh: alive, port_open, daemon_pid, spawn/wait/stop, the lock, daemon_main.
# shellcheck source-path=SCRIPTDIR source=lib/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemon.sh"

# Ours runs `mlflow server` on our db (see daemon_pid in lib/daemon.sh).
running_pid() { daemon_pid "$PID_FILE" -F -- "sqlite:///$DB_FILE"; }

# GET /health over bash's /dev/tcp: "200" only once the app (db migrated, routes mounted)
# is serving, not merely when the socket is bound.
healthy() {
  local status
  status="$(
    exec 2>/dev/null
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$1" >&3
    timeout 5 head -n 1 <&3
  )" || return 1
  [[ "$status" == *" 200"* ]]
}

wait_ready() {  # PID PORT
  wait_until_ready "$1" "mlflow server exited during startup; last 40 lines of $LOG_FILE:" \
    "mlflow server not healthy after ${START_TIMEOUT}s; last 40 lines of $LOG_FILE:" healthy "$2"
}

# The server is a process group leader (setsid): the uvicorn workers are its children and
# must go with it, or they keep the port.
do_stop() { stop_daemon "mlflow server" --group; }

do_start() {
  local port="$DEFAULT_PORT"
  while (($#)); do
    case "$1" in
      -h|--help) usage; return 0 ;;
      [0-9]*) port="$1" ;;
      *) die "unknown option for start: $1 (expected a port number)" ;;
    esac
    shift
  done
  if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then die "invalid port: $port"; fi

  local pid
  if pid="$(running_pid)"; then
    local running_port
    running_port="$(cat "$PORT_FILE" 2>/dev/null || true)"
    if [[ "$running_port" != "$port" ]]; then
      die "a server for $DATA_DIR already runs on port ${running_port:-?} (pid $pid); stop it first or use that port"
    fi
    # A second `start` may race the first one's startup: make sure it is ready.
    wait_ready "$pid" "$port" || exit 1
    log "already running (pid $pid)"
    echo "MLFLOW_TRACKING_URI=http://127.0.0.1:$port"
    return 0
  fi

  # Fail fast with a clear message instead of an "address already in use" in the log.
  if port_open "$port"; then
    die "port $port is already in use by another process (not the server for $DATA_DIR); pass another port or set SNAP2CAPTION_MLFLOW_PORT"
  fi

  local mlflow_bin="${SNAP2CAPTION_MLFLOW_BIN:-}"
  if [[ -z "$mlflow_bin" ]]; then
    local venv
    venv="$("$REPO/infra/python_env.sh")" || die "infra/python_env.sh failed; cannot find the project's mlflow"
    mlflow_bin="$venv/bin/mlflow"
  fi
  [[ -x "$mlflow_bin" ]] || die "mlflow executable not found at $mlflow_bin"

  mkdir -p "$DATA_DIR" "$ARTIFACTS_DIR"
  rotate_log

  log "starting mlflow server on 127.0.0.1:$port (data $DATA_DIR)"
  # --serve-artifacts + --artifacts-destination: new experiments get an mlflow-artifacts:/
  # root, so clients upload through this server instead of writing into our directory.
  # Job execution off: it forks a job runner and seven huey consumers for GenAI features
  # nobody here uses, which a 2-core machine feels.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false spawn_daemon "$mlflow_bin" server \
    --host 127.0.0.1 --port "$port" --workers "$WORKERS" \
    --backend-store-uri "sqlite:///$DB_FILE" \
    --serve-artifacts --artifacts-destination "$ARTIFACTS_DIR"
  echo "$port" >"$PORT_FILE"
  await_daemon "mlflow server" "$DAEMON_PID" "$port"
  echo "MLFLOW_TRACKING_URI=http://127.0.0.1:$port"
}

do_status() {
  local pid port
  if pid="$(running_pid)" && port="$(cat "$PORT_FILE" 2>/dev/null)" && healthy "$port"; then
    echo "running (pid $pid) MLFLOW_TRACKING_URI=http://127.0.0.1:$port data $DATA_DIR"
    return 0
  fi
  echo "not running (data $DATA_DIR)"
  return 1
}

daemon_main mlflow "$@"
