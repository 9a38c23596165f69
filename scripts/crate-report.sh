#!/usr/bin/env bash
# What each function binary links: the number of crates in its normal (non-dev, non-build)
# dependency tree, and the crates that appear there in more than one version.
# Usage: scripts/crate-report.sh [package...]   (default: the four functions)
set -euo pipefail
cd "$(dirname "$0")/.."
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(health chat ingest backup)
for package in "${packages[@]}"; do
  tree=$(cargo tree -e normal -p "$package" --prefix none 2>/dev/null | sed 's/ (.*//' | sort -u)
  count=$(wc -l <<<"$tree")
  twice=$(awk '{print $1}' <<<"$tree" | sort | uniq -d | tr '\n' ' ')
  printf '%-12s %4s crates; in two or more versions: %s\n' "$package" "$count" "${twice:-none}"
done
