#!/usr/bin/env bash
# Builds the fuzz crate (fuzz/) and runs every fuzz target for a short fixed time,
# failing on the first crash, panic or broken property. CI runs it from .ci/run.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
#   SECONDS   time per target (default 20)
#   TARGET    run only these targets (default: every target `cargo fuzz list` shows)
#
# Installs cargo-fuzz from crates.io when missing. Uses a nightly toolchain with
# AddressSanitizer when one is installed; otherwise the stable toolchain without a
# sanitizer (`-s none`: coverage-guided all the same, and Rust code needs no ASan to
# be memory-safe). Builds are optimised with debug assertions and overflow checks
# (`-O -a`). Each target starts from its committed seeds (fuzz/seeds/TARGET) and
# writes new inputs only to a scratch corpus, removed at exit; a crashing input is
# kept under fuzz/artifacts/TARGET/ and printed. Respects CARGO_TARGET_DIR.
# WALRCV_FUZZ_NIGHTLY=0 forces the stable path (what a fresh CI machine runs).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=20
case "${1:-}" in
-h | --help)
    sed -n '2,17p' "$0"
    exit 0
    ;;
'' | *[!0-9]*) ;;
*)
    seconds=$1
    shift
    ;;
esac

log() { echo "fuzz.sh: $*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

if [ "${WALRCV_FUZZ_NIGHTLY:-1}" != 0 ] &&
    rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
    sanitizer=address
else
    toolchain=()
    sanitizer=none
fi
build_args=(--fuzz-dir fuzz -O -a -s "$sanitizer")
log "toolchain: $(cargo "${toolchain[@]}" --version), sanitizer: $sanitizer"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/walrcv-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# Targets that need a scratch directory (receiver_history's archive) use TMPDIR.
export TMPDIR="$scratch"

cargo "${toolchain[@]}" fuzz build "${build_args[@]}"

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list --fuzz-dir fuzz)
fi

failed=()
for target in "${targets[@]}"; do
    corpus="$scratch/corpus-$target"
    mkdir -p "$corpus"
    libfuzzer_args=(-max_total_time="$seconds" -print_final_stats=1)
    # Seeds of the WAL verifier and check_segment are whole WAL pages.
    [ "$target" = verifier ] && libfuzzer_args+=(-max_len=70000)
    [ "$target" = check_segment ] && libfuzzer_args+=(-max_len=70000)
    log "$target: ${seconds} s"
    if cargo "${toolchain[@]}" fuzz run "${build_args[@]}" "$target" \
        "$corpus" "fuzz/seeds/$target" -- "${libfuzzer_args[@]}" \
        >"$scratch/$target.log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|#[0-9]+ +DONE)' "$scratch/$target.log" |
            sed "s/^/fuzz.sh: $target: /" >&2 || true
    else
        log "$target FAILED; the end of its output:"
        tail -n 60 "$scratch/$target.log" >&2
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    log "crash or broken property in: ${failed[*]} (inputs in fuzz/artifacts/; reproduce with"
    log "  cargo fuzz run --fuzz-dir fuzz -O -a -s $sanitizer TARGET fuzz/artifacts/TARGET/<file>)"
    exit 1
fi
log "${#targets[@]} targets, ${seconds} s each: no crash"
