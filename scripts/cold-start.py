#!/usr/bin/env python3
"""Cold start of the function binaries in standalone mode: the time from starting the
process to its first HTTP answer (any status), on a fresh SQLite database each run.

Usage: scripts/cold-start.py BIN_DIR [runs]   e.g. scripts/cold-start.py target/release 10
Prints, per function, the median and the range in milliseconds, and the binary's size.

       scripts/cold-start.py --chat CHAT_BINARY UPSTREAM_URL KEY [runs]
The chat function in front of an OpenAI-compatible upstream, to its first answered chat
completion (a 200); prints JSON (what scripts/gateway-bench.sh reads).
"""

import hashlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

# A path each function answers on (what it answers does not matter, only that it does).
PATHS = {"health": "/health/ready", "chat": "/v1/models", "ingest": "/documents", "backup": "/backups"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_answer_ms(binary: str, path: str, request=None, extra_env=None) -> float:
    """Process start to the first answer of `path` (any status), or to a 200 for
    `request` = (method, body, headers)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PORT": str(port),
            "DATABASE_URL": f"sqlite://{data}/app.db",
            "LOG_LEVEL": "warn",
            **(extra_env or {}),
        }
        method, body, headers = request or ("GET", None, {})
        started = time.perf_counter()
        process = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = started + 30
            while time.perf_counter() < deadline:
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    connection.request(method, path, body, headers)
                    response = connection.getresponse()
                    response.read()
                    elapsed = (time.perf_counter() - started) * 1000
                    if request and response.status != 200:
                        raise RuntimeError(f"{binary}: {method} {path} answered {response.status}")
                    return elapsed
                except OSError:
                    time.sleep(0.0005)
            raise RuntimeError(f"{binary} did not answer within 30 s")
        finally:
            process.kill()
            process.wait()


def chat_first_answer(binary: str, upstream: str, key: str, runs: int) -> dict:
    env = {
        "LLM_BASE_URL": f"{upstream.rstrip('/')}/v1",
        "LLM_MODEL": "gpt-4o-mini",
        "RETRIEVAL_ENABLED": "false",
        "API_KEYS": f"bench:{hashlib.sha256(key.encode()).hexdigest()}",
    }
    body = json.dumps({"model": "gpt-4o-mini", "temperature": 0,
                       "messages": [{"role": "user", "content": "cold start"}]})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    times = [first_answer_ms(binary, "/v1/chat/completions", ("POST", body, headers), env)
             for _ in range(runs)]
    return {"first_answer_ms": times, "median_ms": statistics.median(times)}


def main() -> None:
    if sys.argv[1] == "--chat":
        runs = int(sys.argv[5]) if len(sys.argv) > 5 else 5
        print(json.dumps(chat_first_answer(sys.argv[2], sys.argv[3], sys.argv[4], runs)))
        return
    bin_dir = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    for function, path in PATHS.items():
        binary = os.path.join(bin_dir, function)
        if not os.path.exists(binary):
            continue
        times = [first_answer_ms(binary, path) for _ in range(runs)]
        size = os.path.getsize(binary) / 1e6
        print(
            f"{function:7} {size:5.1f} MB  first answer: median {statistics.median(times):6.1f} ms "
            f"(min {min(times):.1f}, max {max(times):.1f}, {runs} runs)"
        )


if __name__ == "__main__":
    main()
