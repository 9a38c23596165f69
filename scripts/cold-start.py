#!/usr/bin/env python3
"""Cold start of the function binaries in standalone mode: the time from starting the
process to its first HTTP answer (any status), on a fresh SQLite database each run.

Usage: scripts/cold-start.py BIN_DIR [runs]   e.g. scripts/cold-start.py target/release 10
Prints, per function, the median and the range in milliseconds, and the binary's size.
"""

import http.client
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


def first_answer_ms(binary: str, path: str) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PORT": str(port),
            "DATABASE_URL": f"sqlite://{data}/app.db",
            "LOG_LEVEL": "warn",
        }
        started = time.perf_counter()
        process = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = started + 30
            while time.perf_counter() < deadline:
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    connection.request("GET", path)
                    connection.getresponse().read()
                    return (time.perf_counter() - started) * 1000
                except OSError:
                    time.sleep(0.002)
            raise RuntimeError(f"{binary} did not answer within 30 s")
        finally:
            process.kill()
            process.wait()


def main() -> None:
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
