#!/usr/bin/env python3
"""Plain requests one at a time with a pause between them (standard library only).

spaced-requests.py UPSTREAM_URL GATEWAY_URL KEY [requests] [pause_s] [keep|fresh]
    Alternates one request straight to the upstream and one through the gateway, with
    `pause_s` seconds of silence after each (0: back to back), on one kept-alive
    connection per path (`keep`) or a new connection per request (`fresh`). Prints the
    p50 round trip of each path and what the gateway adds, as JSON. With pauses the
    machine goes idle between requests, as it does at a low request rate or under
    Lambda: each side then wakes from idle for every request (docs/benchmarks.md,
    "Where the stream's added time goes: waking from idle").
"""

import http.client
import json
import statistics
import sys
import time
import urllib.parse


def one(url: str, key: str, connection) -> float:
    parsed = urllib.parse.urlparse(url)
    body = json.dumps({
        "model": "gpt-4o-mini",
        "temperature": 0.7,
        "messages": [{"role": "user", "content": f"spaced {time.time_ns()}"}],
    })
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    own = connection is None
    if own:
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    started = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body, headers)
    response = connection.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"{url}: status {response.status}: {data[:200]!r}")
    if own:
        connection.close()
    return elapsed


def main() -> None:
    upstream, gateway, key = sys.argv[1], sys.argv[2], sys.argv[3]
    requests = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.05
    mode = sys.argv[6] if len(sys.argv) > 6 else "keep"
    if mode not in ("keep", "fresh"):
        raise SystemExit("the mode is keep or fresh")

    def connect(url):
        if mode == "fresh":
            return None
        parsed = urllib.parse.urlparse(url)
        return http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)

    paths = {"direct": (upstream, "", connect(upstream)), "gateway": (gateway, key, connect(gateway))}
    times = {name: [] for name in paths}
    for _ in range(requests):
        for name, (url, path_key, connection) in paths.items():
            times[name].append(one(url, path_key, connection))
            if pause:
                time.sleep(pause)
    p50 = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(json.dumps({
        "mode": mode,
        "pause_s": pause,
        "requests": requests,
        "direct_p50_ms": round(p50["direct"], 3),
        "gateway_p50_ms": round(p50["gateway"], 3),
        "added_p50_ms": round(p50["gateway"] - p50["direct"], 3),
    }))


if __name__ == "__main__":
    main()
