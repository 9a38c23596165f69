#!/usr/bin/env bash
# The official OpenAI Python SDK against the chat function with the project's fake OpenAI
# server as the provider (C1): in standalone server mode (chunked streaming), then under
# `cargo lambda watch` with LAMBDA_RESPONSE_STREAMING (lambda_http's streaming responses,
# as behind a function URL with InvokeMode RESPONSE_STREAM). Both check that a streamed
# answer arrives incrementally. Installs the `openai` package when missing. Exits non-zero
# when any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet openai
cargo build --quiet -p chat -p fake-openai

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
fake_port=$(free_port)
chat_port=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$target/debug/fake-openai" --port "$fake_port" 2>"$work/fake.log" &
pids+=($!)
env -i PATH="$PATH" PORT="$chat_port" DATABASE_URL="sqlite://$work/app.db" \
  API_KEYS="sdk:$(printf %s sdk-key | sha256sum | cut -d' ' -f1)" \
  LLM_BASE_URL="http://127.0.0.1:$fake_port/v1" LLM_MODEL=gpt-4o-mini LLM_FALLBACK_MODELS=gpt-4o-backup \
  "$target/debug/chat" >"$work/chat.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:$fake_port/_fake/calls" >/dev/null && curl -s -o /dev/null "http://127.0.0.1:$chat_port/v1/models"; then
    break
  fi
  sleep 0.1
done

# The SDK checks and the first-byte check against one chat base URL; its log on failure.
client_checks() { # base-url log
  if ! python3 tests/openai_sdk.py "$1" sdk-key provider "http://127.0.0.1:$fake_port" \
    || ! python3 tests/first_byte.py "$1" sdk-key "http://127.0.0.1:$fake_port"; then
    echo "--- $2"; tail -30 "$2"
    exit 1
  fi
}
client_checks "http://127.0.0.1:$chat_port" "$work/chat.log"

echo "== the same under cargo lambda watch with streaming responses"
scripts/ensure-cargo-lambda.sh >/dev/null
watch_port=$(free_port)
cat > "$work/watch.env" <<ENV
LAMBDA_RESPONSE_STREAMING=true
DATABASE_URL=sqlite://$work/lambda.db
API_KEYS=sdk:$(printf %s sdk-key | sha256sum | cut -d' ' -f1)
LLM_BASE_URL=http://127.0.0.1:$fake_port/v1
LLM_MODEL=gpt-4o-mini
LLM_FALLBACK_MODELS=gpt-4o-backup
ENV
setsid cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$watch_port" --disable-cors \
  --ignore-changes --env-file "$work/watch.env" >"$work/watch.log" 2>&1 &
watch_pid=$!
pids+=(-"$watch_pid")
deadline=$((SECONDS + 300))
until curl -s -o /dev/null -f "http://127.0.0.1:$watch_port/v1/models" -H "x-api-key: sdk-key"; do
  if [ $SECONDS -gt $deadline ]; then echo "cargo lambda watch did not serve chat"; tail -30 "$work/watch.log"; exit 1; fi
  sleep 1
done
client_checks "http://127.0.0.1:$watch_port" "$work/watch.log"
