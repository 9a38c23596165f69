#!/usr/bin/env python3
"""Sends exactly N unique chat completions over C keep-alive connections, then exits.

For counting a server's instructions per request (scripts/bench/gateway-instructions.sh):
wrk runs for a time, not a count, and its last requests may be cut off mid-flight.
Every prompt is unique (no cache hit), temperature 0, as scripts/bench/unique-chat.lua.
With BENCH_STREAM=1 every answer is streamed instead, at temperature 0.7 (never cached),
as scripts/bench/streams.py asks for them, and read to its end.
Usage: fixed-requests.py URL REQUESTS CONNECTIONS [BEARER_KEY]
Exits non-zero if any answer is not 200, or any stream does not end with `[DONE]` or
carries an error event.
"""
import http.client
import json
import os
import random
import sys
import threading
import urllib.parse


STREAM = os.environ.get("BENCH_STREAM") == "1"


def worker(url, key, start, count, failures):
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    for n in range(start, start + count):
        request = {
            "model": "gpt-4o-mini",
            "temperature": 0.7 if STREAM else 0,
            "messages": [{"role": "user", "content": f"question {n} about the refund window"}],
        }
        if STREAM:
            request["stream"] = True
        body = json.dumps(request)
        connection.request("POST", "/v1/chat/completions", body, headers)
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            failures.append(response.status)
        elif STREAM and (not answer.endswith(b"data: [DONE]\n\n") or b'"error"' in answer):
            # A stream that ended in an error event is answered 200 too.
            failures.append("a stream without [DONE] or with an error event")


def main():
    url, requests, connections = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    key = sys.argv[4] if len(sys.argv) > 4 else ""
    salt = random.randrange(1_000_000_000) * 1_000_000
    failures = []
    share = requests // connections
    threads = [
        threading.Thread(target=worker, args=(url, key, salt + i * share, share, failures))
        for i in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        print(f"{len(failures)} answers failed: {sorted(set(map(str, failures)))}", file=sys.stderr)
        sys.exit(1)
    print(share * connections)


if __name__ == "__main__":
    main()
