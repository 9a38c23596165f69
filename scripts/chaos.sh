#!/usr/bin/env bash
# Fault injection: runs the release binaries of the chat and ingest functions (and the
# health function, the one that serves /health/ready) in standalone mode on loopback
# under a steady open-loop load (scripts/chaos_load.py: chat completions with retrieval,
# GET /search, POST /documents, GET /v1/models), injects one fault per phase and prints,
# per phase, the error counts and latencies (p50/p99/max), so a human can read whether the
# service degraded gracefully. Phases (CHAOS_PHASE_SECS each, default 12):
#   1 baseline            everything up
#   2 redis-frozen        kill -STOP on Redis, then -CONT (target: p50 < 50 ms meanwhile)
#   3 redis-killed        kill -9 on Redis, restarted on the same port mid-phase
#   4 postgres-down       pg_ctl stop -m immediate, restarted mid-phase; readiness polled
#   5 upstream-stalled    the fake provider stalls streams after the first chunk; streamed
#                         chats must end with an error event within LLM_STREAM_IDLE_MS
#   6 slowloris           2,000 slow connections against chat while the load continues
# Then an integrity check of every document posted (acknowledged ones complete, failed
# ones absent or whole) and a summary.
#
# It starts its OWN throwaway services and never touches the machine's PostgreSQL
# (5432) or Redis (6379): a redis-server on CHAOS_REDIS_PORT (6390), a PostgreSQL cluster
# initdb'd into a temporary directory on CHAOS_PG_PORT (5440, trust auth, database
# `chaos` with pgvector; local/install-pgvector.sh is run against that cluster when the
# extension is missing), and the fake-openai provider. Everything is stopped and removed
# on exit, Ctrl-C included (CHAOS_KEEP=1 keeps the work directory and its logs).
#
# Usage: scripts/chaos.sh
#   CHAOS_PHASE_SECS=12      length of each phase (8-60)
#   CHAOS_REDIS_PORT=6390 CHAOS_PG_PORT=5440
#   CHAOS_MAX_CONNECTIONS=4096   HTTP_MAX_CONNECTIONS of the functions
#   CHAOS_SLOW_CONNS=2000    slow connections of phase 6
#   CHAOS_STRICT=1           exit 1 when the service showed a problem (default: report only)
#   CHAOS_KEEP=1             keep the work directory (logs, raw results)
#   CHAOS_NO_BUILD=1         skip the build and use the release binaries already there
# Builds with `cargo build --release -p chat -p ingest -p health -p fake-openai`
# (honours CARGO_TARGET_DIR). Runs as root (PostgreSQL runs as the postgres user through
# runuser). About 2 minutes after the build with the default phase length.
set -euo pipefail
cd "$(dirname "$0")/.."

PHASE_SECS=${CHAOS_PHASE_SECS:-12}
REDIS_PORT=${CHAOS_REDIS_PORT:-6390}
PG_PORT=${CHAOS_PG_PORT:-5440}
MAX_CONNECTIONS=${CHAOS_MAX_CONNECTIONS:-4096}
SLOW_CONNS=${CHAOS_SLOW_CONNS:-2000}
STREAM_IDLE_MS=2000
HEADER_TIMEOUT_MS=2000
target=${CARGO_TARGET_DIR:-target}

log() { printf '%s [chaos] %s\n' "$(date +%T)" "$*"; }
die() { printf '%s [chaos] ERROR: %s\n' "$(date +%T)" "$*" >&2; exit 1; }

[[ $PHASE_SECS =~ ^[0-9]+$ ]] && ((PHASE_SECS >= 8 && PHASE_SECS <= 60)) || die "CHAOS_PHASE_SECS must be 8-60, got $PHASE_SECS"
[[ $REDIS_PORT != 6379 ]] || die "CHAOS_REDIS_PORT must not be the machine's Redis port 6379"
[[ $PG_PORT != 5432 ]] || die "CHAOS_PG_PORT must not be the machine's PostgreSQL port 5432"
[[ $(id -u) == 0 ]] || die "run as root (PostgreSQL is started as the postgres user with runuser)"
for tool in python3 curl redis-server redis-cli psql runuser; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $pgbin/initdb && -x $pgbin/pg_ctl ]] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"

# 2,000 slow connections plus the load need descriptors (client and servers inherit this).
hard=$(ulimit -Hn)
want=65536
if [[ $hard != unlimited ]] && ((hard < want)); then want=$hard; fi
ulimit -n "$want" 2>/dev/null || true
(( $(ulimit -n) > SLOW_CONNS + 1000 )) || die "open-file limit $(ulimit -n) is too low for $SLOW_CONNS slow connections"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_free "$REDIS_PORT" || die "port $REDIS_PORT is in use (set CHAOS_REDIS_PORT)"
port_free "$PG_PORT" || die "port $PG_PORT is in use (set CHAOS_PG_PORT)"

if [[ ${CHAOS_NO_BUILD:-} == 1 ]]; then
  log "CHAOS_NO_BUILD=1: using the release binaries already in $target/release"
else
  log "building release binaries (cargo build --release -p chat -p ingest -p health -p fake-openai)"
  cargo build --release --quiet -p chat -p ingest -p health -p fake-openai
fi
for bin in chat ingest health fake-openai; do
  [[ -x $target/release/$bin ]] || die "$target/release/$bin is missing (build it, or unset CHAOS_NO_BUILD)"
done

# ---------------------------------------------------------------------------------------
# Work directory and cleanup.
work=$(mktemp -d /tmp/chaos.XXXXXX)
chmod 755 "$work"
redis_pid=""
pids=()
bg=()
cleaned=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -z $cleaned ]] || exit "$rc"
  cleaned=1
  set +e
  for p in "${bg[@]}"; do kill "$p" 2>/dev/null; done
  if [[ -n $redis_pid ]]; then kill -CONT "$redis_pid" 2>/dev/null; kill "$redis_pid" 2>/dev/null; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  if [[ -f $work/pg/postmaster.pid ]]; then
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" stop -m immediate >/dev/null 2>&1
  fi
  sleep 0.2
  for p in "${bg[@]}" "${pids[@]}" $redis_pid; do
    kill -0 "$p" 2>/dev/null && { sleep 2; kill -9 "$p" 2>/dev/null; }
    wait "$p" 2>/dev/null
  done
  if [[ ${CHAOS_KEEP:-} == 1 ]]; then
    log "work directory kept: $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

wait_for() { # description seconds command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what did not come up within ${secs}s"
    sleep 0.1
  done
}

# ---------------------------------------------------------------------------------------
# Our own Redis.
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --logfile "$work/redis.log" --dir "$work" &
  redis_pid=$!
  wait_for "redis on $REDIS_PORT" 10 redis-cli -p "$REDIS_PORT" ping
}
log "starting redis-server on 127.0.0.1:$REDIS_PORT"
start_redis

# Our own PostgreSQL cluster.
log "initdb into $work/pg ($pgbin); PostgreSQL on 127.0.0.1:$PG_PORT"
# The data directory and the run directory (socket, server log) belong to postgres.
mkdir -p "$work/pg" "$work/pgrun"
chown postgres:postgres "$work/pg" "$work/pgrun"
runuser -u postgres -- "$pgbin/initdb" -D "$work/pg" -A trust -U postgres --no-sync >"$work/initdb.log" 2>&1 \
  || { tail -20 "$work/initdb.log"; die "initdb failed"; }
cat >>"$work/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
fsync = off
shared_buffers = 64MB
max_connections = 60
CONF
pg_start() {
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pgrun/pg.log" -w -t 30 \
    -o "-p $PG_PORT -k $work/pgrun" start >/dev/null
}
pg_stop_immediate() { runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" stop -m immediate >/dev/null; }
pg_start || { tail -20 "$work/pgrun/pg.log"; die "PostgreSQL did not start"; }
pg_url="postgres://postgres@127.0.0.1:$PG_PORT"
psql "$pg_url/postgres" -qAt -c "CREATE DATABASE chaos" >/dev/null
if ! psql "$pg_url/chaos" -qAt -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null 2>&1; then
  log "pgvector is missing: local/install-pgvector.sh (against this throwaway cluster)"
  PGVECTOR_CHECK_URL="$pg_url/postgres" local/install-pgvector.sh
  psql "$pg_url/chaos" -qAt -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null
fi

# The fake provider.
fake_port=$(free_port)
"$target/release/fake-openai" --port "$fake_port" 2>"$work/fake.log" &
pids+=($!)
fake="http://127.0.0.1:$fake_port"
wait_for "fake-openai" 10 curl -sf "$fake/_fake/calls"

# The functions, standalone (PORT set, no AWS_LAMBDA_RUNTIME_API).
key="chaos-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
run_id=$(date +%H%M%S)
common_env=(
  PATH="$PATH"
  DATABASE_URL="$pg_url/chaos"
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  API_KEYS="chaos:$(printf %s "$key" | sha256sum | cut -d' ' -f1)"
  LOG_LEVEL=info
  HTTP_HEADER_TIMEOUT_MS=$HEADER_TIMEOUT_MS
  HTTP_MAX_CONNECTIONS=$MAX_CONNECTIONS
  RATE_LIMIT_REQUESTS=1000000
  RATE_LIMIT_WINDOW_SECS=60
  REDIS_RETRY_MS=1000
  REDIS_TIMEOUT_MS=250
  DATABASE_TIMEOUT_MS=2000
  HEALTH_TIMEOUT_MS=500
  CACHE_PREFIX="chaos$run_id"
)
chat_env=(
  LLM_BASE_URL="$fake/v1" LLM_MODEL=gpt-4o-mini LLM_FALLBACK_MODELS=gpt-4o-backup
  LLM_STREAM_IDLE_MS=$STREAM_IDLE_MS LLM_TIMEOUT_MS=10000 CHAT_DEADLINE_MS=20000
  MAX_CONCURRENT_SESSIONS=40 BREAKER_OPEN_SECS=5
)
declare -A port
for fn in chat ingest health; do
  port[$fn]=$(free_port)
  extra=()
  [[ $fn == chat ]] && extra=("${chat_env[@]}")
  env -i "${common_env[@]}" "${extra[@]}" PORT="${port[$fn]}" \
    "$target/release/$fn" >"$work/$fn.log" 2>&1 &
  pids+=($!)
done
for fn in chat ingest health; do
  # Any HTTP answer means it serves (chat and ingest answer 404 on /health).
  wait_for "$fn on port ${port[$fn]}" 30 curl -s -o /dev/null "http://127.0.0.1:${port[$fn]}/health"
done
chat="http://127.0.0.1:${port[chat]}"
ingest="http://127.0.0.1:${port[ingest]}"
health="http://127.0.0.1:${port[health]}"
log "chat $chat, ingest $ingest, health $health, fake provider $fake"
log "settings: HTTP_HEADER_TIMEOUT_MS=$HEADER_TIMEOUT_MS HTTP_MAX_CONNECTIONS=$MAX_CONNECTIONS LLM_STREAM_IDLE_MS=$STREAM_IDLE_MS REDIS_RETRY_MS=1000 REDIS_TIMEOUT_MS=250 MAX_CONCURRENT_SESSIONS=40 BREAKER_OPEN_SECS=5"
python3 scripts/chaos_load.py seed --ingest "$ingest" --key "$key" || die "could not seed the knowledge base"
cat <<LEGEND
Load per phase: chat completions 10/s (unique prompts, retrieval on, cache off), GET /search 10/s,
POST /documents 5/s (unique, ~3 chunks), GET /v1/models 3/s; each on a new connection, client
deadline 35 s, latency from the scheduled start. Columns: ok = 2xx, 4xx = 4xx but 429, 500 = any
5xx but 503, conn = connection errors and client timeouts, late = past the deadline, degr = answers
with x-degraded; "fault:" = the requests started while the fault was active.
LEGEND

# ---------------------------------------------------------------------------------------
# Phases.
fault_file="$work/fault"
load_args=(--chat "$chat" --ingest "$ingest" --health "$health" --key "$key" --out "$work"
  --run-id "$run_id" --fault-file "$fault_file" --secs "$PHASE_SECS")
half=$((PHASE_SECS / 2))

start_load() { # phase
  python3 scripts/chaos_load.py load --phase "$1" "${load_args[@]}" &
  load_pid=$!
  bg+=("$load_pid")
}
end_phase() { # phase [target p50 ms during the fault]
  wait "$load_pid" || log "load generator exited with $?"
  rm -f "$fault_file"
  python3 scripts/chaos_load.py phase-report --out "$work" --phase "$1" --target-p50 "${2:-}"
}
fault_on() { log "fault: $*"; touch "$fault_file"; }
fault_off() { log "recovered: $*"; rm -f "$fault_file"; }
sleep_until() { # seconds since phase start
  local left
  left=$(python3 -c "import time; print(max(0.0, $phase_t0 + $1 - time.time()))")
  sleep "$left"
}
begin_phase() {
  echo
  log "=== phase $1 (${PHASE_SECS}s)"
  phase_t0=$(date +%s.%N)
  start_load "$1"
}

begin_phase 1-baseline
end_phase 1-baseline

begin_phase 2-redis-frozen
sleep_until 2
kill -STOP "$redis_pid"
fault_on "redis frozen (kill -STOP $redis_pid)"
sleep_until $((PHASE_SECS - 2))
kill -CONT "$redis_pid"
fault_off "redis resumed (kill -CONT)"
end_phase 2-redis-frozen 50

begin_phase 3-redis-killed
sleep_until 2
kill -9 "$redis_pid"
wait "$redis_pid" 2>/dev/null || true
fault_on "redis killed (kill -9)"
sleep_until "$half"
start_redis
fault_off "redis restarted on $REDIS_PORT (pid $redis_pid)"
end_phase 3-redis-killed

begin_phase 4-postgres-down
sleep_until 2
pg_stop_immediate
fault_on "postgres stopped (pg_ctl stop -m immediate)"
sleep_until "$half"
pg_start || { tail -20 "$work/pgrun/pg.log"; die "PostgreSQL did not restart"; }
fault_off "postgres restarted"
end_phase 4-postgres-down

begin_phase 5-upstream-stalled
curl -sf -X PUT "$fake/_fake/behaviour" -d '{"stall_stream_after": 1}' >/dev/null
fault_on "fake provider stalls streams after the first chunk; streamed chats at 4/s for $((PHASE_SECS - 3))s"
python3 scripts/chaos_load.py streams --chat "$chat" --key "$key" --phase 5-upstream-stalled \
  --out "$work" --run-id "$run_id" --secs "$((PHASE_SECS - 3))" --rate 4 &
streams_pid=$!
bg+=("$streams_pid")
wait "$streams_pid" || log "stream client exited with $?"
curl -sf -X PUT "$fake/_fake/behaviour" -d '{}' >/dev/null
fault_off "fake provider back to normal"
end_phase 5-upstream-stalled
python3 scripts/chaos_load.py streams-report --out "$work" --phase 5-upstream-stalled --idle-ms "$STREAM_IDLE_MS"
sessions=$(curl -s -H "authorization: Bearer $key" "$chat/v1/metrics" | grep -E '^chat_concurrent_sessions' | tr '\n' ' ' || true)
echo "${sessions:-no chat_concurrent_sessions gauge}" >"$work/sessions"
echo "   slots after the streams ended (chat /v1/metrics): $(cat "$work/sessions")"

begin_phase 6-slowloris
python3 scripts/chaos_load.py slowloris --port "${port[chat]}" --conns "$SLOW_CONNS" \
  --secs "$PHASE_SECS" --out "$work/slowloris.json" &
slow_pid=$!
bg+=("$slow_pid")
fault_on "$SLOW_CONNS slow connections against chat (a header line a second)"
wait "$slow_pid" || log "slowloris client exited with $?"
fault_off "slow connections closed"
end_phase 6-slowloris
python3 - "$work/slowloris.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print("   slowloris: peak %(peak_open)d open of %(target_conns)d, %(opened)d opened, %(closed_by_server)d closed by the server "
      "(503 over cap: %(answered_503)d, 408: %(answered_408)d, other answers: %(answered_other)d), "
      "connection lifetime p50 %(lifetime_p50_s)s s, max %(lifetime_max_s)s s" % s)
PY

# ---------------------------------------------------------------------------------------
# Integrity and summary.
echo
log "=== integrity check and summary"
sleep 1
psql "$pg_url/chaos" -qAt -c "SELECT d.id, d.chunk_count, count(c.id) FROM documents d LEFT JOIN chunks c ON c.document_id = d.id GROUP BY d.id, d.chunk_count" >"$work/db_counts"
psql "$pg_url/chaos" -qAt -c "SELECT count(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.id = c.document_id)" >"$work/db_orphans"
python3 scripts/chaos_load.py report --out "$work" --ingest "$ingest" --key "$key" \
  --db-counts "$work/db_counts" --db-orphans "$work/db_orphans" --sessions "$work/sessions"

echo
echo "LOGS (warn/error lines by function and message)"
python3 - "$work" <<'PY'
import collections, json, sys
for fn in ("chat", "ingest", "health"):
    c = collections.Counter()
    try:
        lines = open("%s/%s.log" % (sys.argv[1], fn), errors="replace").read().splitlines()
    except OSError:
        continue
    for line in lines:
        try:
            j = json.loads(line)
        except ValueError:
            if line.strip():
                c[("raw", line[:120])] += 1
            continue
        level = str(j.get("level", "")).upper()
        if level in ("WARN", "ERROR"):
            fields = j.get("fields") or {}
            msg = fields.get("message") or j.get("message") or ""
            err = fields.get("error") or j.get("error") or ""
            c[(level, (msg + (": " + str(err) if err else ""))[:150])] += 1
    print("  %s: %d warn/error lines" % (fn, sum(c.values())))
    for (level, msg), n in c.most_common(6):
        print("    %5d %-5s %s" % (n, level, msg))
PY

bad=$(cat "$work/verdict")
echo
if [[ $bad == 0 ]]; then
  log "verdict: degraded gracefully (no unexpected 5xx, nothing past deadline, no lost or partial documents)"
else
  log "verdict: $bad problem(s) above (unexpected 5xx, requests past deadline, lost/partial documents)"
  [[ ${CHAOS_STRICT:-} == 1 ]] && exit 1
fi
exit 0
