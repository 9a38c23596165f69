#!/usr/bin/env bash
# Installs the pgvector extension into the local PostgreSQL when `CREATE EXTENSION vector`
# is not available. This Debian release has no pgvector 0.8 binary for PostgreSQL 15, so it
# builds Debian's own source package (from the next release's sources) against
# postgresql-server-dev-<version> with PGXS: about a minute on two cores.
set -euo pipefail

pg_url=${PGVECTOR_CHECK_URL:-postgres://postgres@127.0.0.1:5432/postgres}
available() {
  psql "$pg_url" -tAc "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'" 2>/dev/null | grep -q 1
}
if available; then
  echo "pgvector is available"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
version=$(psql "$pg_url" -tAc "SHOW server_version_num" | cut -c1-2)
sources=/etc/apt/sources.list.d/chatkb-pgvector-src.sources
if [ ! -f "$sources" ]; then
  cat >"$sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends dpkg-dev build-essential "postgresql-server-dev-${version}" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source -qq pgvector >/dev/null 2>&1 || apt-get source pgvector
cd pgvector-*/
make -s PG_CONFIG="/usr/lib/postgresql/${version}/bin/pg_config" OPTFLAGS=""
make -s install PG_CONFIG="/usr/lib/postgresql/${version}/bin/pg_config"
if available; then
  echo "pgvector installed"
else
  echo "pgvector build finished but the extension is not available" >&2
  exit 1
fi
