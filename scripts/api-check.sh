#!/usr/bin/env bash
# The OpenAPI contract (issue 17, item 4), run by `make test`:
# 1. scripts/check-openapi.py: every route of the routers is documented and every
#    documented route is served; the spec validates.
# 2. schemathesis against the four functions as standalone servers (the debug binaries,
#    a fresh SQLite database): no 5xx, every status, content type and body as the spec
#    says, for generated valid and invalid requests. A fixed seed keeps CI repeatable;
#    API_CHECK_SEED=random (or a number) explores other inputs.
# Usage: scripts/api-check.sh   (API_CHECK_EXAMPLES=30 cases per operation by default)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
spec=$root/docs/openapi.yaml
examples=${API_CHECK_EXAMPLES:-30}
seed=${API_CHECK_SEED:-1}

python3 scripts/check-openapi.py --self-test
python3 scripts/check-openapi.py

command -v schemathesis >/dev/null 2>&1 || python3 -m pip install --quiet "schemathesis>=4.32,<5"
cargo build --quiet --bins -p health -p chat -p ingest -p backup
bins=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
declare -A ports
for function in health chat ingest backup; do
  ports[$function]=$(free_port)
  # The local key (local-dev-key), limits out of the way (the fuzzer sends thousands of
  # requests, most of them invalid), everything else the embedded default.
  env -i PATH="$PATH" HOME="$HOME" \
    PORT="${ports[$function]}" \
    DATABASE_URL="sqlite://$work/app.db" \
    BACKUP_URL="file://$work/backups" \
    API_KEYS=local:ed5a18fb8f807f996d649e379d3f35f39c543a91bdbf88c492f2ebd10d4df86c \
    BACKUP_OPERATOR_KEYS=local \
    RATE_LIMIT_REQUESTS=1000000 AUTH_FAILURES_PER_MINUTE=1000000 \
    LOG_LEVEL=warn \
    "$bins/$function" >"$work/$function.log" 2>&1 &
  pids+=($!)
done
for function in health chat ingest backup; do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:${ports[$function]}/health/live" >/dev/null 2>&1 && break
    sleep 0.2
  done
done

failed=0
run() { # name, port, schemathesis options...
  local name=$1 port=$2
  shift 2
  echo "== api-check: schemathesis, $name"
  # In a folder of its own: schemathesis keeps a cache of past failures in the working
  # directory and replays them against whatever URL comes next.
  mkdir -p "$work/st-$name"
  if ! (cd "$work/st-$name" && schemathesis run "$spec" --url "http://127.0.0.1:$port" \
      --checks all --max-examples "$examples" --seed "$seed" --no-color "$@"); then
    failed=$((failed + 1))
    echo "api-check: $name FAILED; server log:"; tail -20 "$work/${name%%-*}.log"
  fi
}
key=(--header 'x-api-key: local-dev-key')
run health "${ports[health]}" --include-tag health --include-tag probes --phases examples,coverage,fuzzing
run chat "${ports[chat]}" "${key[@]}" --include-tag chat --include-tag probes --exclude-path /v1/usage \
  --phases examples,coverage,fuzzing
run chat-usage "${ports[chat]}" "${key[@]}" --include-path /v1/usage --phases examples,coverage,fuzzing
run ingest "${ports[ingest]}" "${key[@]}" --include-tag ingest --include-tag probes
run backup "${ports[backup]}" "${key[@]}" --include-tag backup --include-tag probes

if [ "$failed" -ne 0 ]; then
  echo "api-check: $failed schemathesis run(s) failed"
  exit 1
fi
echo "api-check: the routers match docs/openapi.yaml and schemathesis found no failure"
