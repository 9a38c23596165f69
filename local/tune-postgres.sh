#!/usr/bin/env bash
# Gives the local PostgreSQL the memory a vector knowledge base needs, as a production
# instance would have it (RDS sets shared_buffers to about a quarter of the instance's
# memory; Debian's default is 128 MB). A 100k-chunk corpus of 384-d vectors has a ~200 MB
# HNSW index and ~200 MB of chunks: with 128 MB of buffers every search reads hundreds of
# pages back from the OS. Restarts the cluster only when the setting changes.
#
# Usage: local/tune-postgres.sh [shared_buffers]   (default 2GB)
set -euo pipefail
want=${1:-2GB}
psql_admin() { psql -h 127.0.0.1 -U postgres -d postgres -Atc "$1"; }
current=$(psql_admin "SELECT setting FROM pg_settings WHERE name = 'shared_buffers'")
target=$(psql_admin "SELECT pg_size_bytes('$want') / 8192")
if [ "$current" = "$target" ]; then
  echo "shared_buffers is already $want"
  exit 0
fi
psql_admin "ALTER SYSTEM SET shared_buffers = '$want'" >/dev/null
version=$(ls /etc/postgresql | sort -V | tail -1)
pg_ctlcluster --skip-systemctl-redirect "$version" main restart
for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break; sleep 0.5; done
echo "shared_buffers is now $(psql_admin 'SHOW shared_buffers') (PostgreSQL restarted)"
