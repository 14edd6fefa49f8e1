#!/usr/bin/env bash
# The torture test (issue 17): seeded cycles of faults against real servers with
# walrcv as the synchronous standby; checks that no acknowledged commit is lost
# and that no flush position walrcv reported exceeded what its archive held.
#
#   scripts/torture.sh [--cycles N] [--seed S] [--faults LIST] [--clients C] [--keep]
#
#   --cycles N     cycles to run (default 10); cycle k uses seed S + k
#   --seed S       first seed (default: from the clock, printed); a failing cycle
#                  prints its seed: `--seed X --cycles 1` replays its schedule
#   --faults LIST  comma-separated fault kinds (default all): kill, stop,
#                  compress, cut, stall, bitflip, diskfull, eio, switchover,
#                  failover, crash, powerloss
#   --clients C    committing clients (default 4)
#   --keep         keep every cycle's logs, archive and data directories
#   --dry-run      print the cycles' schedules, run nothing
#
# Runs the test binary tests/torture.rs (debug build with the failpoints feature,
# as the eio fault needs) through cargo. Prints a table per fault kind (cycles,
# acknowledged commits, lost, over-acknowledged) and exits 0 when every check of
# every cycle held, 1 otherwise, 2 on a usage error. Needs root (the diskfull
# fault mounts a tmpfs, powerloss a FUSE file system; servers run as the postgres
# user) and PostgreSQL 15.
# Respects CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
cycles_given=0
while [ $# -gt 0 ]; do
    case "$1" in
    --cycles | --seed | --faults | --clients)
        [ $# -ge 2 ] || {
            echo "torture.sh: $1 needs a value (see --help)" >&2
            exit 2
        }
        [ "$1" = --cycles ] && cycles_given=1
        args+=("$1" "$2")
        shift
        ;;
    --keep | --dry-run) args+=("$1") ;;
    -h | --help)
        sed -n '2,25p' "$0"
        exit 0
        ;;
    *)
        echo "torture.sh: unknown argument: $1 (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done
[ "$cycles_given" = 1 ] || args+=(--cycles 10)

scripts/install-deps.sh --no-npm >/dev/null
exec cargo test --quiet --features failpoints --test torture -- "${args[@]}"
