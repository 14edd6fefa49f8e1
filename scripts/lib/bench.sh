# shellcheck shell=bash
# What the benchmark scripts (bench-vs-pg_receivewal.sh, bench-upload.sh,
# bench-serve.sh) share: messages, free ports, CPU ticks, percentiles and the
# rotation of setups between rounds. Sourced, never run.

die() { printf 'bench: %s\n' "$*" >&2; exit 1; }
note() { printf '%s\n' "$*" >&2; }
say() { printf '\n== %s\n' "$*" >&2; }

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
