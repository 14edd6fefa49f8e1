# shellcheck shell=bash
# What the benchmark scripts (bench-vs-pg_receivewal.sh, bench-upload.sh,
# bench-serve.sh) share: messages, the binary, the temporary directory, free ports, CPU ticks, percentiles, the
# rotation of setups between rounds, the scratch primary's synchronous standby
# and walsenders, writing WAL, and the report's medians, formats and header.
# Sourced, never run.

die() { printf 'bench: %s\n' "$*" >&2; exit 1; }
note() { printf '%s\n' "$*" >&2; }
say() { printf '\n== %s\n' "$*" >&2; }

# Sets walrcv to the absolute path of the binary to benchmark: the one the
# caller named (--walrcv), else $CARGO_TARGET_DIR/release/walrcv, which
# `cargo build --release` builds first when BUILD is 1. Dies when it is not
# there.
walrcv_binary() { # build (1/0)
    if [ "$1" = 1 ]; then
        say "release build"
        cargo build --release
    fi
    if [ -z "$walrcv" ]; then
        walrcv="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)/walrcv"
    fi
    [ -x "$walrcv" ] || die "no walrcv binary at $walrcv"
    walrcv=$(realpath "$walrcv")
    note "walrcv: $walrcv"
}

# Makes the run's temporary directory, tmp (mode 755, under $TMPDIR, named
# PREFIX.XXXXXX), and in it pgdir for the servers' files (mode 700, owned by
# postgres when run as root); defines as_server, which runs a command as the
# servers' user.
make_tmp() { # prefix
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    chmod 755 "$tmp"
    pgdir="$tmp/pg"
    mkdir -p "$pgdir"
    chmod 700 "$pgdir"
    # shellcheck disable=SC2329 # called by the sourcing script
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$pgdir"
        as_server() { runuser -u postgres -- "$@"; }
    else
        as_server() { "$@"; }
    fi
}

# Prints the running script's manual: its leading comment, without the `#`s.
usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# Exits with status 2, naming it, at the first argument that is not a
# positive integer (the numeric options' check).
require_positive_integers() { # values...
    local n
    for n in "$@"; do
        case "$n" in
        '' | *[!0-9]* | 0) echo "bench: not a positive integer: '$n'" >&2; exit 2 ;;
        esac
    done
}

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
bench_ports_taken=" "
# Sets new_port to a free port not handed out before (no subshell, so that
# the ports taken are remembered).
free_port() {
    local candidate
    for _ in $(seq 200); do
        candidate=$((20000 + RANDOM % 30000))
        case "$bench_ports_taken" in *" $candidate "*) continue ;; esac
        if port_is_free "$candidate"; then
            bench_ports_taken+="$candidate "
            # shellcheck disable=SC2034 # read by the sourcing script
            new_port=$candidate
            return 0
        fi
    done
    die "no free port"
}

# User plus system CPU ticks of a process or thread, from its stat file's
# text (the command name may hold spaces: cut after its closing parenthesis).
ticks_of_stat() { # the text of a stat file
    awk '{ print $12 + $13 }' <<<"${1##*) }"
}
cpu_ticks() { # pid
    ticks_of_stat "$(cat "/proc/$1/stat")"
}

# The pct-th percentile, in ms, of the latencies (µs, third column) of
# pgbench -l log files.
percentile_ms() { # percent, files...
    local pct=$1
    shift
    awk '$3 ~ /^[0-9]+$/ { print $3 }' "$@" | sort -n |
        awk -v p="$pct" '{ v[NR] = $1 }
            END {
                if (NR == 0) { print ""; exit }
                k = int(NR * p / 100); if (k < NR * p / 100) k++; if (k < 1) k = 1
                printf "%.3f", v[k] / 1000
            }'
}

# The names, rotated by round (round 1: as given), one a line: each setup
# runs first, second, ... in turn.
rotated() { # round, names...
    local round=$1
    shift
    local names=("$@") n=$# i
    for ((i = 0; i < n; i++)); do
        printf '%s\n' "${names[$(((i + round - 1) % n))]}"
    done
}

# --- the scratch primary (the sourcing script defines psql_: SQL on it) ------

# Makes APPLICATION_NAME the only synchronous standby (none with "") and
# reloads the configuration.
set_sync_standby() { # application_name, or "" for none
    psql_ "ALTER SYSTEM SET synchronous_standby_names = '${1:+\"$1\"}'" >/dev/null
    psql_ "SELECT pg_reload_conf()" >/dev/null
}

# Waits up to 30 s until pg_stat_replication shows APPLICATION_NAME `sync`;
# fails (status 1) at once when the receiver PID has exited.
wait_for_sync() { # application_name, pid
    local i
    for i in $(seq 300); do
        if [ "$(psql_ "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$1' AND sync_state = 'sync'")" = 1 ]; then
            return 0
        fi
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Waits up to 2.5 s until process PID runs COMMAND (its exec has happened).
wait_for_comm() { # pid, command name
    local i
    for i in $(seq 50); do
        [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] && return 0
        sleep 0.05
    done
    return 1
}

# Waits up to 10 s until the primary has no walsender, so that one left from
# the previous run cannot pass for the next one; dies after that.
wait_no_walsenders() {
    local i
    for i in $(seq 100); do
        [ "$(psql_ "SELECT count(*) FROM pg_stat_replication")" = 0 ] && return 0
        sleep 0.1
    done
    die "a walsender is still there after its receiver exited"
}

# SIGINT to the receiver PID, SIGKILL if it still runs after SECONDS (default
# 10), then reaps it and clears bg_pid (the sourcing script's record of what
# to kill at exit).
stop_receiver() { # pid, seconds
    local i
    kill -INT "$1" 2>/dev/null || true
    for i in $(seq $((${2:-10} * 10))); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    # shellcheck disable=SC2034 # read by the sourcing script
    bg_pid=""
}

# Writes at least MEGABYTES of WAL after START_LSN (rows into a new table
# `filler`, sized by what the previous batch wrote), then a CHECKPOINT. Sets
# end_lsn (the flush position after it), wal_written_bytes (the WAL from
# START_LSN to end_lsn) and wal_written_mb (the same in MB, one decimal).
write_wal() { # start lsn, megabytes
    local start=$1 target=$(($2 * 1024 * 1024)) bytes=0 bytes_per_row=400 rows before
    psql_ "CREATE TABLE filler(x bigint, pad text)"
    while [ "$bytes" -lt "$target" ]; do
        rows=$(((target - bytes) / bytes_per_row + 1000))
        psql_ "INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, $rows) g"
        before=$bytes
        bytes=$(psql_ "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$start')::bigint")
        bytes_per_row=$(((bytes - before) / rows + 1))
    done
    psql_ "CHECKPOINT"
    end_lsn=$(psql_ "SELECT pg_current_wal_flush_lsn()")
    wal_written_bytes=$(psql_ "SELECT pg_wal_lsn_diff('$end_lsn', '$start')::bigint")
    # shellcheck disable=SC2034 # read by the sourcing script
    wal_written_mb=$(awk -v b="$wal_written_bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
}

# --- the report ---------------------------------------------------------------

# The median of the numbers on stdin, one a line: as read (an even count: the
# mean of the middle two, in awk's number format), or through the printf
# FORMAT when one is given; NONE when there are no numbers.
median_of() { # none, printf format
    sort -g | awk -v none="$1" -v f="${2-}" '{ v[NR] = $1 }
        END {
            if (NR == 0) { printf "%s", none; exit }
            if (NR % 2) m = v[(NR + 1) / 2]
            else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
            if (f == "") print m
            else printf f, m
        }'
}

# For a results file $csv whose rows begin phase,clients,round,position,receiver
# (bench-vs-pg_receivewal.sh's receivers, bench-upload.sh's modes): the median
# over the rounds of the column NAME for one phase, client count and
# receiver; "" when there is none.
# shellcheck disable=SC2154 # csv: the sourcing script's
median_over_rounds() { # phase, clients, receiver, column name
    awk -F, -v ph="$1" -v c="$2" -v r="$3" -v name="$4" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) col = i; next }
        $1 == ph && $2 == c && $5 == r && $col != "" { print $col }' "$csv" | median_of ""
}

# VALUE through the printf FORMAT; no value ("" or "–") gives "–".
fmt() { # printf format, value
    if [ -z "$2" ] || [ "$2" = "–" ]; then printf '–'; else awk -v f="$1" -v v="$2" 'BEGIN { printf f, v }'; fi
}

# The first lines of a Markdown report, each ending in a line break: the
# date, the command ($command_line) and the machine, with the load average
# at the start ($load_at_start) and now.
# shellcheck disable=SC2154 # command_line, load_at_start: the sourcing script's
report_header() {
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC')  "
    echo "Command: \`$command_line\`  "
    echo "Machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r), load average $load_at_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end  "
}
