#!/usr/bin/env python3
"""Load generator and checks for scripts/chaos.sh (Python standard library only).

Sub-commands (all talk to loopback only):
  seed     --ingest URL --key K --out FILE             a small knowledge base for retrieval
  load     --phase NAME --secs N --out DIR [...]        steady open-loop load for one phase
  streams  --chat URL --key K --secs N --rate R ...     streamed chats (the stalled-upstream phase)
  slowloris --port P --conns N --secs S --out FILE      slow connections against one port
  report   --out DIR                                    the final tables and the integrity check

The load is open-loop: requests are started on a fixed schedule, each in its own thread,
so a slow or hanging service shows up as latency and late requests, never as a lower rate.
Latency is measured from the scheduled start. Every result is one JSON line in
DIR/requests.jsonl; `report` reads them all.
"""

import argparse
import collections
import http.client
import json
import os
import random
import selectors
import socket
import sys
import threading
import time
import urllib.parse

WORDS = (
    "guest network password printer vacation policy expense report laptop vpn badge "
    "parking holiday onboarding security training backup restore invoice payroll "
    "meeting room booking kitchen coffee badge access wifi office travel reimbursement "
    "incident escalation oncall rotation deployment release database migration cache"
).split()

TOPICS = [
    ("wifi", "Office Wi-Fi", "Guests use the Guest network. The guest password rotates every Monday and is printed at reception."),
    ("vpn", "VPN access", "Install the VPN client from the portal and sign in with your badge number and one-time code."),
    ("vacation", "Vacation policy", "Employees get twenty-five vacation days; request vacation in the HR portal two weeks ahead."),
    ("expenses", "Expense reports", "File expense reports within thirty days with receipts; travel reimbursement is paid with payroll."),
    ("printer", "Printers", "The printer on floor two needs your badge; scan to e-mail works from every printer."),
    ("oncall", "On-call rotation", "The on-call rotation changes every Tuesday; escalate incidents to the database team after fifteen minutes."),
    ("parking", "Parking", "Parking permits are issued by facilities; visitor parking is on level minus one."),
    ("backup", "Backups", "Backups run nightly; a restore request goes through the service desk with the incident number."),
]

DEADLINE_S = 35.0


def now():
    return time.monotonic()


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


class Endpoint:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host = u.hostname
        self.port = u.port


def request(ep, method, path, key=None, body=None, content_type="application/json",
            timeout=DEADLINE_S, headers=None):
    """One request on a fresh connection. Returns (status, headers, body bytes)."""
    h = {"connection": "close"}
    if key:
        h["authorization"] = "Bearer " + key
    if body is not None:
        h["content-type"] = content_type
    if headers:
        h.update(headers)
    conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), data
    finally:
        conn.close()


def doc_text(rng, doc_id, size):
    words = [rng.choice(WORDS) for _ in range(size // 7)]
    # A unique marker so every document is distinct.
    words.insert(3, "marker" + doc_id.replace("-", ""))
    text = []
    for i in range(0, len(words), 12):
        text.append(" ".join(words[i:i + 12]).capitalize() + ".")
    return " ".join(text)


# --------------------------------------------------------------------------- seed

def cmd_seed(a):
    ep = Endpoint(a.ingest)
    docs = [{"id": "seed-" + i, "title": t, "text": (x + " ") * 3, "metadata": {"seed": "yes"}}
            for i, t, x in TOPICS]
    deadline = now() + 60
    while True:
        try:
            status, _, body = request(ep, "POST", "/documents", a.key, json.dumps({"documents": docs}))
            if status in (200, 201):
                print("seeded %d documents" % len(docs))
                return 0
            err = "HTTP %d %s" % (status, body[:200])
        except OSError as e:
            err = repr(e)
        if now() > deadline:
            print("seeding failed: " + err, file=sys.stderr)
            return 1
        time.sleep(0.5)


# --------------------------------------------------------------------------- load

class Recorder:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.f = open(path, "a", buffering=1)

    def write(self, row):
        line = json.dumps(row)
        with self.lock:
            self.f.write(line + "\n")


def fault_active(fault_file):
    return bool(fault_file) and os.path.exists(fault_file)


def run_one(rec, phase, kind, fn, scheduled, fault_file):
    in_fault = fault_active(fault_file)
    row = {"phase": phase, "kind": kind, "fault": in_fault, "t": time.time()}
    try:
        status, headers, body, extra = fn()
        row["status"] = status
        if headers.get("x-degraded"):
            row["degraded"] = headers["x-degraded"]
        if extra:
            row.update(extra)
        if status >= 500 or status == 429:
            try:
                row["error"] = json.loads(body)["error"].get("message", "")[:160]
            except Exception:
                row["error"] = body[:160].decode("utf-8", "replace")
    except socket.timeout:
        row["status"] = 0
        row["error"] = "client timeout"
        row["timeout"] = True
    except (OSError, http.client.HTTPException) as e:
        row["status"] = 0
        row["error"] = "connection: " + type(e).__name__ + " " + str(e)[:100]
    row["ms"] = round((now() - scheduled) * 1000.0, 2)
    row["late"] = row["ms"] > DEADLINE_S * 1000.0 or bool(row.get("timeout"))
    rec.write(row)


def cmd_load(a):
    chat, ingest, health = Endpoint(a.chat), Endpoint(a.ingest), Endpoint(a.health)
    rec = Recorder(os.path.join(a.out, "requests.jsonl"))
    ready = Recorder(os.path.join(a.out, "ready.jsonl"))
    rng = random.Random()
    run = a.run_id
    seq = {"n": 0}
    lock = threading.Lock()

    def next_n():
        with lock:
            seq["n"] += 1
            return seq["n"]

    def chat_call():
        n = next_n()
        topic = rng.choice(TOPICS)
        question = "Question %s-%s-%d: how does %s work for %s?" % (run, a.phase, n, rng.choice(WORDS), topic[1].lower())
        body = json.dumps({"messages": [{"role": "user", "content": question}], "cache": False})
        s, h, b = request(chat, "POST", "/v1/chat/completions", a.key, body)
        extra = {}
        if s == 200:
            try:
                extra["sources"] = len(json.loads(b).get("sources") or [])
            except ValueError:
                extra["bad_body"] = True
        return s, h, b, extra

    def search_call():
        q = "%s %s" % (rng.choice(WORDS), rng.choice(WORDS))
        path = "/search?" + urllib.parse.urlencode({"q": q, "k": 5})
        s, h, b = request(ingest, "GET", path, a.key)
        return s, h, b, None

    def doc_call():
        n = next_n()
        doc_id = "chaos-%s-%s-%d" % (run, a.phase, n)
        text = doc_text(rng, doc_id, a.doc_chars)
        body = json.dumps({"id": doc_id, "title": "Chaos %s %d" % (a.phase, n), "text": text,
                           "metadata": {"run": run, "phase": a.phase}})
        s, h, b = request(ingest, "POST", "/documents", a.key, body)
        extra = {"doc_id": doc_id}
        if s in (200, 201):
            try:
                d = json.loads(b)["documents"][0]
                extra["chunks"] = d.get("chunks")
                extra["doc_status"] = d.get("status")
            except (ValueError, KeyError, IndexError):
                extra["bad_body"] = True
        return s, h, b, extra

    def models_call():
        s, h, b = request(chat, "GET", "/v1/models", a.key)
        return s, h, b, None

    kinds = [("chat", a.chat_rate, chat_call), ("search", a.search_rate, search_call),
             ("doc", a.doc_rate, doc_call), ("models", a.models_rate, models_call)]
    schedule = []
    start = now() + 0.05
    for kind, rate, fn in kinds:
        if rate <= 0:
            continue
        interval = 1.0 / rate
        t = start + rng.random() * interval
        while t < start + a.secs:
            schedule.append((t, kind, fn))
            t += interval
    # Readiness probes: the health function (which has /health/ready) and, for the
    # record, the same path on chat and ingest.
    def ready_probe(name, ep, scheduled):
        row = {"phase": a.phase, "target": name, "t": time.time(), "fault": fault_active(a.fault_file)}
        try:
            s, _, b = request(ep, "GET", "/health/ready", timeout=5)
            row["status"] = s
            try:
                j = json.loads(b)
                row["state"] = j.get("status") or (j.get("error") or {}).get("code") or ""
                for k in ("failing", "degraded"):
                    if j.get(k):
                        row["state"] += "[" + ",".join(j[k]) + "]"
            except ValueError:
                row["state"] = ""
        except (OSError, http.client.HTTPException) as e:
            row["status"] = 0
            row["state"] = type(e).__name__
        row["ms"] = round((now() - scheduled) * 1000.0, 1)
        ready.write(row)

    t = start
    while t < start + a.secs:
        for name, ep in (("health", health), ("chat", chat), ("ingest", ingest)):
            schedule.append((t, "ready:" + name, (name, ep)))
        t += 1.0
    schedule.sort(key=lambda x: x[0])

    threads = []
    for scheduled, kind, fn in schedule:
        delay = scheduled - now()
        if delay > 0:
            time.sleep(delay)
        if kind.startswith("ready:"):
            th = threading.Thread(target=ready_probe, args=(fn[0], fn[1], scheduled), daemon=True)
        else:
            th = threading.Thread(target=run_one, args=(rec, a.phase, kind, fn, scheduled, a.fault_file), daemon=True)
        th.start()
        threads.append(th)
        if len(threads) % 200 == 0:
            threads = [x for x in threads if x.is_alive()]
    # Requests still running finish or hit their client deadline.
    end = now() + DEADLINE_S + 5
    for th in threads:
        th.join(max(0.0, end - now()))
    return 0


# --------------------------------------------------------------------------- streams

def cmd_streams(a):
    ep = Endpoint(a.chat)
    rec = Recorder(os.path.join(a.out, "streams.jsonl"))
    rng = random.Random()

    def one(n, scheduled):
        row = {"phase": a.phase, "kind": "stream", "t": time.time()}
        body = json.dumps({"messages": [{"role": "user", "content": "Stream %s %d: tell me about %s and %s" % (
            a.run_id, n, rng.choice(WORDS), rng.choice(WORDS))}], "stream": True, "cache": False})
        first = None
        done = False
        error = None
        conn = http.client.HTTPConnection(ep.host, ep.port, timeout=DEADLINE_S)
        try:
            conn.request("POST", "/v1/chat/completions", body=body, headers={
                "authorization": "Bearer " + a.key, "content-type": "application/json", "connection": "close"})
            resp = conn.getresponse()
            row["status"] = resp.status
            if resp.getheader("x-degraded"):
                row["degraded"] = resp.getheader("x-degraded")
            if resp.status != 200:
                row["error"] = resp.read()[:160].decode("utf-8", "replace")
            else:
                while True:
                    if now() - scheduled > DEADLINE_S:
                        row["late"] = True
                        break
                    line = resp.readline()
                    if not line:
                        break
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if first is None:
                        first = now()
                    if data == b"[DONE]":
                        done = True
                        continue
                    try:
                        j = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(j, dict) and j.get("error"):
                        error = (j["error"].get("code") or "") + ": " + (j["error"].get("message") or "")[:100]
        except socket.timeout:
            row["status"] = row.get("status", 0)
            row["error"] = "client timeout"
            row["late"] = True
        except (OSError, http.client.HTTPException) as e:
            row["status"] = row.get("status", 0)
            row["error"] = "connection: " + type(e).__name__
        finally:
            conn.close()
        row["ms"] = round((now() - scheduled) * 1000.0, 1)
        if first is not None:
            row["after_first_ms"] = round((now() - first) * 1000.0, 1)
        row["done"] = done
        if error:
            row["stream_error"] = error
        rec.write(row)

    threads = []
    start = now()
    n = 0
    while now() - start < a.secs:
        n += 1
        scheduled = start + (n - 1) / a.rate
        delay = scheduled - now()
        if delay > 0:
            time.sleep(delay)
        if now() - start >= a.secs:
            break
        th = threading.Thread(target=one, args=(n, scheduled), daemon=True)
        th.start()
        threads.append(th)
    end = now() + DEADLINE_S + 5
    for th in threads:
        th.join(max(0.0, end - now()))
    return 0


# --------------------------------------------------------------------------- slowloris

def cmd_slowloris(a):
    """Keeps about `conns` connections open, each sending a request head one header line
    at a time (a line every `trickle` seconds, never the final blank line). A connection
    the server closes is opened again after a short pause."""
    sel = selectors.DefaultSelector()
    stats = collections.Counter()
    lifetimes = []
    open_socks = {}
    start = now()
    pending_opens = []  # times at which to open a replacement
    ramp_per_s = a.ramp

    def open_one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect_ex(("127.0.0.1", a.port))
        except OSError:
            stats["open_failed"] += 1
            s.close()
            return
        info = {"opened": now(), "next": now() + random.random() * a.trickle, "sent_head": False, "buf": b""}
        open_socks[s.fileno()] = (s, info)
        sel.register(s, selectors.EVENT_READ, info)
        stats["opened"] += 1

    def close_one(s, info, why):
        try:
            sel.unregister(s)
        except (KeyError, ValueError):
            pass
        open_socks.pop(s.fileno(), None)
        s.close()
        lifetimes.append(now() - info["opened"])
        stats[why] += 1
        if now() - start < a.secs:
            pending_opens.append(now() + random.uniform(0.05, 0.5))

    opened_initial = 0
    peak = 0
    while now() - start < a.secs:
        t = now()
        # Ramp up to the target, then replace what the server closes.
        want = min(a.conns, int((t - start) * ramp_per_s) + 1)
        while opened_initial < want:
            open_one()
            opened_initial += 1
        due = [x for x in pending_opens if x <= t]
        if due:
            pending_opens[:] = [x for x in pending_opens if x > t]
            for _ in due:
                open_one()
        peak = max(peak, len(open_socks))
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            info = key.data
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                close_one(s, info, "closed_by_server")
                continue
            if not data:
                close_one(s, info, "closed_by_server")
                continue
            info["buf"] += data
            if b" 503 " in info["buf"][:20]:
                stats["answered_503"] += 1
            elif b" 408 " in info["buf"][:20]:
                stats["answered_408"] += 1
            elif info["buf"][:5] == b"HTTP/":
                stats["answered_other"] += 1
            info["buf"] = b"x" * 20  # counted once
        # Trickle.
        t = now()
        for fd, (s, info) in list(open_socks.items()):
            if info["next"] > t:
                continue
            info["next"] = t + a.trickle
            try:
                if not info["sent_head"]:
                    s.send(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    info["sent_head"] = True
                else:
                    s.send(b"X-Slow-%d: %d\r\n" % (random.randint(0, 999), random.randint(0, 999)))
                stats["bytes_sends"] += 1
            except BlockingIOError:
                pass
            except OSError:
                close_one(s, info, "closed_by_server")
    for fd, (s, info) in list(open_socks.items()):
        lifetimes.append(now() - info["opened"])
        s.close()
    out = {
        "target_conns": a.conns, "peak_open": peak, "opened": stats["opened"],
        "closed_by_server": stats["closed_by_server"], "answered_503": stats["answered_503"],
        "answered_408": stats["answered_408"], "answered_other": stats["answered_other"],
        "open_failed": stats["open_failed"],
        "lifetime_p50_s": round(pct(lifetimes, 50) or 0, 2), "lifetime_max_s": round(max(lifetimes or [0]), 2),
    }
    with open(a.out, "w") as f:
        json.dump(out, f)
    return 0


# --------------------------------------------------------------------------- report

def load_jsonl(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    return rows


def fmt_ms(v):
    return "-" if v is None else ("%.0f" % v if v >= 100 else "%.1f" % v)


def expected_5xx(row):
    """A 5xx the fault explains: ingest routes need the database, so 503 while it is down."""
    return (row["phase"] == "4-postgres-down" and row["kind"] in ("search", "doc")
            and row.get("status") == 503)


def classify(row):
    s = row.get("status", 0)
    if s == 0:
        return "conn"
    if 200 <= s < 300:
        return "ok"
    if s == 429:
        return "429"
    if s == 503:
        return "503"
    if s >= 500:
        return "500"
    return "4xx"


HEAD = "%-18s %5s %5s %4s %4s %4s %4s %5s %4s %6s %7s %7s %7s  %s"


def phase_row(name, rows):
    c = collections.Counter(classify(r) for r in rows)
    ms = [r["ms"] for r in rows]
    late = sum(1 for r in rows if r.get("late"))
    degraded = sum(1 for r in rows if r.get("degraded"))
    fault = [r["ms"] for r in rows if r.get("fault")]
    fault_txt = ("fault: n=%d p50=%s p99=%s >100ms=%d" % (
        len(fault), fmt_ms(pct(fault, 50)), fmt_ms(pct(fault, 99)), sum(1 for m in fault if m > 100))) if fault else ""
    return HEAD % (name, len(rows), c["ok"], c["4xx"], c["429"], c["503"], c["500"], c["conn"], late,
                   degraded, fmt_ms(pct(ms, 50)), fmt_ms(pct(ms, 99)), fmt_ms(max(ms) if ms else None), fault_txt)


def print_phase(out, phase, rows, indent_kinds=True):
    print(phase_row(phase, rows))
    if indent_kinds:
        for kind in ("chat", "search", "doc", "models"):
            kr = [r for r in rows if r["kind"] == kind]
            if kr:
                print(phase_row("   " + kind, kr))


def errors_summary(rows, limit=4):
    c = collections.Counter()
    for r in rows:
        if classify(r) not in ("ok",):
            c["%s %s %s" % (r["kind"], r.get("status", 0), (r.get("error") or "")[:110])] += 1
    return c.most_common(limit)


def readiness_line(rows):
    """GET /health/ready per target over the phase, runs of equal answers collapsed;
    targets with the same timeline share a line."""
    timelines = collections.OrderedDict()
    for target in ("health", "chat", "ingest"):
        seq = []
        for r in sorted((r for r in rows if r["target"] == target), key=lambda r: r["t"]):
            label = ("%s %s" % (r["status"], r.get("state") or "")).strip()
            if seq and seq[-1][0] == label:
                seq[-1][1] += 1
            else:
                seq.append([label, 1])
        text = " -> ".join("%s x%d" % (l, n) for l, n in seq) or "-"
        timelines.setdefault(text, []).append(target)
    return ["%s: %s" % (", ".join(targets), text) for text, targets in timelines.items()]


def cmd_phase_report(a):
    rows = [r for r in load_jsonl(os.path.join(a.out, "requests.jsonl")) if r["phase"] == a.phase]
    print(HEAD % ("phase", "reqs", "ok", "4xx", "429", "503", "500", "conn", "late", "degr",
                  "p50ms", "p99ms", "maxms", ""))
    print_phase(a.out, a.phase, rows)
    for text, n in errors_summary(rows):
        print("   ! %4d x %s" % (n, text))
    degraded = collections.Counter("%s %s" % (r["kind"], r["degraded"]) for r in rows if r.get("degraded"))
    if degraded:
        print("   degraded answers (x-degraded): " + ", ".join("%s x%d" % kv for kv in degraded.most_common()))
    ready = [r for r in load_jsonl(os.path.join(a.out, "ready.jsonl")) if r["phase"] == a.phase]
    for line in readiness_line(ready):
        print("   readiness (GET /health/ready) " + line)
    if a.target_p50:
        fault = [r["ms"] for r in rows if r.get("fault")]
        p50 = pct(fault, 50)
        print("   target p50 < %s ms during the fault: %s (p50 %s ms over %d requests; %d took > 100 ms)" % (
            a.target_p50, "MET" if p50 is not None and p50 < float(a.target_p50) else "MISSED",
            fmt_ms(p50), len(fault), sum(1 for m in fault if m > 100)))
    return 0


def cmd_streams_report(a):
    rows = [r for r in load_jsonl(os.path.join(a.out, "streams.jsonl")) if r["phase"] == a.phase]
    ms = [r["ms"] for r in rows]
    after = [r["after_first_ms"] for r in rows if "after_first_ms" in r]
    err = sum(1 for r in rows if r.get("stream_error"))
    done = sum(1 for r in rows if r.get("done"))
    non200 = collections.Counter(r.get("status", 0) for r in rows if r.get("status") != 200)
    late = sum(1 for r in rows if r.get("late"))
    neither = sum(1 for r in rows if r.get("status") == 200 and not r.get("done") and not r.get("stream_error"))
    degraded = sum(1 for r in rows if r.get("degraded"))
    print("   streams: %d sent, %d ended with an error event, %d with [DONE] (%d degraded), %d ended with neither, "
          "non-200: %s, past deadline: %d" % (len(rows), err, done, degraded, neither, dict(non200) or 0, late))
    print("   stream duration p50=%s p99=%s max=%s ms; first chunk to end p50=%s max=%s ms (LLM_STREAM_IDLE_MS=%s)" % (
        fmt_ms(pct(ms, 50)), fmt_ms(pct(ms, 99)), fmt_ms(max(ms) if ms else None),
        fmt_ms(pct(after, 50)), fmt_ms(max(after) if after else None), a.idle_ms))
    msgs = collections.Counter(r.get("stream_error") or r.get("error") for r in rows if r.get("stream_error") or r.get("error"))
    for m, n in msgs.most_common(3):
        print("   ! %4d x %s" % (n, m[:140]))
    return 0


def cmd_report(a):
    rows = load_jsonl(os.path.join(a.out, "requests.jsonl"))
    phases = []
    for r in rows:
        if r["phase"] not in phases:
            phases.append(r["phase"])
    print(HEAD % ("phase", "reqs", "ok", "4xx", "429", "503", "500", "conn", "late", "degr",
                  "p50ms", "p99ms", "maxms", ""))
    for p in phases:
        print_phase(a.out, p, [r for r in rows if r["phase"] == p], indent_kinds=False)
    print_phase(a.out, "TOTAL", rows, indent_kinds=False)
    streams = load_jsonl(os.path.join(a.out, "streams.jsonl"))

    # Ingest integrity: the API's view of each document and the database's chunk counts.
    chunks_in_db = {}
    if os.path.exists(a.db_counts):
        with open(a.db_counts) as f:
            for line in f:
                parts = line.strip().split("|")
                if len(parts) == 3:
                    chunks_in_db[parts[0]] = (int(parts[1]), int(parts[2]))
    orphans = 0
    if os.path.exists(a.db_orphans):
        with open(a.db_orphans) as f:
            orphans = sum(int(x) for x in f.read().split() if x.strip().isdigit())
    ep = Endpoint(a.ingest)
    docs = [r for r in rows if r["kind"] == "doc"]
    lost, partial, ok_docs, failed_docs, failed_written, check_errors = [], [], 0, 0, 0, 0
    for r in docs:
        doc_id = r.get("doc_id")
        if not doc_id:
            continue
        try:
            s, _, b = request(ep, "GET", "/documents/" + urllib.parse.quote(doc_id), a.key, timeout=10)
        except (OSError, http.client.HTTPException):
            check_errors += 1
            continue
        record = json.loads(b) if s == 200 else None
        db = chunks_in_db.get(doc_id)
        succeeded = r.get("status") in (200, 201)
        if succeeded:
            ok_docs += 1
            want = r.get("chunks")
            if record is None or db is None:
                lost.append((doc_id, r["phase"], "GET %d" % s))
            elif not (db[0] == db[1] == record.get("chunk_count", record.get("chunks")) == want):
                partial.append((doc_id, r["phase"], "answer chunks=%s record=%s db rows=%s" % (
                    want, record.get("chunk_count"), db[1])))
        else:
            failed_docs += 1
            if record is not None or db is not None:
                failed_written += 1
                if db is None or record is None or db[0] != db[1]:
                    partial.append((doc_id, r["phase"], "failed request (%s) left record=%s db=%s" % (
                        r.get("status"), record is not None, db)))
    unexpected = [r for r in rows if r.get("status", 0) >= 500 and not expected_5xx(r)]
    client_err = [r for r in rows if 400 <= r.get("status", 0) < 500 and r.get("status") != 429]
    late = [r for r in rows if r.get("late")] + [s for s in streams if s.get("late")]
    print()
    print("SUMMARY")
    print("  requests: %d (+%d streamed chats), ok %d" % (len(rows), len(streams), sum(1 for r in rows if classify(r) == "ok")))
    print("  server errors for callers' data (5xx on valid requests the fault does not explain): %d" % len(unexpected))
    for text, n in errors_summary(unexpected, 6):
        print("     %4d x %s" % (n, text))
    by_phase = collections.Counter(r["phase"] for r in unexpected)
    if by_phase:
        print("     by phase: " + ", ".join("%s %d" % kv for kv in by_phase.items()))
    print("  5xx the fault explains (ingest 503 while PostgreSQL is down): %d" % sum(1 for r in rows if expected_5xx(r)))
    print("  4xx on valid requests (429 excluded): %d, throttled 429: %d, connection errors/timeouts: %d" % (
        len(client_err), sum(1 for r in rows if r.get("status") == 429), sum(1 for r in rows if r.get("status", 0) == 0)))
    print("  requests past the %.0f s client deadline: %d" % (DEADLINE_S, len(late)))
    print("  documents: %d acknowledged (200/201), %d failed; failed ones written anyway (whole): %d; "
          "integrity check errors: %d, orphan chunks: %d" % (ok_docs, failed_docs, failed_written, check_errors, orphans))
    print("  lost or partial documents: %d" % (len(lost) + len(partial)))
    for d in (lost + partial)[:8]:
        print("     %s (%s): %s" % d)
    frozen = [r["ms"] for r in rows if r["phase"] == "2-redis-frozen" and r.get("fault")]
    if frozen:
        print("  Redis frozen: p50 %s ms (target < 50 ms: %s), %d of %d requests took > 100 ms, max %s ms" % (
            fmt_ms(pct(frozen, 50)), "MET" if pct(frozen, 50) < 50 else "MISSED",
            sum(1 for m in frozen if m > 100), len(frozen), fmt_ms(max(frozen))))
    killed = [r["ms"] for r in rows if r["phase"] == "3-redis-killed" and r.get("fault")]
    if killed:
        print("  Redis killed: p50 %s ms, %d of %d requests took > 100 ms, max %s ms" % (
            fmt_ms(pct(killed, 50)), sum(1 for m in killed if m > 100), len(killed), fmt_ms(max(killed))))
    pg = [r for r in rows if r["phase"] == "4-postgres-down" and r.get("fault")]
    if pg:
        print("  PostgreSQL down: chat %d/%d answered (%d degraded), ingest %d/%d answered 503, p50 %s ms" % (
            sum(1 for r in pg if r["kind"] == "chat" and classify(r) == "ok"), sum(1 for r in pg if r["kind"] == "chat"),
            sum(1 for r in pg if r["kind"] == "chat" and r.get("degraded")),
            sum(1 for r in pg if r["kind"] in ("search", "doc") and r.get("status") == 503),
            sum(1 for r in pg if r["kind"] in ("search", "doc")), fmt_ms(pct([r["ms"] for r in pg], 50))))
    if streams:
        err = sum(1 for r in streams if r.get("stream_error"))
        slots = open(a.sessions).read().strip() if a.sessions and os.path.exists(a.sessions) else "?"
        print("  stalled streams: %d of %d ended with an error event, slowest end %s ms after the first chunk; "
              "sessions in use afterwards: %s" % (err, len(streams),
              fmt_ms(max([r.get("after_first_ms", r["ms"]) for r in streams])), slots or "?"))
    slow_path = os.path.join(a.out, "slowloris.json")
    if os.path.exists(slow_path):
        sl = json.load(open(slow_path))
        ph = [r for r in rows if r["phase"] == "6-slowloris" and r["kind"] in ("chat", "models")]
        print("  slowloris (%d slow connections, peak %d open): chat answered %d/%d requests 2xx, p99 %s ms; "
              "slow connections closed after p50 %s s, %d refused with 503" % (
                  sl["target_conns"], sl["peak_open"], sum(1 for r in ph if classify(r) == "ok"), len(ph),
                  fmt_ms(pct([r["ms"] for r in ph], 99)), sl["lifetime_p50_s"], sl["answered_503"]))
    bad = len(unexpected) + len(late) + len(lost) + len(partial) + orphans
    with open(os.path.join(a.out, "verdict"), "w") as f:
        f.write("%d\n" % bad)
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--ingest", required=True)
    s.add_argument("--key", required=True)
    s = sub.add_parser("load")
    for n in ("--chat", "--ingest", "--health", "--key", "--phase", "--out", "--run-id"):
        s.add_argument(n, required=True)
    s.add_argument("--secs", type=float, required=True)
    s.add_argument("--fault-file", default="")
    s.add_argument("--chat-rate", type=float, default=10)
    s.add_argument("--search-rate", type=float, default=10)
    s.add_argument("--doc-rate", type=float, default=5)
    s.add_argument("--models-rate", type=float, default=3)
    s.add_argument("--doc-chars", type=int, default=2400)
    s = sub.add_parser("streams")
    for n in ("--chat", "--key", "--phase", "--out", "--run-id"):
        s.add_argument(n, required=True)
    s.add_argument("--secs", type=float, required=True)
    s.add_argument("--rate", type=float, default=4)
    s = sub.add_parser("slowloris")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--conns", type=int, default=2000)
    s.add_argument("--secs", type=float, required=True)
    s.add_argument("--trickle", type=float, default=1.0)
    s.add_argument("--ramp", type=float, default=1000)
    s.add_argument("--out", required=True)
    s = sub.add_parser("phase-report")
    s.add_argument("--out", required=True)
    s.add_argument("--phase", required=True)
    s.add_argument("--target-p50", default="")
    s = sub.add_parser("streams-report")
    s.add_argument("--out", required=True)
    s.add_argument("--phase", required=True)
    s.add_argument("--idle-ms", default="?")
    s = sub.add_parser("report")
    for n in ("--out", "--ingest", "--key", "--db-counts", "--db-orphans"):
        s.add_argument(n, required=True)
    s.add_argument("--sessions", default="")
    a = p.parse_args()
    fn = {"seed": cmd_seed, "load": cmd_load, "streams": cmd_streams, "slowloris": cmd_slowloris,
          "phase-report": cmd_phase_report, "streams-report": cmd_streams_report, "report": cmd_report}[a.cmd]
    return fn(a)


if __name__ == "__main__":
    sys.exit(main())
