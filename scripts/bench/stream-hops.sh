#!/usr/bin/env bash
# Where a streamed answer's added latency goes, from the packets on loopback (tcpdump):
# the gateway's time from the caller's request to its upstream request, from the upstream's
# first content chunk to the caller, and for every later chunk. Needs fake-openai on
# UPSTREAM_PORT (9391) and the gateway on GATEWAY_PORT (9392) with BENCH_KEY's key, as
# scripts/gateway-bench.sh starts them; run as root (tcpdump).
# Usage: scripts/bench/stream-hops.sh [streams]
set -euo pipefail
cd "$(dirname "$0")"
streams=${1:-20}
upstream_port=${UPSTREAM_PORT:-9391}
gateway_port=${GATEWAY_PORT:-9392}
key=${BENCH_KEY:-bench-key-0123456789}
command -v tcpdump >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq tcpdump >/dev/null; }
capture=$(mktemp)
trap 'rm -f "$capture"' EXIT
timeout $((streams / 2 + 8)) tcpdump -i lo -n -tt -l "tcp port $gateway_port or tcp port $upstream_port" \
  >"$capture" 2>/dev/null &
sleep 1
python3 - "$upstream_port" "$gateway_port" "$key" "$streams" <<'PY'
import json, sys, time, urllib.request
import streams as s
up, gw, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
upstream = f"http://127.0.0.1:{up}"
urllib.request.urlopen(urllib.request.Request(upstream + "/_fake/behaviour", data=json.dumps({"chunk_delay_ms": 10}).encode(), method="PUT", headers={"Content-Type": "application/json"})).read()
time.sleep(0.3)
for i in range(n):
    s.post_stream(f"http://127.0.0.1:{gw}", key, f"hops-{i}")
    time.sleep(0.05)
urllib.request.urlopen(urllib.request.Request(upstream + "/_fake/reset", data=b"", method="POST")).read()
PY
wait
python3 - "$capture" "$upstream_port" "$gateway_port" <<'PY'
import statistics, sys
path, up, gw = sys.argv[1], "." + sys.argv[2], "." + sys.argv[3]
pre, first, later = [], [], []
state, request_at, chunk_at, chunks = None, 0.0, 0.0, 0
for line in open(path):
    f = line.split()
    try:
        t, src, dst, length = float(f[0]), f[2], f[4].rstrip(":"), int(f[-1])
    except (ValueError, IndexError):
        continue
    if length == 0:
        continue
    if dst.endswith(gw):  # the caller's request (its last segment)
        request_at, state = t, "request"
    elif state == "request" and dst.endswith(up):  # the gateway's upstream request
        pre.append(t - request_at); state, chunks = "upstream", 0
    elif state in ("upstream", "relay") and src.endswith(up):  # an upstream chunk
        chunk_at, chunks = t, chunks + 1
    elif state in ("upstream", "relay") and src.endswith(gw):  # the gateway writes
        if state == "upstream" and chunks >= 2:  # headers and role first, then content
            first.append(t - chunk_at); state = "relay"
        elif state == "relay":
            later.append(t - chunk_at)
median = lambda xs: f"{statistics.median(xs) * 1000:.3f} ms (n={len(xs)})" if xs else "-"
print("request in -> upstream request out:", median(pre))
print("first content chunk in -> out:    ", median(first))
print("later chunk in -> out:            ", median(later))
PY
