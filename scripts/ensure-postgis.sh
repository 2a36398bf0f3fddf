#!/usr/bin/env bash
# Make PostgreSQL + PostGIS ready for the test suite on this machine kind (Debian, PostgreSQL 15).
# Starts the cluster if it is down, installs PostGIS if missing (needs root), and creates the
# extension in the test database. Under CI=true any failure here fails the run; elsewhere it
# warns, and the PostGIS tests skip with that reason.
set -u
url_db="${LOWALT_TEST_ADMIN_DB:-test}"
psql_q() { psql -h 127.0.0.1 -U postgres -d "$url_db" -tAqc "$1" 2>/dev/null; }
fail() {
  echo "ensure-postgis: $1" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  exit 0
}
command -v psql >/dev/null || fail "psql not found: install PostgreSQL 15 or set CI!=true to skip PostGIS tests"
if ! psql_q "select 1" >/dev/null; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect 15 main start >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do psql_q "select 1" >/dev/null && break; sleep 1; done
  fi
fi
psql_q "select 1" >/dev/null || fail "PostgreSQL is not answering at 127.0.0.1:5432"
if [ "$(psql_q "select count(*) from pg_available_extensions where name = 'postgis'")" != "1" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "ensure-postgis: installing postgresql-15-postgis-3" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq postgresql-15-postgis-3 >/dev/null \
      || fail "apt-get install postgresql-15-postgis-3 failed"
  else
    fail "PostGIS is not installed and this user cannot install it"
  fi
fi
psql_q "create extension if not exists postgis" >/dev/null || fail "CREATE EXTENSION postgis failed"
echo "ensure-postgis: PostgreSQL + PostGIS ready" >&2
