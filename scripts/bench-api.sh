#!/usr/bin/env bash
# Load test of `POST /v1/frames` on loopback with wrk (Debian's): `vigil serve` with a
# bearer token and no rate limit, uploading samples/dog.jpg as fast as C connections allow
# (closed loop) for SECONDS each. Every 202 means the brokers acknowledged the frame.
# Brokers, side by side in one run: the in-memory one (`vigil broker`, 3 mock brokers) and,
# with VIGIL_BENCH_BOOTSTRAP=HOST:PORT, a real cluster (e.g. scripts/kafka.sh up).
# No detector or sink runs: this measures the API and the producer alone.
#
#   scripts/bench-api.sh [SECONDS] [CONNECTIONS...]     (default 15 s; 1 4 16 64)
#
# Prints one JSON line per measurement (docs/benchmarks.md quotes them):
#   {"broker", "connections", "seconds", "uploads_per_s", "p50_ms", "p90_ms", "p99_ms", "errors"}
# Latencies are wrk's, per request under closed-loop load. VIGIL_BIN picks the binary
# (default: the release build, else the dev build).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
shift || true
connections=("$@")
[[ ${#connections[@]} -gt 0 ]] || connections=(1 4 16 64)
target=${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}
vigil=${VIGIL_BIN:-$target/release/vigil}
[[ -x $vigil ]] || vigil=$target/debug/vigil
[[ -x $vigil ]] || { echo "no vigil binary under $target: cargo build -p vigil (or set VIGIL_BIN)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "no wrk: apt-get install wrk" >&2; exit 1; }
echo "bench-api: $vigil, ${seconds} s per measurement, connections ${connections[*]}" >&2

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
token=bench-token-$RANDOM$RANDOM$RANDOM
port=$((20000 + RANDOM % 20000))

# serve BOOTSTRAP: starts `vigil serve` on $port and waits until it is ready.
serve() {
  VIGIL__API__TOKENS=$token VIGIL__API__RATE_LIMIT_PER_S=0 VIGIL__API__MAX_IN_FLIGHT=4096 RUST_LOG=warn \
    "$vigil" serve --bootstrap "$1" --addr "127.0.0.1:$port" --database "sqlite://$work/results.sqlite" \
    2>"$work/serve.log" &
  pids+=($!)
  for _ in $(seq 1 60); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 200 ]] && return 0
    sleep 1
  done
  echo "vigil serve never became ready:" >&2; cat "$work/serve.log" >&2; return 1
}

# ms TEXT: wrk's latency ("812.00us", "3.41ms", "1.20s") in milliseconds.
ms() { awk -v t="$1" 'BEGIN { v = t + 0; if (t ~ /us$/) v /= 1000; else if (t ~ /ms$/) v *= 1; else if (t ~ /s$/) v *= 1000; printf "%.2f", v }'; }

# measure BROKER: one wrk run per connection count against the running server.
measure() {
  local c out
  # Warm-up: connections, producer metadata, the first batches.
  wrk -t1 -c4 -d3s -s benches/api/upload.lua "http://127.0.0.1:$port" -- samples/dog.jpg "$token" >/dev/null
  for c in "${connections[@]}"; do
    out=$(wrk -t"$((c < 2 ? 1 : 2))" -c"$c" -d"${seconds}s" --latency -s benches/api/upload.lua \
      "http://127.0.0.1:$port" -- samples/dog.jpg "$token")
    printf '{"broker":"%s","connections":%d,"seconds":%d,"uploads_per_s":%s,"p50_ms":%s,"p90_ms":%s,"p99_ms":%s,"errors":%d}\n' \
      "$1" "$c" "$seconds" \
      "$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")" \
      "$(ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")" \
      "$(ms "$(awk '$1 == "90%" { print $2 }' <<<"$out")")" \
      "$(ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")" \
      "$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")"
  done
}

"$vigil" broker >"$work/broker.out" 2>"$work/broker.log" &
pids+=($!)
for _ in $(seq 1 30); do grep -q '^bootstrap: ' "$work/broker.out" 2>/dev/null && break; sleep 0.5; done
boot=$(awk '/^bootstrap: / { print $2; exit }' "$work/broker.out")
[[ -n $boot ]] || { echo "vigil broker printed no bootstrap line:" >&2; cat "$work/broker.log" >&2; exit 1; }
serve "$boot"
measure embedded
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

if [[ -n ${VIGIL_BENCH_BOOTSTRAP:-} ]]; then
  serve "$VIGIL_BENCH_BOOTSTRAP"
  measure kafka
fi
