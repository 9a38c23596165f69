#!/usr/bin/env bash
# CPU and context switches per request of chat gateway builds, alternating, at a given
# number of connections (the "A runtime per core" table in docs/benchmarks.md).
# Usage: scripts/bench/context-switches.sh CONNECTIONS SECONDS ROUNDS "label:binary:ENV=value ..." ...
#   e.g. scripts/bench/context-switches.sh 8 8 2 "before:/tmp/chat-old:" "one:/tmp/chat:TOKIO_WORKER_THREADS=1"
# Switches are summed over the process's threads (/proc/<pid>/task/*/status), CPU is
# user + system from /proc/<pid>/stat; the fake upstream runs on 9391, the gateway on 9392.
set -u
cd "$(dirname "$0")/../.."
conns=$1 secs=$2 rounds=$3; shift 3
work=$(mktemp -d); upstream_port=9391; bin=${CARGO_TARGET_DIR:-target}/release; pids=()
cargo build -q --release -p fake-openai --bin fake-openai
source scripts/bench/common.sh
start_fake
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$work"' EXIT
switches() {
  local sum=0 f
  for f in /proc/"$1"/task/*/status; do
    sum=$((sum + $(awk '/^(non)?voluntary_ctxt_switches/ {t += $2} END {print t}' "$f")))
  done
  echo "$sum"
}
for _ in $(seq 1 "$rounds"); do
  for spec in "$@"; do
    IFS=: read -r label program envs <<<"$spec"
    rm -f "$work"/gw.db*
    # shellcheck disable=SC2086 # $envs is a list of NAME=value words
    env -i PATH="$PATH" PORT=9392 DATABASE_URL="sqlite://$work/gw.db" LOG_LEVEL=info \
      LLM_BASE_URL="http://127.0.0.1:9391/v1" LLM_MODEL=gpt-4o-mini RETRIEVAL_ENABLED=false \
      API_KEYS="bench:$key_hash" RATE_LIMIT_PER_MINUTE=1000000 $envs "$program" >"$work/gw.log" 2>&1 &
    gateway=$!
    wait_for http://127.0.0.1:9392/health/live
    BENCH_KEY="$key" wrk -t1 -c"$conns" -d2s -s scripts/bench/unique-chat.lua http://127.0.0.1:9392 >/dev/null
    ticks0=$(awk '{print $14 + $15}' "/proc/$gateway/stat"); switches0=$(switches "$gateway")
    line=$(BENCH_KEY="$key" wrk -t1 -c"$conns" -d"${secs}s" -s scripts/bench/unique-chat.lua http://127.0.0.1:9392 | tail -1)
    ticks1=$(awk '{print $14 + $15}' "/proc/$gateway/stat"); switches1=$(switches "$gateway")
    python3 -c "
import json, sys
r = json.loads(sys.argv[1]); n = max(r['requests'], 1); hz = int(sys.argv[5])
print(f\"{sys.argv[2]:14s} cpu {int(sys.argv[3]) / hz * 1e6 / n:6.1f} us/request  switches {int(sys.argv[4]) / n:5.2f}/request  {r['rps']:8.0f} req/s\")" \
      "$line" "$label" $((ticks1 - ticks0)) $((switches1 - switches0)) "$(getconf CLK_TCK)"
    kill "$gateway"; wait "$gateway" 2>/dev/null
  done
done
