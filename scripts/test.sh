#!/usr/bin/env bash
# Runs walrcv's whole test suite: installs what it needs (scripts/install-deps.sh:
# PostgreSQL 15 from Debian, 13, 14, 16, 17 and 18 from npm), then
# `cargo test --all-targets --features failpoints` (unit tests, the integration
# tests against real servers, the fault-injection tests, benches run once as
# tests) and `cargo test --doc`. Exits non-zero on any failure.
#
#   scripts/test.sh [--quick] [-- CARGO_TEST_ARGS...]
#
#   --quick   skip install-deps and run only the library's unit tests (no servers)
#   anything after `--` goes to the test binaries (e.g. `-- harness` to filter)
#
# Respects CARGO_TARGET_DIR. Set WALRCV_TEST_MAJOR=17 to make 17 the default
# server version of the integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
test_args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) quick=1 ;;
    --)
        shift
        test_args=("$@")
        break
        ;;
    -h | --help)
        sed -n '2,13p' "$0"
        exit 0
        ;;
    *)
        echo "test.sh: unknown argument: $1 (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done

log=$(mktemp "${TMPDIR:-/tmp}/walrcv-test.XXXXXX")
trap 'rm -f "$log"' EXIT

if [ "$quick" = 1 ]; then
    cargo_args=(test --lib --features failpoints)
else
    scripts/install-deps.sh
    # The failpoints feature (fault injection, never in release builds) is on:
    # the fault tests drive the real binary through $FAILPOINTS.
    cargo_args=(test --all-targets --features failpoints --no-fail-fast)
fi

start=$(date +%s)
run_cargo() {
    echo "+ cargo $*" >&2
    set +e
    cargo "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}
status=0
run_cargo "${cargo_args[@]}" ${test_args[@]+-- "${test_args[@]}"} || status=$?
if [ "$quick" = 0 ] && [ "$status" -eq 0 ]; then
    run_cargo test --doc ${test_args[@]+-- "${test_args[@]}"} || status=$?
fi
echo
echo "=== summary ($(($(date +%s) - start)) s) ==="
grep -E '^\s*(Running|Doc-tests) |^test result:' "$log" | sed -E 's/^\s+//' || true
if grep -qE '^failures:$' "$log"; then
    echo "--- failed tests ---"
    awk '/^failures:$/ {f=1; next} /^test result:/ {f=0} f && /^    [A-Za-z0-9_:]+$/ {print}' "$log" | sort -u
fi
if [ "$status" -ne 0 ]; then
    echo "FAILED (cargo test exit status $status)"
else
    echo "OK"
fi
# The totals over every test binary, as the last line.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i - 1); if ($(i) ~ /^failed;?$/) f += $(i - 1) } }
    END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
