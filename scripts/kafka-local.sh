#!/usr/bin/env bash
# Run a real Apache Kafka 4.x broker (KRaft, no ZooKeeper) locally, from jars
# fetched from Maven Central with Maven (scripts/kafka/pom.xml). For tests and users.
#
#   scripts/kafka-local.sh start     [--brokers 1|3]  start (fresh data) and wait until ready;
#                                                      prints the bootstrap servers on stdout
#   scripts/kafka-local.sh stop                        stop whatever this script started
#   scripts/kafka-local.sh status                      exit 0 + bootstrap if running, else 1
#   scripts/kafka-local.sh bootstrap [--brokers 1|3]   print the bootstrap servers string
#   scripts/kafka-local.sh kill-node N                 kill -9 node N of the running cluster (fault tests)
#   scripts/kafka-local.sh restart-node N              start node N again on its data and wait until
#                                                      the whole cluster is ready (its previous log is
#                                                      kept as node-N/kafka.log.<n>)
#   scripts/kafka-local.sh pid N                       print node N's pid (exit 1 if not running)
#   scripts/kafka-local.sh tool <class> [args...]      run a Kafka Java tool from the jars, e.g.
#                                                      tool org.apache.kafka.tools.TopicCommand --list --bootstrap-server 127.0.0.1:19092
#
# Broker settings come from deploy/kafka/server.properties; node-specific lines
# are appended per node. Progress goes to stderr, results to stdout.
#
# Environment:
#   AGENTLOG_CACHE       cache root (default ~/.cache/agentlog); jars in kafka/<version>/libs
#   KAFKA_LOCAL_DIR      state dir: per-node data, logs, pid files (default ~/.cache/agentlog/kafka-run)
#   KAFKA_PORT           first client port (default 19092). Node i (1-based) listens on
#                        KAFKA_PORT+2(i-1) for clients and KAFKA_PORT+2(i-1)+1 for the controller.
#   KAFKA_BROKERS        default for --brokers (1)
#   KAFKA_START_TIMEOUT  seconds to wait for readiness (default 90)
#   KAFKA_RESTART_TIMEOUT seconds restart-node waits for the node to rejoin (default 180)
#   KAFKA_HEAP           broker heap, -Xms and -Xmx (default 512m)
#   KAFKA_GC_OPTS        broker garbage collector flags (default G1, 20 ms pause goal);
#                        GC pauses go to node-N/gc.log
#   KAFKA_EXTRA_PROPS    broker settings appended to every node's server.properties
#                        (space-separated key=value; they override the file's), e.g.
#                        KAFKA_EXTRA_PROPS="num.io.threads=4 num.network.threads=2"
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
SELF="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
POM="$SCRIPT_DIR/kafka/pom.xml"
BASE_PROPS="$REPO_DIR/deploy/kafka/server.properties"

KAFKA_VERSION="$(sed -n 's:.*<kafka\.version>\([^<]*\)</kafka\.version>.*:\1:p' "$POM" | head -n 1)"
[[ -n "$KAFKA_VERSION" ]] || { echo "kafka-local: cannot read kafka.version from $POM" >&2; exit 2; }

CACHE_ROOT="${AGENTLOG_CACHE:-$HOME/.cache/agentlog}"
VERSION_DIR="$CACHE_ROOT/kafka/$KAFKA_VERSION"
LIBS_DIR="$VERSION_DIR/libs"
MARKER="$VERSION_DIR/.complete"
RUN_DIR="${KAFKA_LOCAL_DIR:-$HOME/.cache/agentlog/kafka-run}"
BASE_PORT="${KAFKA_PORT:-19092}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
# A node restarted after kill -9 first recovers its unflushed log segments and then catches
# up with the leaders; on 2 busy cores that once took over 90 s (CI, 2026-12-03).
RESTART_TIMEOUT="${KAFKA_RESTART_TIMEOUT:-180}"
HEAP="${KAFKA_HEAP:-512m}"
GC_OPTS="${KAFKA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent}"
STOP_TIMEOUT=20
LOCK_TIMEOUT=180
FETCH_TIMEOUT=1200

log() { echo "kafka-local: $*" >&2; }
die() { log "$*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- ports / nodes
client_port() { echo $((BASE_PORT + 2 * ($1 - 1))); }
controller_port() { echo $((BASE_PORT + 2 * ($1 - 1) + 1)); }
node_dir() { echo "$RUN_DIR/node-$1"; }
pid_file() { echo "$RUN_DIR/node-$1/kafka.pid"; }
state_file() { echo "$RUN_DIR/brokers"; }

bootstrap_for() {
  local n="$1" i out=""
  for ((i = 1; i <= n; i++)); do
    out+="${out:+,}127.0.0.1:$(client_port "$i")"
  done
  echo "$out"
}

# Broker count of the running (or last started) cluster, empty if none recorded.
recorded_brokers() {
  local f
  f="$(state_file)"
  [[ -f "$f" ]] && tr -dc '0-9' <"$f" || true
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# True if $1 is a live process started by this script for node $2 (guards against pid reuse).
is_our_broker() {
  local pid="$1" node="$2"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 0 # no procfs: trust kill -0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $(node_dir "$node")/server.properties"
}

node_pid() { local f; f="$(pid_file "$1")"; [[ -f "$f" ]] && tr -dc '0-9' <"$f" || true; }

node_running() { local pid; pid="$(node_pid "$1")"; [[ -n "$pid" ]] && is_our_broker "$pid" "$1"; }

# Brokers of this RUN_DIR whose pid file is gone (crashed script, deleted files).
orphan_pids() {
  local f cmd
  [[ -d /proc ]] || return 0
  # One grep over all cmdlines, then an exact check (grep's own cmdline matches too).
  for f in $(grep -lasF -- "$RUN_DIR/node-" /proc/[0-9]*/cmdline 2>/dev/null || true); do
    cmd="$(tr '\0' ' ' <"$f" 2>/dev/null || true)"
    [[ "$cmd" == *"kafka.Kafka $RUN_DIR/node-"*"/server.properties"* ]] || continue
    f="${f#/proc/}"
    echo "${f%/cmdline}"
  done
  return 0
}

# ---------------------------------------------------------------- locking
acquire_lock() { # $1 = lock file
  mkdir -p "$(dirname "$1")"
  exec 9>"$1"
  flock -w "$LOCK_TIMEOUT" 9 || die "could not lock $1 within ${LOCK_TIMEOUT}s (another kafka-local.sh running?)"
}

# ---------------------------------------------------------------- java / maven
java_major() { # $1 = java binary
  "$1" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}' | awk -F. '{ if ($1 == "1") print $2; else print $1 }'
}

apt_install() {
  [[ "$(id -u)" == 0 ]] || die "need $* but not root; install them (Java 17+ and Maven) and retry"
  command -v apt-get >/dev/null || die "need $* and apt-get is not available; install Java 17+ and Maven"
  log "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  timeout 900 apt-get update >&2
  timeout 900 apt-get install -y --no-install-recommends "$@" >&2
}

JAVA=""
find_java() {
  local c m
  for c in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java || true)" /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/java-21-openjdk-*/bin/java; do
    [[ -n "$c" && -x "$c" ]] || continue
    m="$(java_major "$c" || true)"
    if [[ "$m" =~ ^[0-9]+$ ]] && ((m >= 17)); then JAVA="$c"; export KAFKA_LOCAL_JAVA="$c"; return 0; fi
  done
  return 1
}

ensure_java() {
  [[ -n "$JAVA" ]] && return 0
  # Set by a parent kafka-local.sh (tool re-entry): skip probing.
  if [[ -n "${KAFKA_LOCAL_JAVA:-}" && -x "${KAFKA_LOCAL_JAVA:-}" ]]; then JAVA="$KAFKA_LOCAL_JAVA"; return 0; fi
  find_java && return 0
  apt_install openjdk-17-jre-headless maven || apt_install openjdk-21-jre-headless maven || true
  find_java || die "no Java 17+ found (JAVA_HOME, PATH, /usr/lib/jvm)"
  export KAFKA_LOCAL_JAVA="$JAVA"
}

ensure_mvn() {
  command -v mvn >/dev/null && return 0
  apt_install openjdk-17-jre-headless maven || apt_install maven
  command -v mvn >/dev/null || die "maven (mvn) not found after install"
}

# Marker content = version + pom checksum, so editing the pom refreshes the cache.
marker_value() { echo "$KAFKA_VERSION $(sha256sum "$POM" | cut -d' ' -f1)"; }

libs_ready() { [[ -f "$MARKER" && "$(cat "$MARKER")" == "$(marker_value)" && -d "$LIBS_DIR" ]]; }

ensure_libs() {
  libs_ready && return 0
  acquire_lock "$VERSION_DIR.lock"
  if libs_ready; then exec 9>&-; return 0; fi
  ensure_java
  ensure_mvn
  local tmp="$VERSION_DIR/libs.tmp" t0=$SECONDS
  log "fetching Kafka $KAFKA_VERSION jars with Maven into $LIBS_DIR"
  rm -rf "$tmp" "$LIBS_DIR" "$MARKER"
  mkdir -p "$tmp"
  if ! JAVA_HOME="${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$JAVA")")")}" \
      timeout --foreground "$FETCH_TIMEOUT" mvn -q -B -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$VERSION_DIR/fetch.log" 2>&1; then
    tail -n 40 "$VERSION_DIR/fetch.log" >&2
    die "maven fetch failed (full log: $VERSION_DIR/fetch.log)"
  fi
  ls "$tmp"/kafka_2.13-*.jar "$tmp"/kafka-tools-*.jar >/dev/null 2>&1 || die "fetch incomplete: kafka jars missing in $tmp"
  mv "$tmp" "$LIBS_DIR"
  marker_value >"$MARKER"
  log "fetched $(find "$LIBS_DIR" -name "*.jar" | wc -l) jars in $((SECONDS - t0))s"
  exec 9>&-
}

write_log4j_configs() {
  cat >"$RUN_DIR/log4j2-broker.properties" <<'EOF'
# Generated by kafka-local.sh: broker logs to stdout, redirected to node-N/kafka.log.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.netclient.name = org.apache.kafka.clients.NetworkClient
logger.netclient.level = WARN
EOF
  cat >"$RUN_DIR/log4j2-tools.properties" <<'EOF'
# Generated by kafka-local.sh: CLI tools log warnings only, to stderr.
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# Run a Kafka Java tool class (fast-starting small JVM).
run_tool() {
  local cls="$1"
  shift
  [[ -f "$RUN_DIR/log4j2-tools.properties" ]] || { mkdir -p "$RUN_DIR"; write_log4j_configs; }
  "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$RUN_DIR/log4j2-tools.properties" \
    -cp "$LIBS_DIR/*" "$cls" "$@"
}

# ---------------------------------------------------------------- start
write_node_props() { # $1 = node, $2 = broker count
  local i="$1" n="$2" dir voters="" j
  dir="$(node_dir "$i")"
  for ((j = 1; j <= n; j++)); do voters+="${voters:+,}$j@127.0.0.1:$(controller_port "$j")"; done
  {
    cat "$BASE_PROPS"
    echo
    echo "############################# generated by scripts/kafka-local.sh (node $i of $n) #############################"
    echo "node.id=$i"
    echo "controller.quorum.voters=$voters"
    echo "listeners=PLAINTEXT://127.0.0.1:$(client_port "$i"),CONTROLLER://127.0.0.1:$(controller_port "$i")"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$(client_port "$i")"
    echo "log.dirs=$dir/data"
    if ((n >= 3)); then
      echo "default.replication.factor=3"
      echo "min.insync.replicas=2"
      echo "offsets.topic.replication.factor=3"
      echo "transaction.state.log.replication.factor=3"
      echo "transaction.state.log.min.isr=2"
      echo "share.coordinator.state.topic.replication.factor=3"
      echo "share.coordinator.state.topic.min.isr=2"
    fi
    # Settings to try without editing the files (later lines win in a properties file).
    if [[ -n "${KAFKA_EXTRA_PROPS:-}" ]]; then
      echo "# KAFKA_EXTRA_PROPS"
      tr ' ' '\n' <<<"$KAFKA_EXTRA_PROPS"
    fi
  } >"$dir/server.properties"
}

# A base64url id like Kafka's own; never one starting with '-', which kafka-storage's argument
# parser takes for an option (1 start in 64 failed with "--cluster-id: expected one argument").
cluster_id() {
  local id="-"
  while [[ "$id" == -* ]]; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  done
  echo "$id"
}

dump_logs() {
  local n="$1" i
  for ((i = 1; i <= n; i++)); do
    [[ -f "$(node_dir "$i")/kafka.log" ]] || continue
    echo "----- tail of $(node_dir "$i")/kafka.log -----" >&2
    tail -n 40 "$(node_dir "$i")/kafka.log" >&2
  done
}

# Ready = every node's process alive, its log says started, and one admin round trip
# (Metadata + ApiVersions to every broker listed in the metadata) sees all n brokers.
wait_ready() {
  local n="$1" limit="${2:-$START_TIMEOUT}" bs i deadline tries=0 ready left out
  bs="$(bootstrap_for "$n")"
  deadline=$((SECONDS + limit))
  while ((SECONDS < deadline && tries < 1000)); do
    tries=$((tries + 1))
    ready=1
    for ((i = 1; i <= n; i++)); do
      # kill -0 only: right after the fork the pid may not have exec'ed java yet.
      kill -0 "$(node_pid "$i")" 2>/dev/null || { log "node $i exited during startup"; return 1; }
      grep -q "Kafka Server started" "$(node_dir "$i")/kafka.log" 2>/dev/null || ready=0
    done
    if ((ready)); then
      left=$((deadline - SECONDS))
      ((left > 20)) && left=20
      ((left < 1)) && left=1
      if out="$(timeout "$left" bash "$SELF" tool org.apache.kafka.tools.BrokerApiVersionsCommand \
        --bootstrap-server "$bs" 2>/dev/null 9>&-)" &&
        (($(grep -c ' -> (' <<<"$out") >= n)); then
        return 0
      fi
    fi
    sleep 0.5
  done
  log "not ready after ${limit}s"
  return 1
}

start_node() { # $1 = node
  local i="$1" dir pid
  dir="$(node_dir "$i")"
  # setsid: own session, survives the caller's terminal/process group. fd 9 (lock) closed.
  # shellcheck disable=SC2086 # KAFKA_GC_OPTS is a list of JVM flags
  setsid nohup "$JAVA" -Xms"$HEAP" -Xmx"$HEAP" $GC_OPTS -Xlog:gc:file="$dir/gc.log":uptime \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$RUN_DIR/log4j2-broker.properties" -Dkafka.logs.dir="$dir" \
    -cp "$LIBS_DIR/*" kafka.Kafka "$dir/server.properties" \
    </dev/null >"$dir/kafka.log" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$(pid_file "$i")"
}

cmd_start() { # $1 = broker count, $2 = 1 if --brokers was given explicitly
  local n="$1" explicit="${2:-0}" cur i p t0=$SECONDS cid pids=()
  ensure_libs
  ensure_java
  acquire_lock "$RUN_DIR/.lock"

  cur="$(recorded_brokers)"
  if [[ -n "$cur" ]] && all_running "$cur"; then
    if [[ "$cur" == "$n" ]] || ((!explicit)); then
      n="$cur"
      log "already running ($n broker(s))"
      bootstrap_for "$n"
      return 0
    fi
    log "running with $cur broker(s), restarting with $n"
  fi
  do_stop

  for ((i = 1; i <= n; i++)); do
    for p in "$(client_port "$i")" "$(controller_port "$i")"; do
      port_open "$p" && die "port 127.0.0.1:$p is already in use by another process"
    done
  done

  mkdir -p "$RUN_DIR"
  write_log4j_configs
  cid="$(cluster_id)"
  rm -rf "$RUN_DIR"/node-* # fresh data every start (the brokers are stopped)
  for ((i = 1; i <= n; i++)); do
    mkdir -p "$(node_dir "$i")"
    write_node_props "$i" "$n"
  done
  echo "$n" >"$(state_file)"

  log "formatting KRaft storage (cluster id $cid, $n node(s))"
  for ((i = 1; i <= n; i++)); do
    timeout 60 bash "$SELF" tool kafka.tools.StorageTool format --config "$(node_dir "$i")/server.properties" \
      --cluster-id "$cid" --feature group.version=1 >"$(node_dir "$i")/format.log" 2>&1 9>&- &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { cat "$(node_dir $((i + 1)))/format.log" >&2; die "storage format failed for node $((i + 1))"; }
  done

  log "starting $n broker(s) (Kafka $KAFKA_VERSION, $JAVA)"
  for ((i = 1; i <= n; i++)); do start_node "$i"; done

  if ! wait_ready "$n"; then
    dump_logs "$n"
    do_stop
    die "Kafka did not become ready (logs in $RUN_DIR/node-*/kafka.log)"
  fi
  log "ready in $((SECONDS - t0))s"
  bootstrap_for "$n"
}

# ---------------------------------------------------------------- stop / status
all_running() {
  local n="$1" i
  [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1)) || return 1
  for ((i = 1; i <= n; i++)); do node_running "$i" || return 1; done
}

do_stop() {
  local f i pid pids=() deadline tries=0 alive
  shopt -s nullglob
  for f in "$RUN_DIR"/node-*/kafka.pid; do
    i="$(basename "$(dirname "$f")")"
    i="${i#node-}"
    pid="$(node_pid "$i")"
    if [[ -n "$pid" ]] && is_our_broker "$pid" "$i"; then pids+=("$pid"); fi
  done
  shopt -u nullglob
  for pid in $(orphan_pids); do
    [[ " ${pids[*]-} " == *" $pid "* ]] || pids+=("$pid")
  done
  if ((${#pids[@]})); then
    log "stopping broker pid(s) ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while ((SECONDS < deadline && tries < 200)); do
      tries=$((tries + 1))
      alive=()
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
      ((${#alive[@]})) || break
      sleep 0.2
    done
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    if ((${#alive[@]})); then
      log "SIGKILL after ${STOP_TIMEOUT}s: ${alive[*]}"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      for ((tries = 0; tries < 50; tries++)); do
        alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        ((${#alive[@]})) || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$RUN_DIR"/node-*/kafka.pid "$(state_file)"
}

cmd_stop() {
  [[ -d "$RUN_DIR" ]] || return 0
  acquire_lock "$RUN_DIR/.lock"
  do_stop
}

cmd_status() {
  local n i
  n="$(recorded_brokers)"
  if [[ -z "$n" ]]; then log "not running"; return 1; fi
  for ((i = 1; i <= n; i++)); do
    node_running "$i" || { log "node $i not running"; return 1; }
    port_open "$(client_port "$i")" || { log "node $i not accepting connections on $(client_port "$i")"; return 1; }
  done
  bootstrap_for "$n"
}

# ---------------------------------------------------------------- single nodes (fault tests)
# A node number of the recorded cluster, or die.
checked_node() {
  local node="$1" n
  n="$(recorded_brokers)"
  [[ -n "$n" ]] || die "no cluster recorded in $RUN_DIR"
  [[ "$node" =~ ^[0-9]+$ ]] && ((node >= 1 && node <= n)) || die "node must be 1..$n (got '$node')"
  echo "$n"
}

# SIGKILL, not TERM: a fault test wants a crash, with no controlled shutdown or final flush.
cmd_kill_node() {
  local node="$1" pid tries
  checked_node "$node" >/dev/null
  acquire_lock "$RUN_DIR/.lock"
  pid="$(node_pid "$node")"
  if [[ -z "$pid" ]] || ! is_our_broker "$pid" "$node"; then
    log "node $node is not running"
    return 0
  fi
  kill -KILL "$pid" 2>/dev/null || true
  for ((tries = 0; tries < 100; tries++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && die "node $node (pid $pid) still alive 10s after SIGKILL"
  log "killed node $node (pid $pid)"
}

# Starts a stopped node on its existing data (no format), as start_node does at cluster start.
cmd_restart_node() {
  local node="$1" n dir keep=1 t0=$SECONDS
  n="$(checked_node "$node")"
  ensure_libs
  ensure_java
  acquire_lock "$RUN_DIR/.lock"
  if node_running "$node"; then
    log "node $node is already running"
  else
    dir="$(node_dir "$node")"
    # Keep the crashed incarnation's log: it is the evidence of what the broker did.
    while [[ -e "$dir/kafka.log.$keep" ]] && ((keep < 1000)); do keep=$((keep + 1)); done
    [[ -f "$dir/kafka.log" ]] && mv "$dir/kafka.log" "$dir/kafka.log.$keep"
    start_node "$node"
  fi
  if ! wait_ready "$n" "$RESTART_TIMEOUT"; then
    dump_logs "$n"
    die "node $node did not rejoin within ${RESTART_TIMEOUT}s (logs in $RUN_DIR/node-*/kafka.log)"
  fi
  log "node $node ready in $((SECONDS - t0))s"
}

cmd_pid() {
  local node="$1" pid
  checked_node "$node" >/dev/null
  pid="$(node_pid "$node")"
  [[ -n "$pid" ]] && is_our_broker "$pid" "$node" || { log "node $node is not running"; return 1; }
  echo "$pid"
}

# ---------------------------------------------------------------- main
main() {
  local cmd="${1:-}" n="${KAFKA_BROKERS:-1}" brokers_given=0
  [[ -n "${KAFKA_BROKERS:-}" ]] && brokers_given=1
  [[ -n "$cmd" ]] || usage
  shift
  case "$cmd" in
  kill-node | restart-node | pid)
    [[ $# -eq 1 ]] || usage
    case "$cmd" in
    kill-node) cmd_kill_node "$1" ;;
    restart-node) cmd_restart_node "$1" ;;
    pid) cmd_pid "$1" ;;
    esac
    return
    ;;
  esac
  if [[ "$cmd" == tool ]]; then
    [[ $# -ge 1 ]] || usage
    ensure_libs
    ensure_java
    run_tool "$@"
    return
  fi
  while (($#)); do
    case "$1" in
    --brokers) [[ $# -ge 2 ]] || usage; n="$2"; brokers_given=1; shift 2 ;;
    --brokers=*) n="${1#--brokers=}"; brokers_given=1; shift ;;
    -h | --help) usage ;;
    *) log "unknown argument: $1"; usage ;;
    esac
  done
  [[ "$n" == 1 || "$n" == 3 ]] || die "--brokers must be 1 or 3 (got $n)"

  case "$cmd" in
  start) cmd_start "$n" "$brokers_given" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  bootstrap)
    local cur
    cur="$(recorded_brokers)"
    if ((!brokers_given)) && [[ -n "$cur" ]]; then n="$cur"; fi
    bootstrap_for "$n"
    ;;
  -h | --help | help) usage ;;
  *) log "unknown command: $cmd"; usage ;;
  esac
}

main "$@"
