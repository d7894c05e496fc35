#!/usr/bin/env bash
# A real Apache Kafka cluster on this machine, without Docker: N combined broker+controller
# nodes (KRaft), one JVM each, listening on 127.0.0.1 only. Kafka's jars come from Maven
# Central (tests/kafka/pom.xml pins the version) and are cached outside the clone.
#
# Usage: scripts/kafka.sh COMMAND [OPTIONS]
#   up [--brokers N] [--dir DIR]  formats and starts an N-node cluster (default 3), waits
#                                 until its metadata lists all N brokers, then prints
#                                 `bootstrap: 127.0.0.1:P1,127.0.0.1:P2,...` (PLAINTEXT) as the
#                                 first line on stdout and `sasl-bootstrap: 127.0.0.1:S1,...`
#                                 (SASL_PLAINTEXT: SCRAM-SHA-512 or PLAIN, user vigil, password
#                                 vigil-secret) as the second, and leaves it running. On a
#                                 running cluster it only prints those lines; on one stopped
#                                 with `down --keep` (or with some nodes killed) it starts the
#                                 missing nodes. An explicit --brokers that differs from DIR's
#                                 cluster fails.
#   kill ID [--dir DIR]           SIGKILL node ID (exit 1 when it is not running).
#   start ID [--dir DIR]          starts node ID again (same ports, same data) and returns
#                                 once it is back in the ISR of every partition it hosts.
#   pid ID [--dir DIR]            prints node ID's process id (exit 1 when not running).
#   status [--dir DIR]            one line per node, then the bootstrap lines, on stdout;
#                                 exit 1 unless all are running.
#   down [--keep] [--dir DIR]     SIGTERM every node, SIGKILL after 10 s (30 s with --keep);
#                                 then removes the cluster's data and logs (the next `up`
#                                 formats a new cluster on new ports), or with --keep leaves
#                                 them for the next `up` to start again.
#   tool CLASS [ARGS...]          runs a Kafka command-line class from the same jars, e.g.
#                                 org.apache.kafka.tools.TopicCommand --bootstrap-server B --list;
#                                 CLASS may also be the name of Kafka's script for it:
#                                 kafka-topics.sh, kafka-transactions.sh, kafka-configs.sh, ...
#   -h, --help                    this text.
# Node IDs are 1..N. DIR defaults to ${XDG_CACHE_HOME:-~/.cache}/vigil/kafka-cluster; it
# holds cluster.env (ports, cluster id), node-ID.pid and node-ID/ (server.properties, data/,
# logs/server.log). Only the bootstrap lines go to stdout; progress and errors go to stderr.
#
# Needs Java 17+ (Debian: openjdk-17-jre-headless) and Maven (Debian: maven); the jars are
# resolved once into ${XDG_CACHE_HOME:-~/.cache}/vigil/kafka/VERSION/libs (and ~/.m2).
# Environment: VIGIL_KAFKA_TIMEOUT  seconds `up`/`start` wait (default 90);
#              VIGIL_KAFKA_HEAP     heap of each node (default 384m); JAVA_HOME.
# See docs/kafka-cluster.md.
set -euo pipefail

SCRIPT_NAME=kafka.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

pom="$here/../tests/kafka/pom.xml"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/vigil"
timeout_s=${VIGIL_KAFKA_TIMEOUT:-90}
heap=${VIGIL_KAFKA_HEAP:-384m}

die() { say "error: $*"; exit 1; }

# The SCRAM-SHA-512 user of the SASL_PLAINTEXT listener, created when the storage is
# formatted. A test credential, not a secret: the cluster listens on 127.0.0.1 only.
readonly SASL_USER=vigil SASL_PASSWORD=vigil-secret

# --- The pinned version and its jars -------------------------------------------------------
kafka_version() {
  sed -n 's:.*<kafka\.version>\([^<]*\)</kafka\.version>.*:\1:p' "$pom" | head -n1
}
version=$(kafka_version)
[ -n "$version" ] || die "no <kafka.version> in $pom"
libs="$cache_root/kafka/$version/libs"
tools_log_config="$cache_root/kafka/$version/tools-log4j2.properties"

java=""
need_java() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    java="$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    java=$(command -v java)
  else
    die "no java found (JAVA_HOME or PATH): Kafka $version needs Java 17 or newer; on Debian: apt-get install openjdk-17-jre-headless"
  fi
  local v
  v=$("$java" -version 2>&1 | sed -n 's/.* version "\([0-9]*\)[."].*/\1/p' | head -n1)
  if [ -z "$v" ] || [ "$v" -lt 17 ]; then
    die "$java is Java ${v:-?}: Kafka $version needs Java 17 or newer; on Debian: apt-get install openjdk-17-jre-headless (and set JAVA_HOME)"
  fi
}

# Resolves the jars into $libs once; again only when tests/kafka/pom.xml changes.
need_libs() {
  local stamp
  stamp=$(sha256sum "$pom" | cut -d' ' -f1)
  if [ -f "$libs/.resolved" ] && [ "$(cat "$libs/.resolved")" = "$stamp" ]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 ||
    die "no mvn on PATH: it fetches Kafka $version's jars from Maven Central once; on Debian: apt-get install maven"
  mkdir -p "$(dirname "$libs")"
  if command -v flock >/dev/null 2>&1; then
    exec 8>"$(dirname "$libs")/.lock"
    flock -w 600 8 || die "another scripts/kafka.sh is resolving the jars ($(dirname "$libs")/.lock)"
    if [ -f "$libs/.resolved" ] && [ "$(cat "$libs/.resolved")" = "$stamp" ]; then
      exec 8>&-
      return 0
    fi
  fi
  say "resolving Apache Kafka $version jars (tests/kafka/pom.xml) into $libs"
  local tmp="$libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$tmp" >&2; then
    rm -rf "$tmp"
    die "mvn could not resolve Kafka $version's jars (message above)"
  fi
  echo "$stamp" >"$tmp/.resolved"
  rm -rf "$libs"
  mv "$tmp" "$libs"
  exec 8>&-
}

# Log4j 2 configuration of the command-line tools this script runs: errors only, on stderr.
write_tools_log_config() {
  [ -f "$tools_log_config" ] && return 0
  mkdir -p "$(dirname "$tools_log_config")"
  cat >"$tools_log_config.$$" <<'EOF'
status = error
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ERROR
rootLogger.appenderRef.err.ref = err
EOF
  mv "$tools_log_config.$$" "$tools_log_config"
}

# Runs a Kafka command-line class (TopicCommand, StorageTool, ...) from the jars.
kafka_tool() {
  "$java" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
    -Dlog4j2.configurationFile="$tools_log_config" -cp "$libs/*" "$@"
}

# A random Kafka Uuid (what `StorageTool random-uuid` prints: 16 random bytes in URL-safe
# base64 without padding, never starting with "-"), without starting a JVM.
kafka_uuid() {
  local u
  while :; do
    u=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    [[ "$u" == -* ]] || break
  done
  echo "$u"
}

# --- The cluster directory -----------------------------------------------------------------
dir="$cache_root/kafka-cluster"
env_file() { echo "$dir/cluster.env"; }

load_cluster() {
  [ -f "$(env_file)" ] || return 1
  # shellcheck disable=SC1090 # written by this script (save_cluster)
  . "$(env_file)"
}

save_cluster() {
  local i
  {
    printf 'KAFKA_VERSION=%q\nCLUSTER_ID=%q\nBROKERS=%q\n' "$version" "$CLUSTER_ID" "$BROKERS"
    for i in $(seq 1 "$BROKERS"); do
      printf 'BROKER_PORT_%d=%q\nCONTROLLER_PORT_%d=%q\nSASL_PORT_%d=%q\nDIRECTORY_ID_%d=%q\n' \
        "$i" "$(broker_port "$i")" "$i" "$(controller_port "$i")" "$i" "$(sasl_port "$i")" "$i" "$(directory_id "$i")"
    done
  } >"$(env_file).tmp"
  mv "$(env_file).tmp" "$(env_file)"
}

broker_port() { local v="BROKER_PORT_$1"; echo "${!v}"; }
controller_port() { local v="CONTROLLER_PORT_$1"; echo "${!v}"; }
# Empty for a cluster formatted before the SASL listener existed (it has none).
sasl_port() { local v="SASL_PORT_$1"; echo "${!v:-}"; }
directory_id() { local v="DIRECTORY_ID_$1"; echo "${!v}"; }
node_dir() { echo "$dir/node-$1"; }
pid_file() { echo "$dir/node-$1.pid"; }

bootstrap_servers() {
  local i out=""
  for i in $(seq 1 "$BROKERS"); do out+="${out:+,}127.0.0.1:$(broker_port "$i")"; done
  echo "$out"
}

sasl_bootstrap_servers() {
  local i out=""
  [ -n "$(sasl_port 1)" ] || return 0
  for i in $(seq 1 "$BROKERS"); do out+="${out:+,}127.0.0.1:$(sasl_port "$i")"; done
  echo "$out"
}

# The stdout contract: `bootstrap: ...` first, then `sasl-bootstrap: ...` when the cluster
# has that listener. One write, so that `| head -n 1` cannot break the script with SIGPIPE
# between the two lines.
print_bootstrap() {
  local out sasl
  out="bootstrap: $(bootstrap_servers)"
  sasl=$(sasl_bootstrap_servers)
  [ -z "$sasl" ] || out+=$'\n'"sasl-bootstrap: $sasl"
  printf '%s\n' "$out"
}

# Prints node $1's pid when that process is alive and is this node's broker.
node_pid() {
  local pid cmdline
  pid=$(cat "$(pid_file "$1")" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$cmdline" == *" $(node_dir "$1")/server.properties"* ]] || return 1
  echo "$pid"
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

port_free() {
  if command -v ss >/dev/null 2>&1; then
    [ -z "$(ss -Hltn "( sport = :$1 )" 2>/dev/null)" ]
  elif port_open "$1"; then
    return 1
  fi
}

# Picks $1 distinct free ports below the kernel's ephemeral range.
pick_ports() {
  local want=$1 lo=10000 hi p picked=()
  read -r hi _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || hi=32768
  [ "$hi" -gt $((lo + 1000)) ] || { lo=40000; hi=60000; }
  while [ ${#picked[@]} -lt "$want" ]; do
    p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo)))
    [[ " ${picked[*]} " == *" $p "* ]] && continue
    port_free "$p" && picked+=("$p")
  done
  echo "${picked[@]}"
}

# --- Configuration -------------------------------------------------------------------------
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

write_node_config() {
  local id=$1 n=$BROKERS voters="" i
  for i in $(seq 1 "$n"); do voters+="${voters:+,}127.0.0.1:$(controller_port "$i")"; done
  mkdir -p "$(node_dir "$id")/data" "$(node_dir "$id")/logs"
  cat >"$(node_dir "$id")/server.properties" <<EOF
# Written by scripts/kafka.sh for node $id of a $n-node cluster (Apache Kafka $version).
process.roles=broker,controller
node.id=$id
controller.quorum.bootstrap.servers=$voters
listeners=PLAINTEXT://127.0.0.1:$(broker_port "$id"),SASL://127.0.0.1:$(sasl_port "$id"),CONTROLLER://127.0.0.1:$(controller_port "$id")
advertised.listeners=PLAINTEXT://127.0.0.1:$(broker_port "$id"),SASL://127.0.0.1:$(sasl_port "$id"),CONTROLLER://127.0.0.1:$(controller_port "$id")
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$(node_dir "$id")/data
# Clients may also authenticate: SASL_PLAINTEXT on the SASL listener, SCRAM-SHA-512 (user
# $SASL_USER, created at format time) or PLAIN (the same user and password, for clients
# whose librdkafka was built without OpenSSL, which SCRAM needs). Brokers and controllers
# talk PLAINTEXT among themselves; there is no authorizer, so an authenticated client may
# do anything.
listener.name.sasl.sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$SASL_PASSWORD";

# --- As in production ---
default.replication.factor=$(min 3 "$n")
min.insync.replicas=$(min 2 "$n")
offsets.topic.replication.factor=$(min 3 "$n")
transaction.state.log.replication.factor=$(min 3 "$n")
transaction.state.log.min.isr=$(min 2 "$n")
share.coordinator.state.topic.replication.factor=$(min 3 "$n")
share.coordinator.state.topic.min.isr=$(min 2 "$n")
unclean.leader.election.enable=false
# Vigil creates its topics through the admin API (kafka.create_topics), as docker-compose's
# topic-init does; a typo in a topic name must not create a topic.
auto.create.topics.enable=false
# Vigil's records: kafka.max_message_bytes (default 32 MiB) plus the detector's 1 MiB
# dead-letter headroom = 33 MiB. Its topics carry max.message.bytes themselves; this is the
# default for topics created without it.
message.max.bytes=34603008
replica.fetch.max.bytes=34603008
# socket.request.max.bytes stays at its default, 100 MiB.

# --- Sizing for a small machine (no change in semantics) ---
# The cleaner's dedupe buffer is allocated on the heap at start-up (default 128 MiB).
log.cleaner.dedupe.buffer.size=16777216
num.network.threads=2
num.io.threads=4
background.threads=4

# --- TEST DEVIATIONS: not for production ---
# Lets tests use consumer session timeouts down to 1 s (classic protocol; default 6 s).
group.min.session.timeout.ms=1000
# The same for KIP-848 (group.protocol=consumer) groups (defaults 45 s and 5 s).
group.consumer.min.session.timeout.ms=1000
group.consumer.min.heartbeat.interval.ms=500
# Classic groups rebalance at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
# Transactions that exceed their transaction.timeout.ms are aborted within ~1 s (default
# every 10 s), so tests of a dead transactional producer do not wait long.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
# Fewer partitions for the internal topics (defaults 50): created much faster here.
offsets.topic.num.partitions=6
transaction.state.log.num.partitions=6
share.coordinator.state.topic.num.partitions=6
EOF
}

write_node_log_config() {
  cat >"$dir/log4j2.properties" <<'EOF'
# Each node logs to its own logs/server.log (kafka.logs.dir), at most 3 x 20 MB.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = kafka.controller
logger.controller.level = INFO
logger.state.name = state.change.logger
logger.state.level = INFO
EOF
}

# Formats every node's storage in parallel (one StorageTool JVM each).
format_storage() {
  local i pids=() quorum="" args
  for i in $(seq 1 "$BROKERS"); do
    quorum+="${quorum:+,}$i@127.0.0.1:$(controller_port "$i"):$(directory_id "$i")"
  done
  for i in $(seq 1 "$BROKERS"); do
    if [ "$BROKERS" -eq 1 ]; then args=(--standalone); else args=(--initial-controllers "$quorum"); fi
    kafka_tool kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$(node_dir "$i")/server.properties" \
      "${args[@]}" --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]" \
      >"$(node_dir "$i")/logs/format.log" 2>&1 &
    pids+=($!)
  done
  for i in $(seq 1 "$BROKERS"); do
    wait "${pids[$((i - 1))]}" || {
      cat "$(node_dir "$i")/logs/format.log" >&2
      die "formatting node $i's storage failed (above)"
    }
  done
}

start_node() {
  local id=$1 nd pid
  nd=$(node_dir "$id")
  local port
  for port in "$(broker_port "$id")" "$(controller_port "$id")" $(sasl_port "$id"); do
    port_free "$port" || die "node $id's port $port is taken by another process"
  done
  local launch=(nohup)
  command -v setsid >/dev/null 2>&1 && launch=(setsid nohup)
  # Kept small on purpose: a fixed heap and the serial collector; a node that runs out of
  # memory exits instead of limping; NIO's per-thread cache of direct buffers stays small
  # although records reach 33 MiB.
  "${launch[@]}" "$java" -Xms"$heap" -Xmx"$heap" -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
    -Djdk.nio.maxCachedBufferSize=262144 -Djava.awt.headless=true \
    -Dkafka.logs.dir="$nd/logs" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$nd/server.properties" \
    >>"$nd/logs/stdout.log" 2>&1 </dev/null 8>&- 9>&- &
  pid=$!
  echo "$pid" >"$(pid_file "$id")"
}

fail_node() {
  local id=$1
  say "node $id: last lines of $(node_dir "$id")/logs/server.log:"
  tail -n 25 "$(node_dir "$id")/logs/server.log" >&2 2>/dev/null || true
  if [ -s "$(node_dir "$id")/logs/stdout.log" ]; then
    say "node $id: last lines of $(node_dir "$id")/logs/stdout.log:"
    tail -n 10 "$(node_dir "$id")/logs/stdout.log" >&2
  fi
  die "$2 (the cluster is left as it is: scripts/kafka.sh down --dir $dir stops it)"
}

# Waits until node $1 accepts connections on its broker port.
wait_listening() {
  local id=$1 deadline=$2
  while ! port_open "$(broker_port "$id")"; do
    node_pid "$id" >/dev/null || fail_node "$id" "node $id exited while starting"
    [ "$SECONDS" -lt "$deadline" ] || fail_node "$id" "node $id did not listen on 127.0.0.1:$(broker_port "$id") within ${timeout_s}s"
    sleep 0.5
  done
}

# Prints the ids of the brokers the cluster's metadata lists (unfenced, reachable).
registered_brokers() {
  kafka_tool org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$(bootstrap_servers)" \
    2>/dev/null | sed -n 's/^[^ ]* (id: \([0-9]*\) .*/\1/p' | sort -n | tr '\n' ' '
}

# Waits until the metadata lists the brokers $1 (space-separated ids).
wait_registered() {
  local want=$1 deadline=$2 have="" id
  while :; do
    have=$(registered_brokers || true)
    local missing=""
    for id in $want; do [[ " $have " == *" $id "* ]] || missing+=" $id"; done
    [ -z "$missing" ] && return 0
    for id in $missing; do node_pid "$id" >/dev/null || fail_node "$id" "node $id exited while starting"; done
    [ "$SECONDS" -lt "$deadline" ] ||
      fail_node "$(echo "$missing" | awk '{ print $1 }')" "broker(s)$missing not in the cluster's metadata within ${timeout_s}s (registered: ${have:-none})"
    sleep 1
  done
}

# Prints "topic partition" of each partition that lists $1 among its replicas but not in its ISR.
out_of_isr() {
  local out
  out=$(kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(bootstrap_servers)" --describe 2>&1) ||
    { echo "describe-failed"; return 0; }
  awk -v id="$1" '
    /Partition:/ {
      t = ""; p = ""; r = ""; i = ""
      for (f = 1; f <= NF; f++) {
        if ($f == "Topic:") t = $(f + 1)
        if ($f == "Partition:") p = $(f + 1)
        if ($f == "Replicas:") r = $(f + 1)
        if ($f == "Isr:") i = $(f + 1)
      }
      if (("," r ",") ~ ("," id ",") && ("," i ",") !~ ("," id ",")) print t, p
    }' <<<"$out"
}

summary() {
  local i
  say "Apache Kafka $version, cluster $CLUSTER_ID, $BROKERS node(s) (broker+controller), data and logs in $dir"
  for i in $(seq 1 "$BROKERS"); do
    say "  node $i: pid $(node_pid "$i" || echo -), broker 127.0.0.1:$(broker_port "$i")${SASL_PORT_1:+ (SASL 127.0.0.1:$(sasl_port "$i"))}, controller 127.0.0.1:$(controller_port "$i"), log $(node_dir "$i")/logs/server.log"
  done
}

lock_dir() {
  mkdir -p "$dir"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$dir/.lock"
    flock -w "$timeout_s" 9 || die "another scripts/kafka.sh holds $dir/.lock"
  fi
}

need_cluster() {
  load_cluster || die "no cluster in $dir (scripts/kafka.sh up --dir $dir creates one)"
}

need_id() {
  if ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ] || [ "$1" -gt "$BROKERS" ]; then
    die "no node '$1' in $dir: node ids are 1..$BROKERS"
  fi
}

# --- Commands ------------------------------------------------------------------------------
cmd_up() {
  local want=$1 i running=0 deadline
  if load_cluster; then
    for i in $(seq 1 "$BROKERS"); do node_pid "$i" >/dev/null && running=$((running + 1)); done
    if [ "$running" -eq "$BROKERS" ]; then
      [ -z "$want" ] || [ "$want" -eq "$BROKERS" ] ||
        die "$dir runs a $BROKERS-node cluster, not $want: scripts/kafka.sh down --dir $dir first, or another --dir"
      print_bootstrap
      return 0
    fi
  fi
  need_java
  need_libs
  write_tools_log_config
  lock_dir
  deadline=$((SECONDS + timeout_s))
  if load_cluster; then
    [ -z "$want" ] || [ "$want" -eq "$BROKERS" ] ||
      die "$dir holds a $BROKERS-node cluster, not $want: scripts/kafka.sh down --dir $dir first, or another --dir"
    [ "$KAFKA_VERSION" = "$version" ] ||
      die "$dir was formatted by Kafka $KAFKA_VERSION, the pinned version is $version: scripts/kafka.sh down --dir $dir first"
    write_node_log_config
    for i in $(seq 1 "$BROKERS"); do
      node_pid "$i" >/dev/null && continue
      say "starting node $i (existing data)"
      start_node "$i"
    done
  else
    BROKERS=${want:-3}
    local ports
    read -r -a ports <<<"$(pick_ports $((3 * BROKERS)))"
    CLUSTER_ID=$(kafka_uuid)
    for i in $(seq 1 "$BROKERS"); do
      printf -v "BROKER_PORT_$i" '%s' "${ports[$((3 * i - 3))]}"
      printf -v "CONTROLLER_PORT_$i" '%s' "${ports[$((3 * i - 2))]}"
      printf -v "SASL_PORT_$i" '%s' "${ports[$((3 * i - 1))]}"
      printf -v "DIRECTORY_ID_$i" '%s' "$(kafka_uuid)"
    done
    for i in $(seq 1 "$BROKERS"); do write_node_config "$i"; done
    write_node_log_config
    say "formatting $BROKERS node(s) in $dir (cluster $CLUSTER_ID)"
    format_storage
    save_cluster
    for i in $(seq 1 "$BROKERS"); do start_node "$i"; done
  fi
  say "waiting for $BROKERS broker(s) (up to ${timeout_s}s)"
  for i in $(seq 1 "$BROKERS"); do wait_listening "$i" "$deadline"; done
  wait_registered "$(seq 1 "$BROKERS" | tr '\n' ' ')" "$deadline"
  summary
  print_bootstrap
}

cmd_start() {
  local id=$1 deadline behind
  need_cluster
  need_id "$id"
  need_java
  need_libs
  write_tools_log_config
  lock_dir
  deadline=$((SECONDS + timeout_s))
  if node_pid "$id" >/dev/null; then
    say "node $id is already running (pid $(node_pid "$id"))"
  else
    say "starting node $id"
    start_node "$id"
  fi
  wait_listening "$id" "$deadline"
  wait_registered "$id" "$deadline"
  while :; do
    behind=$(out_of_isr "$id")
    [ -z "$behind" ] && break
    node_pid "$id" >/dev/null || fail_node "$id" "node $id exited while catching up"
    [ "$SECONDS" -lt "$deadline" ] ||
      fail_node "$id" "node $id not back in the ISR within ${timeout_s}s: $(echo "$behind" | tr '\n' ';')"
    sleep 1
  done
  say "node $id is up (pid $(node_pid "$id")) and in the ISR of all its partitions"
}

cmd_kill() {
  local id=$1 pid
  need_cluster
  need_id "$id"
  pid=$(node_pid "$id") || die "node $id is not running"
  kill -KILL "$pid"
  while [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do sleep 0.1; done
  rm -f "$(pid_file "$id")"
  say "killed node $id (pid $pid)"
}

cmd_pid() {
  need_cluster
  need_id "$1"
  node_pid "$1" || { say "node $1 is not running"; return 1; }
}

cmd_status() {
  local i pid all=0
  need_cluster
  for i in $(seq 1 "$BROKERS"); do
    if pid=$(node_pid "$i"); then
      echo "node $i: running, pid $pid, broker 127.0.0.1:$(broker_port "$i"), controller 127.0.0.1:$(controller_port "$i")"
    else
      echo "node $i: stopped, broker 127.0.0.1:$(broker_port "$i"), controller 127.0.0.1:$(controller_port "$i")"
      all=1
    fi
  done
  print_bootstrap
  return "$all"
}

cmd_down() {
  local keep=$1 i pid pids=() left grace_s=10
  # Data that is about to be removed gains nothing from a long wait; data that is kept
  # gets time for a clean shutdown (no log recovery at the next start).
  [ "$keep" = 0 ] || grace_s=30
  if ! load_cluster; then
    say "no cluster in $dir: nothing to stop"
    return 0
  fi
  lock_dir
  for i in $(seq 1 "$BROKERS"); do
    if pid=$(node_pid "$i"); then
      pids+=("$pid")
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping ${#pids[@]} node(s): SIGTERM, SIGKILL after ${grace_s}s"
    local deadline=$((SECONDS + grace_s))
    while :; do
      left=()
      for pid in "${pids[@]}"; do
        [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && left+=("$pid")
      done
      [ ${#left[@]} -eq 0 ] && break
      if [ "$SECONDS" -ge "$deadline" ]; then
        say "SIGKILL to ${left[*]}"
        kill -KILL "${left[@]}" 2>/dev/null || true
        sleep 0.5
        break
      fi
      sleep 0.5
    done
  fi
  for i in $(seq 1 "$BROKERS"); do rm -f "$(pid_file "$i")"; done
  if [ "$keep" = 1 ]; then
    say "stopped; data kept in $dir (scripts/kafka.sh up --dir $dir starts it again)"
  else
    for i in $(seq 1 "$BROKERS"); do rm -rf "$(node_dir "$i")"; done
    rm -f "$(env_file)" "$dir/log4j2.properties" "$dir/.lock"
    rmdir "$dir" 2>/dev/null || true
    say "stopped; removed the cluster's data and logs in $dir"
  fi
}

# Kafka's script names (bin/kafka-*.sh of the distribution) for the classes they run, so
# that `tool kafka-topics.sh ...` works as in Kafka's own documentation.
tool_class() {
  case "$1" in
    kafka-topics.sh) echo org.apache.kafka.tools.TopicCommand ;;
    kafka-transactions.sh) echo org.apache.kafka.tools.TransactionsCommand ;;
    kafka-configs.sh) echo kafka.admin.ConfigCommand ;;
    kafka-consumer-groups.sh) echo org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    kafka-console-consumer.sh) echo org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    kafka-console-producer.sh) echo org.apache.kafka.tools.ConsoleProducer ;;
    kafka-metadata-quorum.sh) echo org.apache.kafka.tools.MetadataQuorumCommand ;;
    kafka-broker-api-versions.sh) echo org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    kafka-storage.sh) echo kafka.tools.StorageTool ;;
    *.sh) die "no class known for $1: pass the class name (e.g. org.apache.kafka.tools.TopicCommand)" ;;
    *) echo "$1" ;;
  esac
}

# --- Arguments -----------------------------------------------------------------------------
command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  -h | --help | help) print_usage "${BASH_SOURCE[0]}"; exit 0 ;;
  "") print_usage "${BASH_SOURCE[0]}" >&2; exit 2 ;;
  tool)
    [ $# -gt 0 ] || die "tool needs a class name, e.g. org.apache.kafka.tools.TopicCommand"
    need_java
    need_libs
    write_tools_log_config
    class=$(tool_class "$1")
    shift
    kafka_tool "$class" "$@"
    exit
    ;;
esac

brokers="" id="" keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) [ $# -ge 2 ] || die "--dir needs a value"; dir=$2; shift 2 ;;
    --dir=*) dir=${1#--dir=}; shift ;;
    --brokers) [ $# -ge 2 ] || die "--brokers needs a value"; brokers=$2; shift 2 ;;
    --brokers=*) brokers=${1#--brokers=}; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) print_usage "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) say "unknown option: $1 (see --help)"; exit 2 ;;
    *) [ -z "$id" ] || { say "unexpected argument: $1 (see --help)"; exit 2; }; id=$1; shift ;;
  esac
done
if [ -n "$brokers" ]; then
  [ "$command" = up ] || die "--brokers is an option of up"
  if ! [[ "$brokers" =~ ^[0-9]+$ ]] || [ "$brokers" -lt 1 ] || [ "$brokers" -gt 9 ]; then
    die "--brokers must be 1..9, not '$brokers'"
  fi
fi
[ "$keep" = 0 ] || [ "$command" = down ] || die "--keep is an option of down"
mkdir -p "$(dirname "$dir")"
dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")

case "$command" in
  up) [ -z "$id" ] || die "up takes no node id"; cmd_up "$brokers" ;;
  down) [ -z "$id" ] || die "down takes no node id"; cmd_down "$keep" ;;
  status) cmd_status ;;
  kill | start | pid)
    [ -n "$id" ] || die "$command needs a node id (1..N)"
    "cmd_$command" "$id"
    ;;
  *) say "unknown command: $command (see --help)"; exit 2 ;;
esac
