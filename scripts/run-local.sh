#!/usr/bin/env bash
# Runs every function under `cargo lambda watch` on one base URL (default http://127.0.0.1:9000).
# Usage: scripts/run-local.sh [env-file]   (default local/embedded.env)
# Variables set in the environment override the env file.
set -euo pipefail
cd "$(dirname "$0")/.."
env_file=${1:-local/embedded.env}
# The base URL's port: PORT_LAMBDA, or PORT, else 9000.
port=${PORT_LAMBDA:-${PORT:-9000}}
case "$port" in
  ''|*[!0-9]*) echo "make run: PORT/PORT_LAMBDA must be a port number, not \`$port\`" >&2; exit 2 ;;
esac
scripts/ensure-cargo-lambda.sh
mkdir -p .data
# Variables already set in the environment win over the env file, so
# `DATABASE_URL=postgres://... make run` does what it says.
# One file per port, so two servers (yours and a test's) never rewrite each other's.
effective_env=.data/run-${port}.env
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
if [ ! -d "${CARGO_TARGET_DIR:-target}/debug" ]; then
  echo "Building the functions: the first build compiles about 360 crates, 5-10 minutes on"
  echo "two idle cores (20 or more on busy ones); later builds take seconds."
else
  echo "Building the functions..."
fi
# RUN_FEATURES: cargo features of the functions, e.g. local-embedder (make run-semantic).
features=()
if [ -n "${RUN_FEATURES:-}" ]; then
  for feature in ${RUN_FEATURES//,/ }; do
    features+=(--features "ingest/$feature,chat/$feature")
  done
fi
cargo build --workspace --bins "${features[@]}"
# Each function checks its configuration before anything is served: a bad variable is
# reported here, once, and make run stops (instead of serving requests that hang).
bins=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
for function in health chat ingest backup; do
  if ! (set -a; . "./$effective_env"; set +a; "$bins/$function" --check-config >/dev/null); then
    echo "make run: $function's configuration is invalid (see above); fix $env_file or the environment" >&2
    exit 1
  fi
done
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
exec cargo lambda watch "${features[@]}" --invoke-address 127.0.0.1 --invoke-port "$port" --disable-cors --env-file "$effective_env"
