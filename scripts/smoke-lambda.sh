#!/usr/bin/env bash
# Lambda-mode smoke test: the functions under `cargo lambda watch` (what `make run` starts),
# called on one base URL the way a user and the deployed API call them.
# Prints "N passed, M failed" and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
port=${SMOKE_PORT:-9107}
base="http://127.0.0.1:${port}"
work=$(mktemp -d)
passed=0
failed=0

scripts/ensure-cargo-lambda.sh || exit 1

# API key "smoke-key" (only the SHA-256 is configured).
cat > "$work/smoke.env" <<ENV
DATABASE_URL=sqlite://${work}/app.db
BACKUP_URL=file://${work}/backups
BACKUP_OPERATOR_KEYS=smoke,local
DOCUMENTS_DIR=local/documents
API_KEYS=smoke:$(printf %s smoke-key | sha256sum | cut -d' ' -f1),local:$(printf %s local-dev-key | sha256sum | cut -d' ' -f1)
LOG_LEVEL=info
ENV

setsid cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$port" --disable-cors \
  --ignore-changes --env-file "$work/smoke.env" >"$work/watch.log" 2>&1 &
watch_pid=$!
cleanup() {
  kill -- -"$watch_pid" 2>/dev/null || kill "$watch_pid" 2>/dev/null
  wait "$watch_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

check() { # name, condition result (0 = ok), detail
  if [ "$2" -eq 0 ]; then
    passed=$((passed + 1)); echo "ok   $1"
  else
    failed=$((failed + 1)); echo "FAIL $1: $3"
  fi
}

# request METHOD PATH [curl args...] -> sets $status, $body, $ctype
request() {
  local out method=$1 path=$2
  shift 2
  out=$(curl -s -X "$method" -o "$work/body" -w '%{http_code} %{content_type}' "$@" "${base}${path}")
  status=${out%% *}
  ctype=${out#* }
  body=$(cat "$work/body")
}

# The first call to each function compiles and starts it: wait up to 5 minutes.
deadline=$((SECONDS + 300))
until curl -sf "${base}/health/live" >/dev/null 2>&1; do
  if [ $SECONDS -gt $deadline ]; then
    echo "cargo lambda watch did not serve /health/live in time:"; tail -50 "$work/watch.log"
    echo "0 passed, 1 failed"; exit 1
  fi
  sleep 1
done

request GET /health/ready
check "GET /health/ready is 200 JSON" $([ "$status" = 200 ] && [[ "$ctype" == application/json* ]] && grep -q '"ready"' <<<"$body"; echo $?) "$status $body"

request GET /health/detailed
check "GET /health/detailed reports version and dependencies" $(grep -q '"version"' <<<"$body" && grep -q '"dependencies"' <<<"$body"; echo $?) "$status $body"

request POST /health/ready
check "POST /health/ready is JSON 405" $([ "$status" = 405 ] && grep -q '"method_not_allowed"' <<<"$body"; echo $?) "$status $body"

key=(-H "x-api-key: smoke-key")
request GET /backups
check "backup routes need an API key (401)" $([ "$status" = 401 ]; echo $?) "$status $body"
request GET /backups "${key[@]}"
check "GET /backups with a key lists no backup yet" $([ "$status" = 200 ] && grep -q '"backups":\[\]' <<<"$body"; echo $?) "$status $body"

# The knowledge base as a user tries it: post a README, search a phrase, re-post, edit, delete.
request GET "/search?q=x"
check "ingest routes need an API key (401)" $([ "$status" = 401 ]; echo $?) "$status $body"
request POST "/documents?id=readme" "${key[@]}" -H "content-type: text/markdown" --data-binary @README.md
check "POST /documents (README.md) is created" $([ "$status" = 201 ] && grep -q '"created"' <<<"$body"; echo $?) "$status $body"
request POST "/documents?id=other" "${key[@]}" -H "content-type: text/plain" --data-binary "Staff parking is in the basement garage."
request GET "/search?q=cargo%20lambda%20watch%20router&k=3" "${key[@]}"
check "a phrase from the README finds it first" $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["results"][0]["document_id"]=="readme" and r["mode"]=="hybrid"' "$work/body" 2>/dev/null; echo $?) "$status $body"
# Chat on the embedded default: no provider, so a flagged retrieval-only answer citing it.
request POST /v1/chat/completions "${key[@]}" -H "content-type: application/json" -D "$work/headers" \
  --data '{"messages": [{"role": "user", "content": "Which command runs the product on the embedded default?"}]}'
check "chat answers retrieval-only, flagged, citing the README" $(grep -qi '^x-degraded: retrieval-only' "$work/headers" && python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["sources"][0]=="readme" and r["degraded"]=="retrieval-only"' "$work/body" 2>/dev/null; echo $?) "$status $body"
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet openai
python3 tests/openai_sdk.py "$base" smoke-key offline >"$work/sdk.out" 2>&1
check "the official OpenAI Python SDK works against chat (plain and streaming)" $? "$(cat "$work/sdk.out")"
request POST "/documents?id=readme" "${key[@]}" -H "content-type: text/markdown" --data-binary @README.md
check "posting the same README again is unchanged" $([ "$status" = 200 ] && grep -q '"unchanged"' <<<"$body"; echo $?) "$status $body"
request POST "/documents?id=readme" "${key[@]}" -H "content-type: text/markdown" --data-binary "# Changed

This document was rewritten about zebra migrations."
check "an edited document is updated" $(grep -q '"updated"' <<<"$body"; echo $?) "$status $body"
request GET "/search?q=cargo%20lambda%20watch%20router&k=3" "${key[@]}"
check "old chunks are gone after the edit" $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert all("cargo" not in x["snippet"].lower() for x in r["results"] if x["document_id"]=="readme")' "$work/body" 2>/dev/null; echo $?) "$status $body"
request GET "/search?q=zebra%20migrations&k=3" "${key[@]}"
check "the edited text is found" $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["results"][0]["document_id"]=="readme"' "$work/body" 2>/dev/null; echo $?) "$status $body"
request DELETE "/documents/readme" "${key[@]}"
request GET "/documents/readme" "${key[@]}"
check "a deleted document is 404" $([ "$status" = 404 ]; echo $?) "$status $body"
request GET "/events?after=0" "${key[@]}"
check "the event log shows uploaded/processed/indexed/deleted" $(grep -q document.deleted <<<"$body" && grep -q document.indexed <<<"$body"; echo $?) "$status $(head -c 300 <<<"$body")"

# Backups as an operator takes them: over HTTP, by the scheduled event, verified, and
# restored (refused over a database that holds rows, unless forced).
request POST /backups "${key[@]}"
check "POST /backups takes a backup (201, manifest)" $([ "$status" = 201 ] && grep -q '"content_sha256"' <<<"$body"; echo $?) "$status $(head -c 300 <<<"$body")"
result=$(cargo lambda invoke backup --invoke-address 127.0.0.1 --invoke-port "$port" \
  --data-file events/backup-scheduled.json 2>&1)
check "the scheduled event takes a backup" $(grep -q '"trigger":"schedule"' <<<"$result"; echo $?) "$(head -c 300 <<<"$result")"
request GET /backups "${key[@]}"
check "GET /backups lists two complete backups" $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert [b["status"] for b in r["backups"]]==["complete","complete"]' "$work/body" 2>/dev/null; echo $?) "$status $body"
request POST /backups/latest/verify "${key[@]}"
check "POST /backups/latest/verify is ok" $([ "$status" = 200 ] && grep -q '"ok"' <<<"$body"; echo $?) "$status $body"
request POST /backups/latest/restore "${key[@]}"
check "restore over a database with rows is 409" $([ "$status" = 409 ]; echo $?) "$status $body"
request POST /backups/latest/restore "${key[@]}" -H "content-type: application/json" -d '{"force": true}'
check "a forced restore is 200" $([ "$status" = 200 ] && grep -q '"restored"' <<<"$body"; echo $?) "$status $(head -c 300 <<<"$body")"

# Every sample event in events/, invoked as Lambda receives it (the events carry the local
# key): each gets a success or its documented error. A new file must be listed here.
events_in_order=(
  health-get health-live health-ready health-detailed health-metrics health-scheduled
  health-unknown-route:404 health-wrong-method:405
  ingest-documents-post ingest-documents-markdown ingest-documents-batch ingest-documents-list
  ingest-document-get ingest-search ingest-events ingest-document-delete ingest-s3-object-created
  ingest-scheduled
  # No provider here: the event names gpt-4o-mini, an unknown model (404, README "Chat");
  # with LLM_BASE_URL set it is answered (functions/chat/tests/chat.rs).
  chat-models chat-completions:404
  backup-create backup-list backup-get-latest backup-verify backup-restore backup-scheduled
  backup-invoke-list backup-invoke-verify "backup-invoke-restore:fails:not empty"
)
listed=$(printf '%s\n' "${events_in_order[@]}" | cut -d: -f1 | sort)
present=$(ls events | sed 's/\.json$//' | sort)
check "every file in events/ is invoked below" $([ "$listed" = "$present" ]; echo $?) "$(diff <(echo "$listed") <(echo "$present") | tr '\n' ' ')"
for entry in "${events_in_order[@]}"; do
  IFS=: read -r name expect detail <<<"$entry"
  function=${name%%-*}
  result=$(cargo lambda invoke "$function" --invoke-address 127.0.0.1 --invoke-port "$port" \
    --data-file "events/$name.json" 2>&1)
  code=$?
  status=$(python3 -c 'import json,sys; print(json.loads(sys.stdin.read()).get("statusCode", "-"))' <<<"$result" 2>/dev/null || echo "-")
  case "$expect" in
    fails) ok=$([ $code -ne 0 ] && grep -q "$detail" <<<"$result"; echo $?) ;;
    '') ok=$([ $code -eq 0 ] && { [ "$status" = - ] || [ "${status:0:1}" = 2 ]; }; echo $?) ;;
    *) ok=$([ $code -eq 0 ] && [ "$status" = "$expect" ]; echo $?) ;;
  esac
  check "events/$name.json -> ${expect:-success}${detail:+ ($detail)}" "$ok" "exit $code, status $status: $(head -c 300 <<<"$result")"
done

request GET /health/metrics
if command -v promtool >/dev/null 2>&1; then
  promtool check metrics <"$work/body" >"$work/promtool.out" 2>&1
  check "/health/metrics passes promtool check metrics" $? "$(cat "$work/promtool.out")"
else
  echo "skip /health/metrics promtool check (promtool not installed; .ci/run installs it)"
fi
check "/health/metrics counts requests" $(grep -q '^http_requests_total{function="health",route="/health/ready",status="200"}' "$work/body"; echo $?) "$(head -5 "$work/body")"

result=$(cargo lambda invoke health --invoke-address 127.0.0.1 --invoke-port "$port" \
  --data-file events/health-scheduled.json 2>&1)
check "scheduled event runs the deep check" $(grep -q '"status":"ok"' <<<"$result" && grep -q '"health_checks"' <<<"$result"; echo $?) "$result"

request GET /health/metrics
check "deep check is recorded as a metric" $(grep -q '^health_deep_checks_total{status="ok"} [1-9]' "$work/body"; echo $?) "$(grep deep "$work/body")"

check "function logs are JSON with request fields" $(grep -m1 '"request completed"' "$work/watch.log" | python3 -c 'import json,sys; l=json.loads(sys.stdin.readline()); assert all(k in l for k in ("request_id","function","route","status","duration_ms","cold_start"))' 2>/dev/null; echo $?) "$(grep 'request completed' "$work/watch.log" | head -1)"

check "request logs name the API key that made the request, never the key itself" $(grep -q '"request completed".*"key":"smoke"' "$work/watch.log" && ! grep -q 'smoke-key' "$work/watch.log"; echo $?) "named: $(grep -c '"request completed".*"key":"smoke"' "$work/watch.log"); the key itself: $(grep -m1 -o '.\{80\}smoke-key.\{40\}' "$work/watch.log")"

check "no runtime warning about AWS_LAMBDA_MAX_CONCURRENCY" $(! grep -q 'AWS_LAMBDA_MAX_CONCURRENCY' "$work/watch.log"; echo $?) "$(grep -m1 AWS_LAMBDA_MAX_CONCURRENCY "$work/watch.log")"

# A function whose configuration is wrong answers at once with a JSON 503 naming the
# variable (issue 12, finding 2), instead of leaving the caller waiting.
bad_port=$((port + 1))
printf 'DATABASE_URL=mysql://x\nLOG_LEVEL=info\n' >"$work/bad.env"
setsid cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$bad_port" --disable-cors \
  --ignore-changes --env-file "$work/bad.env" >"$work/bad-watch.log" 2>&1 &
bad_pid=$!
bad_status=000
for _ in $(seq 1 120); do
  bad_status=$(curl -s -m 60 -o "$work/bad-body" -w '%{http_code}' "http://127.0.0.1:${bad_port}/health/ready")
  [ "$bad_status" = 000 ] || break
  sleep 1
done
kill -- -"$bad_pid" 2>/dev/null || kill "$bad_pid" 2>/dev/null
wait "$bad_pid" 2>/dev/null
check "a misconfigured function answers a JSON 503 naming the variable" $([ "$bad_status" = 503 ] && grep -q 'DATABASE_URL' "$work/bad-body" && grep -q '"error"' "$work/bad-body"; echo $?) "$bad_status $(cat "$work/bad-body" 2>/dev/null)"

echo "${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
