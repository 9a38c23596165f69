#!/usr/bin/env bash
# HTTP load test of the health function (release build, standalone mode, SQLite) with wrk.
# Loopback only, bounded in time. Request logs are written (LOG_LEVEL=info, to a file) as in production.
# Usage: scripts/load-test.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
connections=${2:-32}
port=${LOAD_PORT:-9180}
command -v wrk >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq wrk >/dev/null; }
cargo build --release -p health --bin health
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)

# Cold start: process start to the first 200 from /health/ready on a fresh SQLite file
# (configuration, clients, migrations, first query), five times.
for run in 1 2 3 4 5; do
  rm -f "$work"/cold.db*
  start=$(date +%s%N)
  env -i PATH="$PATH" PORT="$port" DATABASE_URL="sqlite://$work/cold.db" LOG_LEVEL=warn \
    "$target/release/health" >/dev/null 2>&1 &
  cold_pid=$!
  until curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1; do sleep 0.002; done
  echo "cold start $run: $(( ($(date +%s%N) - start) / 1000000 )) ms to the first ready response"
  kill "$cold_pid"; wait "$cold_pid" 2>/dev/null || true
done

env -i PATH="$PATH" PORT="$port" DATABASE_URL="sqlite://$work/app.db" LOG_LEVEL="${LOAD_LOG_LEVEL:-info}" \
  "$target/release/health" >"$work/health.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health/live" >/dev/null && break; sleep 0.1; done

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
echo "RSS after start: $(rss_kb) KiB"
for path in /health /health/ready /health/metrics; do
  echo "== GET $path (wrk -t1 -c$connections -d${duration}s --latency; server and wrk share 2 cores)"
  wrk -t1 -c"$connections" -d"${duration}s" --latency "http://127.0.0.1:$port$path" \
    | grep -E "Requests/sec|Latency|50%|90%|99%|requests in|Non-2xx"
done
echo "RSS after load: $(rss_kb) KiB"
