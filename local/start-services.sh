#!/usr/bin/env bash
# Starts the local services without Docker (O2): PostgreSQL, Redis and moto's server
# (DynamoDB-, S3- and ElastiCache-compatible). Installs them from Debian packages / PyPI
# when missing. Idempotent: services already answering are left alone.
#
# Usage: local/start-services.sh [--postgres] [--redis] [--moto]   (no flag: all three)
set -euo pipefail

want_pg=0 want_redis=0 want_moto=0
if [ $# -eq 0 ]; then want_pg=1 want_redis=1 want_moto=1; fi
for arg in "$@"; do
  case "$arg" in
    --postgres) want_pg=1 ;;
    --redis) want_redis=1 ;;
    --moto) want_moto=1 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then echo "$what is up"; return 0; fi
    sleep 0.5
  done
  echo "$what did not come up" >&2
  return 1
}

if [ $want_pg = 1 ]; then
  if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    version=$(ls /etc/postgresql | sort -V | tail -1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  wait_for "PostgreSQL (127.0.0.1:5432)" pg_isready -h 127.0.0.1 -p 5432
  # pgvector for the knowledge base (built from Debian's source package when missing).
  "$(dirname "$0")/install-pgvector.sh"
  # Databases used by tests (test) and by `make run-services` (chatkb).
  for db in test chatkb; do
    psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
      || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $db"
  done
fi

if [ $want_redis = 1 ]; then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/chatkb.log
  fi
  wait_for "Redis (127.0.0.1:6379)" redis-cli -h 127.0.0.1 -p 6379 ping
fi

if [ $want_moto = 1 ]; then
  if ! curl -s -o /dev/null http://127.0.0.1:5000/moto-api/ 2>/dev/null; then
    python3 -c "import moto.server" 2>/dev/null || python3 -m pip install --quiet "moto[server]"
    mkdir -p .data
    nohup python3 -m moto.server -H 127.0.0.1 -p 5000 >.data/moto.log 2>&1 &
  fi
  wait_for "moto (DynamoDB/S3/ElastiCache emulator, 127.0.0.1:5000)" curl -sf -o /dev/null http://127.0.0.1:5000/moto-api/
fi
