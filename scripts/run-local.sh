#!/usr/bin/env bash
# Runs every function under `cargo lambda watch` on one base URL (default http://127.0.0.1:9000).
# Usage: scripts/run-local.sh [env-file]   (default local/embedded.env)
# Variables set in the environment override the env file.
set -euo pipefail
cd "$(dirname "$0")/.."
env_file=${1:-local/embedded.env}
port=${PORT_LAMBDA:-9000}
scripts/ensure-cargo-lambda.sh
mkdir -p .data
# Variables already set in the environment win over the env file, so
# `DATABASE_URL=postgres://... make run` does what it says.
effective_env=.data/run.env
: >"$effective_env"
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in ''|'#'*) continue ;; esac
  key=${line%%=*}
  if [ -z "${!key+set}" ]; then
    printf '%s\n' "$line" >>"$effective_env"
  else
    echo "using $key from the environment (not from $env_file)"
  fi
done <"$env_file"
echo "Building the functions (first time: a few minutes)..."
cargo build --workspace --bins
cat <<MSG

  Functions are served on http://127.0.0.1:${port} with the deployed API's paths:
    health  http://127.0.0.1:${port}/health  /health/live  /health/ready  /health/detailed  /health/metrics
    chat    http://127.0.0.1:${port}/v1/chat/completions  /v1/models  /v1/metrics
    ingest  http://127.0.0.1:${port}/documents  /search  /events
    backup  http://127.0.0.1:${port}/backups

  Try:
    curl -s http://127.0.0.1:${port}/health/ready
    curl -s http://127.0.0.1:${port}/health/metrics
    curl -s -H 'x-api-key: local-dev-key' -H 'content-type: text/markdown' --data-binary @README.md 'http://127.0.0.1:${port}/documents?id=readme'
    curl -s -H 'authorization: Bearer local-dev-key' -H 'content-type: application/json' http://127.0.0.1:${port}/v1/chat/completions \
      -d '{"messages":[{"role":"user","content":"How do I run the tests?"}]}'
    cargo lambda invoke health --invoke-address 127.0.0.1 --invoke-port ${port} --data-file events/health-scheduled.json

  Configuration: ${env_file} (local API key: local-dev-key). Stop with Ctrl-C.

MSG
exec cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$port" --disable-cors --env-file "$effective_env"
