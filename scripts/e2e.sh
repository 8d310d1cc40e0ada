#!/usr/bin/env bash
# The end-to-end suite (tests/e2e.rs) against a real API server: builds the operator, the
# plugin and the suite, runs every e2e test one after another (a cluster-wide operator would
# act on the other tests' clusters), prints each test's result and time, then checks that
# nothing was left behind (namespaces, played Nodes, ClusterRoles, bindings).
#
#   scripts/e2e.sh KUBECONFIG      # a cluster admin's kubeconfig of a disposable API server
#
# CI has no API server and skips the suite; see the README for a Kubernetes 1.28 API server
# on loopback. Each test's output is kept in target/e2e/<test>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

kubeconfig=${1:-${OMERO_OPERATOR_E2E_KUBECONFIG:-}}
if [ -z "$kubeconfig" ] || [ ! -f "$kubeconfig" ]; then
    echo "usage: scripts/e2e.sh KUBECONFIG (a cluster admin's kubeconfig of a disposable API server)" >&2
    exit 2
fi
export OMERO_OPERATOR_E2E_KUBECONFIG
OMERO_OPERATOR_E2E_KUBECONFIG=$(realpath "$kubeconfig")

scripts/install-helm.sh
echo "==> building the operator, the plugin and the e2e suite"
cargo test --quiet --test e2e --no-run

mkdir -p target/e2e
mapfile -t tests < <(cargo test --quiet --test e2e -- --list --format terse 2>/dev/null |
    sed -n 's/: test$//p' | grep -vx 'nothing_is_left_behind')
passed=0
failed=0
total_start=$(date +%s)
for test in "${tests[@]}"; do
    start=$(date +%s)
    if cargo test --quiet --test e2e -- --exact "$test" --nocapture >"target/e2e/$test.log" 2>&1; then
        result=passed
        passed=$((passed + 1))
    else
        result=FAILED
        failed=$((failed + 1))
    fi
    printf '%-62s %-6s %5ss\n' "$test" "$result" "$(($(date +%s) - start))"
    if [ "$result" = FAILED ]; then
        grep -E "panicked at|^thread '" -A6 "target/e2e/$test.log" | head -n 20 | sed 's/^/    /'
    fi
done
start=$(date +%s)
if OMERO_OPERATOR_E2E_LEFTOVERS=1 cargo test --quiet --test e2e -- --exact nothing_is_left_behind \
    >target/e2e/nothing_is_left_behind.log 2>&1; then
    result=passed
    passed=$((passed + 1))
else
    result=FAILED
    failed=$((failed + 1))
    grep -E "panicked at" -A3 target/e2e/nothing_is_left_behind.log | sed 's/^/    /'
fi
printf '%-62s %-6s %5ss\n' nothing_is_left_behind "$result" "$(($(date +%s) - start))"
echo "e2e: $passed passed, $failed failed in $(($(date +%s) - total_start))s"
[ "$failed" -eq 0 ]
