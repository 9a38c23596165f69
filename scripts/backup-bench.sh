#!/usr/bin/env bash
# Backup, verify and restore with the release binary (what an operator runs), on SQLite
# and PostgreSQL at two sizes: wall time, rows per second, stored size and peak memory
# (max RSS) of each command. Memory that stays flat as the data grows 4x is the point:
# tables are streamed in batches, never loaded whole.
# Usage: scripts/backup-bench.sh   (BACKUP_BENCH_DOCS="2500 10000" by default; 4 chunks each)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${BACKUP_BENCH_DOCS:-"2500 10000"}
admin=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
cargo build --quiet --release -p backup --bin backup --example seed
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target/release/backup
seed=$target/release/examples/seed
work=$(mktemp -d)
databases=()
cleanup() {
  for name in "${databases[@]}"; do psql -q "$admin" -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

new_database() { # kind label -> URL
  if [ "$1" = sqlite ]; then
    echo "sqlite://$work/$2.db"
  else
    local name="backup_bench_$2_$$"
    psql -q "$admin" -c "CREATE DATABASE $name" >/dev/null
    databases+=("$name")
    echo "${admin%/*}/$name"
  fi
}

measure() { # prints "seconds max_rss_mb"; the rest are env assignments and the command
  /usr/bin/time -f "%e %M" -o "$work/time" env LOG_LEVEL=warn "$@" >"$work/out" 2>"$work/err" \
    || { cat "$work/err" >&2; exit 1; }
  read -r secs kb <"$work/time"
  echo "$secs $((kb / 1024))"
}

echo "| database | documents | rows | stored | backup | peak RSS | verify | restore (empty target) | peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|"
for kind in sqlite postgres; do
  for docs in $sizes; do
    source_url=$(new_database "$kind" "src$docs")
    target_url=$(new_database "$kind" "dst$docs")
    "$seed" "$source_url" "$docs" 384 >/dev/null
    rows=$((docs * 5 + 5020))
    store="file://$work/backups-$kind-$docs"
    read -r b_secs b_rss < <(measure DATABASE_URL="$source_url" BACKUP_URL="$store" "$bin" run)
    stored=$(du -sm "${store#file://}" | cut -f1)
    read -r v_secs _ < <(measure DATABASE_URL="$source_url" BACKUP_URL="$store" "$bin" verify latest)
    read -r r_secs r_rss < <(measure DATABASE_URL="$target_url" BACKUP_URL="$store" "$bin" restore latest)
    rate() { python3 -c "print(f'{$1 / max($2, 0.01):,.0f}')"; }
    echo "| $kind | $docs | $rows | ${stored} MB | ${b_secs} s ($(rate "$rows" "$b_secs") rows/s) | ${b_rss} MB | ${v_secs} s | ${r_secs} s ($(rate "$rows" "$r_secs") rows/s) | ${r_rss} MB |"
  done
done
