#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what is missing
# (Debian's postgresql and chromium, cargo-nextest, the pinned test tools of
# tests/requirements.txt, kubectl; see tests/install-tools.sh), starts one
# throwaway PostgreSQL cluster for the run (temp dir, free port; each test
# makes its own database in it), runs every test of the workspace, and tears
# the cluster down.
# Extra arguments go to `cargo nextest run` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

# Sets PG_BIN and exports the LEADGER_* tool paths.
source tests/install-tools.sh

PG_DIR="$(mktemp -d /tmp/leadger-test-pg.XXXXXX)"
PG_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$PG_DIR"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi
stop_pg() {
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
}
trap stop_pg EXIT

as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust --no-sync >/dev/null
# Durability settings are relaxed for speed: the tests kill processes, not
# the machine. Benchmarks use a durable cluster of their own.
as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PG_DIR -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c wal_recycle=off" >/dev/null
export LEADGER_TEST_PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
echo "tests/run.sh: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on port $PG_PORT" >&2

bash tests/fuzz.sh
cargo nextest run --workspace --no-fail-fast "$@"
