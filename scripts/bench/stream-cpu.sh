#!/usr/bin/env bash
# The gateway's CPU time per streamed answer, natively: what callgrind's instruction count
# (scripts/bench/gateway-instructions.sh with BENCH_STREAM=1) leaves out, the kernel's
# share and every wake-up. Each build in turn, `rounds` times: fake-openai on loopback as
# the upstream (its 14 chunks per answer), the gateway started as scripts/gateway-bench.sh
# starts it (standalone, SQLite, retrieval off, request logs on, auth, rate limit and usage
# on), 300 streams to warm up, then `streams` streams over 8 connections at temperature
# 0.7 (never cached), each read to its `[DONE]` (scripts/bench/fixed-requests.py). The CPU
# is the gateway's user and system time from /proc/<pid>/stat (10 ms ticks).
#
# Usage: scripts/bench/stream-cpu.sh [rounds] [streams] [chat binary]...
#   rounds   how many times each build is measured, alternating (default 3)
#   streams  streamed answers measured per round (default 3000)
#   chat binary  builds to compare (default: the release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
streams=${2:-3000}
shift 2 || shift $#
upstream_port=${BENCH_UPSTREAM_PORT:-9391}
gateway_port=${BENCH_GATEWAY_PORT:-9392}
bin=${CARGO_TARGET_DIR:-target}/release
cargo build --release -p chat --bin chat -p fake-openai --bin fake-openai
[[ $# -gt 0 ]] || set -- "$bin/chat"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# shellcheck source=scripts/bench/common.sh
source scripts/bench/common.sh
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_fake
url=http://127.0.0.1:$gateway_port
hz=$(getconf CLK_TCK)
echo "== gateway CPU per streamed answer: $streams streams over 8 connections, $rounds round(s)"
for round in $(seq 1 "$rounds"); do
  for program in "$@"; do
    rm -f "$work"/gw.db*
    env -i PATH="$PATH" PORT="$gateway_port" DATABASE_URL="sqlite://$work/gw.db" LOG_LEVEL=info \
      LLM_BASE_URL="http://127.0.0.1:$upstream_port/v1" LLM_MODEL=gpt-4o-mini RETRIEVAL_ENABLED=false \
      API_KEYS="bench:$key_hash" RATE_LIMIT_PER_MINUTE=1000000 ${GATEWAY_ENV:-} \
      "$program" >"$work/gateway.log" 2>&1 &
    gateway_pid=$!
    pids+=("$gateway_pid")
    wait_for "$url/health/live"
    BENCH_STREAM=1 python3 scripts/bench/fixed-requests.py "$url" 300 8 "$key" >/dev/null
    before=$(ticks "$gateway_pid")
    started=$(date +%s.%N)
    # It sends a multiple of the connections and prints how many it sent.
    sent=$(BENCH_STREAM=1 python3 scripts/bench/fixed-requests.py "$url" "$streams" 8 "$key" | tail -1)
    ended=$(date +%s.%N)
    after=$(ticks "$gateway_pid")
    kill "$gateway_pid"
    wait "$gateway_pid" 2>/dev/null || true
    python3 -c "import sys; b, a, n, hz, s, e = map(float, sys.argv[1:7]); print(f'{sys.argv[7]} (round {sys.argv[8]}): {(a - b) / hz / n * 1e6:,.0f} us CPU per streamed answer, {n / (e - s):,.0f} streams/s')" \
      "$before" "$after" "$sent" "$hz" "$started" "$ended" "$program" "$round"
  done
done
