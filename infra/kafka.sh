#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, broker+controller in one JVM) for local
# development and tests, without Docker: the jars come from Maven Central via
# mvn and the node runs as a plain background java process on loopback.
#
#   infra/kafka.sh start [--fresh]   start (or reuse) the broker, print KAFKA_BOOTSTRAP_SERVERS=...
#   infra/kafka.sh stop              stop it (no-op if not running)
#   infra/kafka.sh status            exit 0 if running and reachable, 1 otherwise
#
# Run `infra/kafka.sh --help` for the environment variables.
set -euo pipefail

usage() {
  cat <<EOF
Usage: $(basename "$0") {start [--fresh] | stop | status | --help}

  start     Resolve Kafka jars (cached), format KRaft storage if needed, start a
            single broker+controller node in the background and wait until it
            accepts connections. Prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT.
            A no-op (still printing the line) when it is already running.
            --fresh (or KAFKA_FRESH=1) stops it if running and wipes the data dir.
  stop      SIGTERM, wait up to KAFKA_STOP_TIMEOUT s, then SIGKILL. No-op if not running.
  status    Exit 0 if the node is running and its port is open, 1 otherwise.

Environment (defaults in brackets):
  SNAP2CAPTION_CACHE     cache root [\$HOME/.cache/snap2caption]
  KAFKA_VERSION          org.apache.kafka:kafka_2.13 version [4.4.0]
  KAFKA_DATA_DIR         data dir: KRaft logs, config, pid and log file [\$cache/kafka-data]
  KAFKA_PORT             client (PLAINTEXT) port on 127.0.0.1 [9092]
  KAFKA_CONTROLLER_PORT  KRaft controller port on 127.0.0.1 [KAFKA_PORT+1]
  KAFKA_HEAP             JVM heap flags [-Xms256m -Xmx512m]
  KAFKA_START_TIMEOUT    seconds to wait for readiness [90]
  KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL [30]
  KAFKA_FRESH            1 = same as start --fresh [0]
  KAFKA_CLUSTER_ID       cluster id when formatting new storage [random]
  JAVA                   java binary [java on PATH, or \$JAVA_HOME/bin/java]
  MVN                    maven binary [mvn]

Topics are auto-created on first use (Kafka's default auto.create.topics.enable=true),
so code that produces to a new topic works without an admin step.
EOF
}

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
CACHE_ROOT="${SNAP2CAPTION_CACHE:-$HOME/.cache/snap2caption}"
KAFKA_CACHE="$CACHE_ROOT/kafka/$KAFKA_VERSION"
LIBS_DIR="$KAFKA_CACHE/libs"
DATA_DIR="${KAFKA_DATA_DIR:-$CACHE_ROOT/kafka-data}"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
HEAP="${KAFKA_HEAP:--Xms256m -Xmx512m}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
MVN="${MVN:-mvn}"
# Pinned so the build does not depend on whatever plugin version Central
# metadata says is newest today.
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

# Everything the running node owns lives under DATA_DIR so that two nodes with
# different KAFKA_DATA_DIR/KAFKA_PORT never trample each other's pid or log.
LOG_DIRS="$DATA_DIR/kraft"
PID_FILE="$DATA_DIR/kafka.pid"
LOG_FILE="$DATA_DIR/kafka.log"
STATE_FILES=("$PID_FILE")
PROPS_FILE="$DATA_DIR/server.properties"
LOG4J_FILE="$DATA_DIR/log4j2.properties"
BOOTSTRAP="127.0.0.1:$PORT"

LOG_NAME=kafka.sh  # prefix of its messages (log, die)
# From lib/daemon.sh: alive, port_open, daemon_pid, spawn/wait/stop, the lock, daemon_main.
# shellcheck source-path=SCRIPTDIR source=lib/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemon.sh"

find_java() {
  if [[ -n "${JAVA:-}" ]]; then echo "$JAVA"
  elif [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then command -v java
  else die "java not found; Kafka 4.x brokers need Java 17+"
  fi
}

# Kafka 4 brokers refuse to run on anything older than Java 17, and the error
# they give is a cryptic UnsupportedClassVersionError; say it plainly instead.
check_java() {
  local java="$1" ver major
  ver="$("$java" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
  major="${ver%%.*}"
  [[ "$major" == 1 ]] && major="$(echo "$ver" | cut -d. -f2)"
  [[ "$major" =~ ^[0-9]+$ ]] || die "cannot parse java version from '$java -version'"
  ((major >= 17)) || die "Kafka $KAFKA_VERSION needs Java 17+, found $ver ($java)"
}

# Maven (Debian's build) emits ANSI reset codes even with -B -q; strip them so
# quiet really is quiet while real errors still reach stderr.
mvn_quiet() {
  local rc=0
  # grep -v exits 1 when nothing is left to print (the normal, quiet case), so
  # it is neutralised; with pipefail the pipeline's status is then mvn's.
  "$MVN" -q -B -Dstyle.color=never "$@" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' \
    | { grep -v '^[[:space:]]*$' || true; } >&2 || rc=$?
  return "$rc"
}

# Resolve kafka_2.13 plus its runtime closure into LIBS_DIR, once per version.
# A marker file, written last, means a half-finished download (Ctrl-C, network
# error) is retried rather than used.
ensure_libs() {
  [[ -f "$LIBS_DIR/.complete" ]] && return 0
  command -v "$MVN" >/dev/null 2>&1 || die "'$MVN' not found; Maven is needed once to download Kafka $KAFKA_VERSION"
  log "downloading Kafka $KAFKA_VERSION jars into $LIBS_DIR (one-time) ..."
  mkdir -p "$KAFKA_CACHE"
  local tmp="$KAFKA_CACHE/libs.tmp.$$"
  rm -rf "$tmp"
  # A throwaway pom: copy-dependencies needs a project to read the dependency
  # list from, and this keeps Maven's resolution (exclusions, nearest-wins)
  # identical to what a real Kafka-embedding build would get.
  cat >"$KAFKA_CACHE/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>snap2caption.infra</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  if ! mvn_quiet -f "$KAFKA_CACHE/pom.xml" "$DEP_PLUGIN:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$tmp"; then
    rm -rf "$tmp"
    die "mvn could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (see errors above)"
  fi
  # kafka_2.13's pom brings log4j-core and slf4j-api 1.7 but no binding between
  # them (the release tarball adds one by hand); without it every broker log
  # line is dropped. Match the binding to the log4j-core Kafka chose.
  local cores log4j_ver
  cores=("$tmp"/log4j-core-*.jar)
  [[ -f "${cores[0]}" ]] || { rm -rf "$tmp"; die "no log4j-core among Kafka $KAFKA_VERSION's dependencies"; }
  log4j_ver="${cores[0]##*/log4j-core-}"; log4j_ver="${log4j_ver%.jar}"
  if ! mvn_quiet -f "$KAFKA_CACHE/pom.xml" "$DEP_PLUGIN:copy" \
      -Dartifact="org.apache.logging.log4j:log4j-slf4j-impl:$log4j_ver" -DoutputDirectory="$tmp"; then
    rm -rf "$tmp"
    die "mvn could not resolve org.apache.logging.log4j:log4j-slf4j-impl:$log4j_ver"
  fi
  touch "$tmp/.complete"
  rm -rf "$LIBS_DIR"
  mv "$tmp" "$LIBS_DIR"
  local jars=("$LIBS_DIR"/*.jar)
  log "cached ${#jars[@]} jars in $LIBS_DIR"
}

write_config() {
  mkdir -p "$DATA_DIR" "$LOG_DIRS"
  # Static voters (controller.quorum.voters) rather than a dynamic quorum
  # (format --standalone): the static form keeps no endpoint in the metadata
  # log, so the same data dir still starts if KAFKA_CONTROLLER_PORT changes.
  cat >"$PROPS_FILE" <<EOF
# Generated by infra/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$LOG_DIRS

# One node: internal topics cannot have more than one replica, and
# transactions/consumer groups hang forever if these ask for 3.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
num.partitions=1
# Tests join a group with one consumer; don't make them wait 3 s for others.
group.initial.rebalance.delay.ms=0
# Fewer threads than the defaults: the machine has 2 shared cores.
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
# Keep the disk footprint of a dev cache small.
log.retention.hours=24
log.segment.bytes=67108864
EOF

  # Kafka 4 logs through log4j2 and, run via java -cp (no bin/ scripts), would
  # otherwise fall back to log4j2's ERROR-only default and print nothing useful.
  cat >"$LOG4J_FILE" <<'EOF'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# The defaults are chatty at INFO (one line per config value, per log segment).
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.configs.name = org.apache.kafka.common.config
logger.configs.level = WARN
logger.logclean.name = kafka.log.LogCleaner
logger.logclean.level = WARN
EOF
}

# JVM command line shared by the storage tool and the broker. The classpath
# wildcard is expanded by the JVM itself, which avoids a huge argv.
java_cmd() {
  local java="$1"; shift
  local heap
  read -r -a heap <<<"$HEAP" # several flags in one variable, split on purpose
  JAVA_CMD=("$java" "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true "-Dlog4j2.configurationFile=$LOG4J_FILE"
    -cp "$LIBS_DIR/*" "$@")
}

format_storage() {
  [[ -f "$LOG_DIRS/meta.properties" ]] && return 0
  local java="$1" cluster_id
  # Kafka cluster ids are base64url-encoded 16-byte UUIDs (22 chars); making
  # one here saves a JVM start for `kafka-storage random-uuid`.
  cluster_id="${KAFKA_CLUSTER_ID:-$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)}"
  log "formatting KRaft storage in $LOG_DIRS (cluster id $cluster_id)"
  # --cluster-id=ID, not "--cluster-id ID": one id in 64 starts with '-', and the
  # tool's argument parser would then read it as an option.
  java_cmd "$java" kafka.tools.StorageTool format \
    --config "$PROPS_FILE" --cluster-id="$cluster_id" --ignore-formatted
  "${JAVA_CMD[@]}" </dev/null >>"$LOG_FILE" 2>&1 9>&- \
    || { tail -n 40 "$LOG_FILE" >&2; die "kafka-storage format failed"; }
}

# Ours runs the class kafka.Kafka (see daemon_pid in lib/daemon.sh).
running_pid() { daemon_pid "$PID_FILE" ' kafka\.Kafka '; }

# "Kafka Server started" is logged once the broker has caught up with the
# metadata log and opened its client listener; the port check guards against
# a stale log line and proves the socket really accepts connections.
broker_ready() { grep -q 'Kafka Server started' "$LOG_FILE" 2>/dev/null && port_open "$PORT"; }

wait_ready() {  # PID
  wait_until_ready "$1" "Kafka exited during startup; last 40 log lines ($LOG_FILE):" \
    "Kafka not ready after ${START_TIMEOUT}s; last 40 log lines ($LOG_FILE):" broker_ready
}

do_stop() { stop_daemon Kafka; }

do_start() {
  local fresh="${KAFKA_FRESH:-0}"
  while (($#)); do
    case "$1" in
      --fresh) fresh=1 ;;
      -h|--help) usage; return 0 ;;
      *) die "unknown option for start: $1" ;;
    esac
    shift
  done

  local pid java
  if [[ "$fresh" == 1 ]]; then
    do_stop
    log "--fresh: wiping $DATA_DIR"
    rm -rf "$DATA_DIR"
  fi

  if pid="$(running_pid)"; then
    # Already ours: just make sure it is (still) ready, e.g. when a second
    # `start` races the first one's startup.
    wait_ready "$pid" || exit 1
    log "already running (pid $pid)"
    echo "KAFKA_BOOTSTRAP_SERVERS=$BOOTSTRAP"
    return 0
  fi

  # Fail fast with a clear message instead of a BindException 20 s later.
  if port_open "$PORT"; then
    die "port $PORT is already in use by another process (not the node in $DATA_DIR); set KAFKA_PORT"
  fi
  if port_open "$CONTROLLER_PORT"; then
    die "controller port $CONTROLLER_PORT is already in use; set KAFKA_CONTROLLER_PORT"
  fi

  java="$(find_java)"
  check_java "$java"
  ensure_libs
  write_config
  rotate_log
  format_storage "$java"

  log "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller 127.0.0.1:$CONTROLLER_PORT, data $DATA_DIR)"
  java_cmd "$java" kafka.Kafka "$PROPS_FILE"
  spawn_daemon "${JAVA_CMD[@]}"
  await_daemon Kafka "$DAEMON_PID"
  echo "KAFKA_BOOTSTRAP_SERVERS=$BOOTSTRAP"
}

do_status() {
  local pid
  if pid="$(running_pid)" && port_open "$PORT"; then
    echo "running (pid $pid) on $BOOTSTRAP"
    return 0
  fi
  echo "not running"
  return 1
}

daemon_main kafka "$@"
