#!/usr/bin/env bash
# The gateway's CPU instructions per proxied request, counted by valgrind's callgrind:
# repeatable on a busy machine, where CPU time per request varies by a quarter between
# runs of one binary. The same setup as scripts/gateway-bench.sh (standalone, SQLite,
# retrieval off, unique prompts, request logs on, auth, rate limit and usage on as shipped,
# the project's fake-openai on loopback as the upstream).
#
# Counts only the measured requests: the gateway starts with instrumentation off, gets
# BENCH_WARMUP requests, then instrumentation is switched on for exactly BENCH_REQUESTS.
# Every thread of the gateway is counted (the usage writer and the cache's housekeeping too).
# Instructions are not time (a cache miss or a syscall's wait costs more than its count),
# but a change that removes work shows up here without the noise.
#
# Usage: scripts/bench/gateway-instructions.sh [connections] [chat binary]...
#   connections   concurrent keep-alive connections (default 8; 1 is what Lambda pays)
#   chat binary   one or more builds to count side by side (default: the release build)
# BENCH_REQUESTS (2000), BENCH_WARMUP (300). BENCH_STREAM=1 counts streamed answers instead
# (temperature 0.7, as scripts/bench/streams.py sends them; the fake upstream's 14 chunks
# each, no delay between them). BENCH_ANNOTATE=1 prints each build's
# top functions, inclusive (needs a build with symbols, e.g.
# CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only).
# BENCH_KEEP=<file> keeps the last binary's callgrind output there, for callgrind_annotate
# (--inclusive=yes, --tree=caller). Extra gateway settings go in the environment as
# GATEWAY_ENV="NAME=value ...".
set -euo pipefail
cd "$(dirname "$0")/../.."
connections=${1:-8}
shift || true
requests=${BENCH_REQUESTS:-2000}
warmup=${BENCH_WARMUP:-300}
upstream_port=${BENCH_UPSTREAM_PORT:-9391}
gateway_port=${BENCH_GATEWAY_PORT:-9392}
bin=${CARGO_TARGET_DIR:-target}/release
command -v valgrind >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq valgrind >/dev/null; }
# Built as scripts/gateway-bench.sh builds them (one feature set: nothing rebuilds).
cargo build --release -p chat --bin chat -p fake-openai --bin fake-openai
[[ $# -gt 0 ]] || set -- "$bin/chat"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [[ -n ${BENCH_KEEP:-} ]] && cp "$work"/callgrind.out "$BENCH_KEEP"; rm -rf "$work"; }
trap cleanup EXIT
# shellcheck source=scripts/bench/common.sh
source scripts/bench/common.sh

start_fake
url=http://127.0.0.1:$gateway_port

what=request
[[ ${BENCH_STREAM:-0} == 1 ]] && what="streamed answer"
echo "== instructions per $what: $requests requests over $connections connection(s), after $warmup"
for program in "$@"; do
  rm -f "$work"/gw.db* "$work"/callgrind.out*
  # shellcheck disable=SC2086 # GATEWAY_ENV is a list of NAME=value words
  env -i PATH="$PATH" PORT="$gateway_port" DATABASE_URL="sqlite://$work/gw.db" LOG_LEVEL=info \
    LLM_BASE_URL="http://127.0.0.1:$upstream_port/v1" LLM_MODEL=gpt-4o-mini RETRIEVAL_ENABLED=false \
    API_KEYS="bench:$key_hash" RATE_LIMIT_PER_MINUTE=1000000 ${GATEWAY_ENV:-} \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
    "$program" >"$work/gateway.log" 2>&1 &
  gateway_pid=$!
  pids+=("$gateway_pid")
  wait_for "$url/health/live"
  python3 scripts/bench/fixed-requests.py "$url" "$warmup" "$connections" "$key" >/dev/null
  callgrind_control -i on "$gateway_pid" >/dev/null 2>&1
  python3 scripts/bench/fixed-requests.py "$url" "$requests" "$connections" "$key" >/dev/null
  callgrind_control -i off "$gateway_pid" >/dev/null 2>&1
  kill -INT "$gateway_pid"
  wait "$gateway_pid" 2>/dev/null || true
  total=$(awk '/^(summary|totals):/ {print $2}' "$work"/callgrind.out* | sort -n | tail -1)
  python3 -c "import sys; t, n = int(sys.argv[1]), int(sys.argv[2]); print(f'{sys.argv[3]}: {t / n:,.0f} instructions per {sys.argv[4]} ({t:,} for {n})')" \
    "$total" "$requests" "$program" "$what"
  if [[ ${BENCH_ANNOTATE:-0} == 1 ]]; then
    callgrind_annotate --inclusive=yes "$work/callgrind.out" 2>/dev/null | sed -n '1,60p' | cut -c1-200
  fi
done
