#!/usr/bin/env bash
# The chat gateway as a proxy (issues 16 and 17): the project's fake-openai as the
# upstream on loopback, called directly and through the gateway, in one run. Release
# builds, standalone mode, SQLite, retrieval off, every prompt unique, request logs on
# (LOG_LEVEL=info, to a file), auth, rate limit and usage accounting on as shipped.
# Each gateway configuration runs at 8 connections (throughput, CPU per request) and at
# 1 (added latency):
#   off     traces off (the default), governance on as shipped
#   traces  every span exported over OTLP/HTTP to a local receiver (scripts/bench/otlp-sink.py)
#   one-thread  TOKIO_WORKER_THREADS=1: a current-thread runtime, as under Lambda (one
#           invocation at a time); no request hops between worker threads
#   work-stealing  TOKIO_WORKER_THREADS=<cores>: tokio's multi-thread runtime, the default
#           before the runtime per core (each connection on one core's runtime)
#   governance-off  the per-key rate limit off (RATE_LIMIT_ENABLED=false), no usage rows
#           (USAGE_RECORDING=false), no request logs (LOG_LEVEL=warn): the public
#           benchmark's plain passthrough, except that the API key is still checked (the
#           service has no switch to turn authentication off)
#   built without traces   (BENCH_WITHOUT_TRACES=1) the binary built with
#           --no-default-features, to see what the trace-only spans cost when off
#   previous build         (BENCH_BASELINE=<a chat binary>) another build, e.g. the last
#           commit's, run the same way in the same run, for a before/after ratio
# BENCH_ROUNDS=n repeats the gateway configurations, alternating, to show the noise, and
# prints each configuration's median over the rounds. BENCH_COMPARE_ONLY=1 runs only those
# configurations (no frontier, soak, streams or cold start): a before/after in minutes.
# The throughput frontier: direct, as shipped, on one thread and with governance off, at 1 to 64
# connections (BENCH_FRONTIER_SECS each, 4), and the most req/s with p99 under 1, 5 and 10 ms.
# Then memory: each binary at its maximum rate (32 connections) for BENCH_SOAK_SECS (120),
# resident memory sampled every 10 s, and the database's bytes per request.
# Usage: scripts/gateway-bench.sh [seconds per run]   (wrk on one thread; two cores shared)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
upstream_port=${BENCH_UPSTREAM_PORT:-9391}
gateway_port=${BENCH_GATEWAY_PORT:-9392}
sink_port=${BENCH_SINK_PORT:-9393}
command -v wrk >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq wrk >/dev/null; }
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
configs=(off traces one-thread work-stealing governance-off)
if [[ ${BENCH_WITHOUT_TRACES:-0} == 1 ]]; then
  cargo build --release -p chat --bin chat --no-default-features
  cp "$bin/chat" "$work/chat-without-traces"
  configs=(without-traces "${configs[@]}")
fi
if [[ -n ${BENCH_BASELINE:-} ]]; then
  cp "$BENCH_BASELINE" "$work/chat-previous"
  configs=(previous "${configs[@]}")
fi
cargo build --release -p chat --bin chat -p fake-openai --bin fake-openai
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { for _ in $(seq 1 200); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "not up: $1" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)

"$bin/fake-openai" --port "$upstream_port" >"$work/fake.log" 2>&1 &
pids+=($!)
python3 scripts/bench/otlp-sink.py "$sink_port" &
pids+=($!)
wait_for "http://127.0.0.1:$upstream_port/_fake/calls"
wait_for "http://127.0.0.1:$sink_port/"

key=bench-key-0123456789
key_hash=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)

# run <url> <connections> <pid whose CPU is counted> [key] -> one JSON line with cpu_us
run() {
  local url=$1 connections=$2 pid=$3 bench_key=${4:-}
  local before after
  before=$(cpu_ticks "$pid")
  local line
  line=$(BENCH_KEY="$bench_key" wrk -t1 -c"$connections" -d"${seconds}s" -s scripts/bench/unique-chat.lua "$url" | tail -1)
  after=$(cpu_ticks "$pid")
  python3 -c "
import json, sys
r = json.loads(sys.argv[1]); ticks = int(sys.argv[2]); hz = int(sys.argv[3])
r['cpu_us'] = ticks / hz * 1e6 / max(r['requests'], 1)
print(json.dumps(r))" "$line" "$((after - before))" "$ticks_per_second"
}

start_gateway() {
  local program=$1; shift
  rm -f "$work"/gw.db*
  env -i PATH="$PATH" PORT="$gateway_port" DATABASE_URL="sqlite://$work/gw.db" LOG_LEVEL=info \
    LLM_BASE_URL="http://127.0.0.1:$upstream_port/v1" LLM_MODEL=gpt-4o-mini RETRIEVAL_ENABLED=false \
    API_KEYS="bench:$key_hash" RATE_LIMIT_PER_MINUTE=1000000 "$@" \
    "$program" >"$work/gateway.log" 2>&1 &
  gateway_pid=$!
  pids+=("$gateway_pid")
  wait_for "http://127.0.0.1:$gateway_port/health/live"
  # Warm up: connections, the first SQLite pages, the usage writer.
  BENCH_KEY="$key" wrk -t1 -c8 -d2s -s scripts/bench/unique-chat.lua "http://127.0.0.1:$gateway_port" >/dev/null
}

stop_gateway() { kill "$gateway_pid"; wait "$gateway_pid" 2>/dev/null || true; }

fake_pid=${pids[0]}
upstream=http://127.0.0.1:$upstream_port
wrk -t1 -c8 -d2s -s scripts/bench/unique-chat.lua "$upstream" >/dev/null
echo "== direct (the upstream alone, ${seconds}s per run)"
direct8=$(run "$upstream" 8 "$fake_pid"); echo "8 connections: $direct8"
direct1=$(run "$upstream" 1 "$fake_pid"); echo "1 connection:  $direct1"

governance_off=(RATE_LIMIT_ENABLED=false USAGE_RECORDING=false LOG_LEVEL=warn)
results=()
for round in $(seq 1 "${BENCH_ROUNDS:-1}"); do
for config in "${configs[@]}"; do
  extra=()
  program=$bin/chat
  [[ $config == traces ]] && extra=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port")
  [[ $config == governance-off ]] && extra=("${governance_off[@]}")
  [[ $config == one-thread ]] && extra=(TOKIO_WORKER_THREADS=1)
  [[ $config == work-stealing ]] && extra=(TOKIO_WORKER_THREADS="$(nproc)")
  [[ $config == without-traces ]] && program=$work/chat-without-traces
  [[ $config == previous ]] && program=$work/chat-previous
  start_gateway "$program" "${extra[@]}"
  echo "== gateway, $config"
  g8=$(run "http://127.0.0.1:$gateway_port" 8 "$gateway_pid" "$key"); echo "8 connections: $g8"
  g1=$(run "http://127.0.0.1:$gateway_port" 1 "$gateway_pid" "$key"); echo "1 connection:  $g1"
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$gateway_pid/status")
  results+=("$config|$g8|$g1|$rss")
  stop_gateway
done
done
echo "== OTLP receiver: $(curl -s "http://127.0.0.1:$sink_port/")"
compare_only=${BENCH_COMPARE_ONLY:-0}
frontiers=() soaks=()
if [[ $compare_only != 1 ]]; then

# frontier <name> <url> [key] -> one line: name|connections,rps,p99,errors;...
frontier_seconds=${BENCH_FRONTIER_SECS:-4}
frontier() {
  local name=$1 url=$2 bench_key=${3:-} points=() line
  for connections in 1 2 4 8 16 32 64; do
    line=$(BENCH_KEY="$bench_key" wrk -t1 -c"$connections" -d"${frontier_seconds}s" \
      -s scripts/bench/unique-chat.lua "$url" | tail -1)
    points+=("$connections,$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(f\"{r['rps']:.0f},{r['p99_ms']:.3f},{r['errors']}\")" "$line")")
  done
  echo "$name|$(IFS=';'; echo "${points[*]}")"
}
frontiers+=("$(frontier direct "$upstream")")
echo "== frontier: ${frontiers[-1]}"
for config in off one-thread work-stealing governance-off; do
  extra=()
  [[ $config == governance-off ]] && extra=("${governance_off[@]}")
  [[ $config == one-thread ]] && extra=(TOKIO_WORKER_THREADS=1)
  [[ $config == work-stealing ]] && extra=(TOKIO_WORKER_THREADS="$(nproc)")
  start_gateway "$bin/chat" "${extra[@]}"
  frontiers+=("$(frontier "gateway, $config" "http://127.0.0.1:$gateway_port" "$key")")
  echo "== frontier: ${frontiers[-1]}"
  stop_gateway
done

# Memory at the maximum rate: resident set every 10 s, and what the database grew by.
soak_seconds=${BENCH_SOAK_SECS:-120}
soak_configs=(off)
[[ -n ${BENCH_BASELINE:-} ]] && soak_configs=(previous off)
for config in "${soak_configs[@]}"; do
  program=$bin/chat
  [[ $config == previous ]] && program=$work/chat-previous
  start_gateway "$program"
  idle=$(awk '/VmRSS/ {print $2}' "/proc/$gateway_pid/status")
  BENCH_KEY="$key" wrk -t1 -c32 -d"${soak_seconds}s" -s scripts/bench/unique-chat.lua \
    "http://127.0.0.1:$gateway_port" >"$work/soak.json" &
  soak_wrk=$!
  samples=()
  for _ in $(seq 1 $((soak_seconds / 10))); do
    sleep 10
    samples+=("$(awk '/VmRSS/ {print $2}' "/proc/$gateway_pid/status")")
  done
  wait "$soak_wrk"
  # Of the last sample, the process's own memory (heap, stacks) and the mapped files (the
  # binary's code and the SQLite file's pages).
  anon=$(awk '/RssAnon/ {print $2}' "/proc/$gateway_pid/status")
  file=$(awk '/RssFile/ {print $2}' "/proc/$gateway_pid/status")
  sleep 1 # the last usage flush
  db_bytes=$(du -b "$work"/gw.db* | awk '{s += $1} END {print s}')
  echo "== memory, $config: idle ${idle} KiB, every 10 s: ${samples[*]} KiB; $(tail -1 "$work/soak.json"); database ${db_bytes} bytes"
  soaks+=("$config|$idle|${samples[*]}|$(tail -1 "$work/soak.json")|$db_bytes|$anon $file")
  stop_gateway
done

# Streams (time to the first token, gap between chunks; direct and through the gateway,
# alternating, the upstream sending a chunk every 10 ms) and the cold start to a first answer.
start_gateway "$bin/chat"
stream_result=$(python3 scripts/bench/streams.py streams "$upstream" \
  "http://127.0.0.1:$gateway_port" "$key" "${BENCH_STREAMS:-60}")
echo "== streams: $stream_result"
stop_gateway
cold_result=$(python3 scripts/cold-start.py --chat "$bin/chat" "$upstream" "$key" 5)
echo "== cold start to the first answer: $cold_result"
fi

if [[ $compare_only != 1 ]]; then

python3 - "${frontiers[@]}" <<'EOF'
import sys
print()
print("| throughput frontier (wrk, 1-64 connections) | most req/s with p99 < 1 ms | < 5 ms | < 10 ms | at max (req/s, p99 ms) |")
print("|---|---|---|---|---|")
direct = None
for entry in sys.argv[1:]:
    name, points = entry.split("|")
    points = [tuple(float(x) for x in p.split(",")) for p in points.split(";")]
    def best(limit):
        ok = [rps for _, rps, p99, errors in points if p99 < limit and errors == 0]
        return max(ok) if ok else 0.0
    cells = [best(1), best(5), best(10)]
    if direct is None:
        direct = cells
    def share(v, d):
        return f"{v:,.0f}" + (f" ({100 * v / d:.1f} %)" if d and name != "direct" else "")
    top = max(points, key=lambda p: p[1])
    print(f"| {name} | " + " | ".join(share(v, d) for v, d in zip(cells, direct))
          + f" | {top[1]:,.0f} at {top[0]:.0f} conn., {top[2]:.2f} |")
EOF
fi
python3 - "$direct8" "$direct1" "${results[@]}" "--" "${soaks[@]}" <<'EOF'
import json, sys
split = sys.argv.index("--")
soaks = sys.argv[split + 1:]
sys.argv = sys.argv[:split]
d8, d1 = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print()
print("| configuration | req/s at 8 conn. | share of direct | gateway CPU µs/request (8 conn.) | p50 / p99 at 1 conn. (ms) | added p50 / p99 (ms) | RSS after (MB) | errors |")
print("|---|---|---|---|---|---|---|---|")
print(f"| direct (fake-openai) | {d8['rps']:,.0f} | 100 % | {d8['cpu_us']:.0f} (upstream's own) | {d1['p50_ms']:.3f} / {d1['p99_ms']:.3f} | | | {d8['errors'] + d1['errors']} |")
for entry in sys.argv[3:]:
    name, g8, g1, rss = entry.split("|")
    g8, g1 = json.loads(g8), json.loads(g1)
    print(f"| gateway, {name} | {g8['rps']:,.0f} | {100 * g8['rps'] / d8['rps']:.1f} % | {g8['cpu_us']:.0f} "
          f"| {g1['p50_ms']:.3f} / {g1['p99_ms']:.3f} | +{g1['p50_ms'] - d1['p50_ms']:.3f} / +{g1['p99_ms'] - d1['p99_ms']:.3f} "
          f"| {int(rss) / 1024:.0f} | {g8['errors'] + g1['errors']} |")
rounds = {}
for entry in sys.argv[3:]:
    name, g8, g1, _ = entry.split("|")
    rounds.setdefault(name, []).append((json.loads(g8), json.loads(g1)))
if any(len(r) > 1 for r in rounds.values()):
    from statistics import median
    print()
    print("| configuration, median of rounds | rounds | gateway CPU µs/request (8 conn.) | req/s at 8 conn. | CPU µs/request (1 conn.) | p50 at 1 conn. (ms) |")
    print("|---|---|---|---|---|---|")
    for name, r in rounds.items():
        print(f"| {name} | {len(r)} | {median(g8['cpu_us'] for g8, _ in r):.0f} | {median(g8['rps'] for g8, _ in r):,.0f} "
              f"| {median(g1['cpu_us'] for _, g1 in r):.0f} | {median(g1['p50_ms'] for _, g1 in r):.3f} |")
if not soaks:
    sys.exit(0)
print()
print("| binary | idle RSS (MB) | RSS after 10 s / 60 s / end (MB) | at the end: own + mapped files (MB) | growth after the first minute (MB/min) | req/s at 32 conn. | database bytes per request |")
print("|---|---|---|---|---|---|---|")
for entry in soaks:
    name, idle, samples, run, db, split = entry.split("|")
    anon, file = (int(x) / 1024 for x in split.split())
    mb = [int(x) / 1024 for x in samples.split()]
    run = json.loads(run)
    growth = (mb[-1] - mb[5]) / ((len(mb) - 6) / 6) if len(mb) > 6 else float("nan")
    at60 = f"{mb[5]:.0f}" if len(mb) > 5 else "-"
    print(f"| {name} | {int(idle) / 1024:.0f} | {mb[0]:.0f} / {at60} / {mb[-1]:.0f} | {anon:.0f} + {file:.0f} | {growth:+.1f} | {run['rps']:,.0f} | {int(db) / max(run['requests'], 1):.2f} |")
EOF
[[ $compare_only == 1 ]] && exit 0
python3 - "$stream_result" "$cold_result" <<'EOF'
import json, sys
s, c = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print()
print("| streams | first token p50 / p90 (ms) | mean gap between chunks (ms) |")
print("|---|---|---|")
for name in ("direct", "gateway"):
    r = s[name]
    print(f"| {name} ({r['streams']} streams) | {r['first_token_p50_ms']:.2f} / {r['first_token_p90_ms']:.2f} | {r['chunk_gap_mean_ms']:.2f} |")
print(f"| added by the gateway | +{s['added_first_token_p50_ms']:.2f} (p50) | {s['added_chunk_gap_ms']:+.2f} |")
print()
print(f"Cold start to the first answered chat completion: median {c['median_ms']:.1f} ms "
      f"({', '.join(f'{t:.1f}' for t in c['first_answer_ms'])})")
EOF
