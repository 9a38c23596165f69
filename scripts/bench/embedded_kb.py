#!/usr/bin/env python3
"""The embedded knowledge base over HTTP (issue 16, item 3): the ingest function's
release binary, standalone, on SQLite with the offline embedder, loaded with real prose
(the Cranfield abstracts, copied with their sentences rotated so no copy repeats a chunk
or an embedding) through POST /documents, 100 documents a request; then GET /search at
k=10 one request at a time, every query unique (no cache hits).

Usage: embedded_kb.py --chunks 10000 [--searches 450] NAME=BINARY [NAME=BINARY ...]
Prints one line per binary and a Markdown table: ingest chunks/s (wall) and CPU per
chunk, search p50/p95/p99 and CPU per search, resident memory after the searches (the
process's own, and the SQLite file's pages it maps).
Binaries run one after the other on a fresh database each, on the same machine.
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CRANFIELD = os.path.join(HERE, "..", "..", "eval", "cranfield")
KEY = "bench-key-0123456789"


def read_jsonl(name):
    with open(os.path.join(CRANFIELD, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sentences(text):
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", text) if p.strip()]
    return parts or [text]


def corpus():
    """The abstracts again and again, copy n starting at its n-th sentence (prose kept,
    chunks and embeddings new)."""
    docs = [d for d in read_jsonl("corpus.jsonl") if d["text"].strip()]
    copy = -1
    while True:
        copy += 1
        for d in docs:
            s = sentences(d["text"])
            shift = copy % len(s)
            text = " ".join(s[shift:] + s[:shift])
            if copy >= len(s):
                text = f"{text} (copy {copy})"
            yield {"id": f"cran-{d['_id']}-{copy}", "title": d["title"], "text": text}


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid):
    """Anonymous (the process's own) and file-backed (mapped SQLite pages, which the OS
    page cache holds anyway) resident memory."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                found[key] = int(value.split()[0]) / 1024
    return found.get("RssAnon", 0.0), found.get("RssFile", 0.0)


def request(conn, method, path, body=None):
    headers = {"x-api-key": KEY}
    if body is not None:
        headers["content-type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {data[:300]!r}")
    return data


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round((len(ordered) - 1) * p)))]


def measure(name, binary, args, port):
    work = tempfile.mkdtemp(prefix="kb-bench-")
    db = os.path.join(work, "kb.db")
    env = {
        "PATH": os.environ["PATH"],
        "PORT": str(port),
        "DATABASE_URL": f"sqlite://{db}",
        "API_KEYS": "bench:" + hashlib.sha256(KEY.encode()).hexdigest(),
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "LOG_LEVEL": "warn",
        "SCHEDULE_EVERY_SECS": "0",
    }
    log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(400):
            try:
                request(conn, "GET", "/health/live")
                break
            except (ConnectionError, OSError):
                conn.close()
                time.sleep(0.05)
        batch, chunks = [], 0
        cpu0, started = cpu_seconds(server.pid), time.monotonic()
        documents = corpus()
        while chunks < args.chunks:
            batch = [d for _, d in zip(range(100), documents)]
            if not batch:
                break
            reply = json.loads(request(conn, "POST", "/documents", json.dumps({"documents": batch})))
            results = reply.get("documents", reply if isinstance(reply, list) else [reply])
            chunks += sum(r.get("chunks", 0) for r in results)
        ingest_wall = time.monotonic() - started
        ingest_cpu = cpu_seconds(server.pid) - cpu0
        stored = sqlite3.connect(db).execute("SELECT count(*) FROM chunks").fetchone()[0]
        queries = [q["text"].strip().rstrip(" .") for q in read_jsonl("queries.jsonl")]
        words = ["flow", "wing", "pressure", "heat", "shock", "layer", "boundary", "mach"]
        rng = random.Random(7)
        unique = [f"{q} {rng.choice(words)} {i}" for i, q in enumerate(queries * 4)][: args.searches + 20]
        times = []
        cpu1 = cpu_seconds(server.pid)
        for i, q in enumerate(unique):
            path = "/search?k=10&q=" + "+".join(re.findall(r"[A-Za-z0-9]+", q))
            t = time.monotonic()
            request(conn, "GET", path)
            if i >= 20:  # the first searches load the index
                times.append((time.monotonic() - t) * 1000)
        search_cpu = cpu_seconds(server.pid) - cpu1
        row = {
            "name": name,
            "chunks": stored,
            "ingest_chunks_per_s": stored / ingest_wall,
            "ingest_cpu_us_per_chunk": ingest_cpu / stored * 1e6,
            "search_p50_ms": percentile(times, 0.5),
            "search_p95_ms": percentile(times, 0.95),
            "search_p99_ms": percentile(times, 0.99),
            "search_cpu_ms": search_cpu / len(unique) * 1000,
            "rss_anon_mb": memory_mb(server.pid)[0],
            "rss_file_mb": memory_mb(server.pid)[1],
        }
        print(json.dumps(row), flush=True)
        return row
    finally:
        server.terminate()
        server.wait()
        if args.keep:
            print(f"kept: {db}", flush=True)
        else:
            subprocess.run(["rm", "-rf", work])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--searches", type=int, default=450)
    parser.add_argument("--port", type=int, default=9394)
    parser.add_argument("--keep", action="store_true", help="keep each database and print its path")
    parser.add_argument("binaries", nargs="+", help="NAME=PATH of an ingest binary")
    args = parser.parse_args()
    rows = [measure(*b.split("=", 1), args, args.port) for b in args.binaries]
    print()
    print(f"| build | chunks | ingest chunks/s | ingest CPU µs/chunk | search p50 / p95 / p99 ms (k=10) | CPU ms/search | memory MB (own + mapped file) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['chunks']:,} | {r['ingest_chunks_per_s']:,.0f} | {r['ingest_cpu_us_per_chunk']:.0f} | "
            f"{r['search_p50_ms']:.2f} / {r['search_p95_ms']:.2f} / {r['search_p99_ms']:.2f} | {r['search_cpu_ms']:.2f} | {r['rss_anon_mb']:.0f} + {r['rss_file_mb']:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
