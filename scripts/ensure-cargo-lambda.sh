#!/usr/bin/env bash
# Installs cargo-lambda from PyPI (the package ships the binary) when it is missing.
set -euo pipefail
if command -v cargo-lambda >/dev/null 2>&1; then
  exit 0
fi
echo "cargo-lambda not found: installing it with pip (PyPI package cargo-lambda)..." >&2
python3 -m pip install --quiet cargo-lambda
if ! command -v cargo-lambda >/dev/null 2>&1; then
  echo "cargo-lambda was installed but is not on PATH; add pip's script folder ($(python3 -m site --user-base)/bin) to PATH" >&2
  exit 1
fi
