#!/usr/bin/env python3
"""Two measurements for scripts/gateway-bench.sh (standard library only).

streams UPSTREAM_URL GATEWAY_URL KEY [requests]
    Streamed answers one at a time, alternating direct and through the gateway, with the
    fake upstream sending a chunk every 10 ms: time to the first content chunk (p50, p90)
    and the mean gap between chunks, per path, and what the gateway adds. Prints JSON.

cold-start BINARY UPSTREAM_URL KEY [runs]
    The chat binary started on a fresh SQLite database, from the process start to its
    first answered chat completion (a 200), per run. Prints JSON.
"""

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_answer_ms(binary: str, upstream: str, key: str) -> float:
    port = free_port()
    key_hash = __import__("hashlib").sha256(key.encode()).hexdigest()
    body = json.dumps({"model": "gpt-4o-mini", "temperature": 0,
                       "messages": [{"role": "user", "content": "cold start"}]})
    with tempfile.TemporaryDirectory() as data:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PORT": str(port),
            "DATABASE_URL": f"sqlite://{data}/cold.db",
            "LOG_LEVEL": "warn",
            "LLM_BASE_URL": f"{upstream.rstrip('/')}/v1",
            "LLM_MODEL": "gpt-4o-mini",
            "RETRIEVAL_ENABLED": "false",
            "API_KEYS": f"bench:{key_hash}",
        }
        started = time.perf_counter()
        process = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    connection.request("POST", "/v1/chat/completions", body,
                                       {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
                    status = connection.getresponse().status
                    connection.close()
                    if status == 200:
                        return 1000 * (time.perf_counter() - started)
                    raise SystemExit(f"cold start: status {status}")
                except ConnectionRefusedError:
                    if process.poll() is not None:
                        raise SystemExit("cold start: the binary exited")
                    time.sleep(0.0005)
        finally:
            process.terminate()
            process.wait()


def cold_start(binary: str, upstream: str, key: str, runs: int) -> dict:
    times = [first_answer_ms(binary, upstream, key) for _ in range(runs)]
    return {"first_answer_ms": times, "median_ms": statistics.median(times)}


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "streams":
        count = int(sys.argv[5]) if len(sys.argv) > 5 else 100
        print(json.dumps(streams(sys.argv[2], sys.argv[3], sys.argv[4], count)))
    elif command == "cold-start":
        runs = int(sys.argv[5]) if len(sys.argv) > 5 else 5
        print(json.dumps(cold_start(sys.argv[2], sys.argv[3], sys.argv[4], runs)))
    else:
        raise SystemExit(__doc__)
