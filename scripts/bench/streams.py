#!/usr/bin/env python3
"""Streamed answers for scripts/gateway-bench.sh (standard library only).

streams UPSTREAM_URL GATEWAY_URL KEY [requests]
    Streamed answers one at a time, alternating direct and through the gateway, with the
    fake upstream sending a chunk every 10 ms: time to the first content chunk (p50, p90)
    and the mean gap between chunks, per path, and what the gateway adds. Prints JSON.
"""

import http.client
import json
import statistics
import sys
import time
import urllib.parse
import urllib.request


def post_stream(url: str, key: str, label: str):
    """Seconds to the first content chunk, and the gaps between content chunks."""
    parsed = urllib.parse.urlparse(url)
    body = json.dumps({
        "model": "gpt-4o-mini",
        "stream": True,
        "temperature": 0.7,
        "messages": [{"role": "user", "content": f"stream {label} {time.time_ns()}"}],
    })
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    started = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body, headers)
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"{url}: status {response.status}: {response.read()[:200]!r}")
    first = None
    arrivals = []
    while True:
        line = response.fp.readline()
        if not line:
            break
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            if line.startswith(b"data: [DONE]"):
                break
            continue
        chunk = json.loads(line[6:])
        choices = chunk.get("choices") or []
        if any((c.get("delta") or {}).get("content") for c in choices):
            now = time.perf_counter()
            if first is None:
                first = now - started
            arrivals.append(now)
    connection.close()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return first, gaps


def streams(upstream: str, gateway: str, key: str, requests: int) -> dict:
    control = urllib.request.Request(
        f"{upstream.rstrip('/')}/_fake/behaviour",
        data=json.dumps({"chunk_delay_ms": 10}).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(control).read()
    results = {"direct": ([], []), "gateway": ([], [])}
    try:
        for i in range(requests):
            for name, url, bearer in (("direct", upstream, ""), ("gateway", gateway, key)):
                first, gaps = post_stream(url, bearer, f"{name}-{i}")
                if first is not None:
                    results[name][0].append(first)
                    results[name][1].extend(gaps)
    finally:
        reset = urllib.request.Request(f"{upstream.rstrip('/')}/_fake/reset", data=b"", method="POST")
        urllib.request.urlopen(reset).read()

    def summary(firsts, gaps):
        firsts = sorted(firsts)
        return {
            "first_token_p50_ms": 1000 * statistics.median(firsts),
            "first_token_p90_ms": 1000 * firsts[int(0.9 * (len(firsts) - 1))],
            "chunk_gap_mean_ms": 1000 * statistics.fmean(gaps),
            "streams": len(firsts),
        }

    out = {name: summary(*values) for name, values in results.items()}
    out["added_first_token_p50_ms"] = out["gateway"]["first_token_p50_ms"] - out["direct"]["first_token_p50_ms"]
    out["added_chunk_gap_ms"] = out["gateway"]["chunk_gap_mean_ms"] - out["direct"]["chunk_gap_mean_ms"]
    return out


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "streams":
        count = int(sys.argv[5]) if len(sys.argv) > 5 else 100
        print(json.dumps(streams(sys.argv[2], sys.argv[3], sys.argv[4], count)))
    else:
        raise SystemExit(__doc__)
