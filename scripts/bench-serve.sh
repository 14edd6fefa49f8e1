#!/usr/bin/env bash
# Benchmarks walrcv serving WAL to standbys (issue 21), on scratch PostgreSQL 15
# servers (16 MB segments, fsync on) that run as the `postgres` OS user in a
# temporary directory, on loopback only, on free ports; nothing else on the
# machine is touched, and everything is stopped and deleted at exit.
#
#   1. catch-up: a base backup is taken, then at least --wal-mb MB of WAL is
#      written and archived by `walrcv stream -E` (fsync on), and `walrcv serve`
#      serves that archive. Each run starts a fresh copy of the base backup as a
#      hot standby with no primary_conninfo, waits until it is up, then sets
#      primary_conninfo to the primary (walsender) or to walrcv serve and
#      reloads: the time from that reload until the standby has received
#      (pg_last_wal_receive_lsn, i.e. written and fsynced) and until it has
#      replayed (pg_last_wal_replay_lsn) the end of the written WAL. Polled
#      every 20 ms from one psql session (no long snapshot on the standby).
#   2. synchronous commit: `walrcv stream --synchronous --serve` is the
#      primary's only synchronous standby for the whole phase, and --standbys
#      hot standbys (made from one base backup) are switched, by
#      primary_conninfo and a reload, between three setups: fed by walrcv's
#      --serve address ("walrcv+N"), disconnected ("walrcv": primary_conninfo
#      empty), and fed by the primary's walsenders ("primary+N", a reference).
#      Before each run the standbys (if connected) have replayed everything
#      and a CHECKPOINT is taken; then `pgbench -N -c --clients -T --seconds`.
#   3. latency: with the standbys fed by walrcv (then by the primary, as the
#      reference), --probes times: commit one row on the primary (synchronous:
#      it returns once walrcv has reported it flushed), read walrcv's
#      flush_lsn F in pg_stat_replication, then poll the first standby's
#      pg_last_wal_receive_lsn() until it is >= F; the time from reading F to
#      the standby having it. Idle, then again while pgbench -N runs. The
#      floor is one query round trip to the standby (the reference shows it).
#
# Phases 1 and 2 alternate their setups per round (round 1: A, B, ...;
# round 2: B, ..., A). The report gives medians over the rounds and the ratios
# as medians of the per-round ratios (a trend across rounds cancels out); the
# raw figures go to results.csv in the temporary directory. The machine is
# shared and noisy: compare ratios, not absolute figures.
#
#   scripts/bench-serve.sh [--wal-mb 1024] [--rounds 3] [--seconds 15]
#       [--clients 8] [--standbys 4] [--probes 300] [--keep] [--no-build]
#       [--walrcv PATH] [--skip-catchup] [--skip-sync] [--skip-latency]
#
#   --wal-mb N      catch-up WAL to write, at least, in MB (default 1024)
#   --rounds N      rounds of phases 1 and 2 (default 3)
#   --seconds N     pgbench -T of each synchronous run (default 15)
#   --clients N     pgbench clients (default 8)
#   --standbys N    standbys of phases 2 and 3 (default 4)
#   --probes N      latency probes per condition (default 300)
#   --no-reference  phase 2 without the primary+N reference setup
#   --keep          keep the temporary directory (CSV, logs)
#   --no-build      do not run cargo; use $CARGO_TARGET_DIR/release/walrcv
#   --walrcv PATH   benchmark this walrcv binary (implies --no-build)
#   --skip-catchup, --skip-sync, --skip-latency   leave a phase out
#   --latency-under-load  also probe while pgbench -N runs
#
# Respects CARGO_TARGET_DIR. Needs root (the servers run as `postgres`) or a
# non-root user who can run PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

command_line="$0"
for arg in "$@"; do command_line+=" $(printf '%q' "$arg")"; done

wal_mb=1024
rounds=3
seconds=15
clients=8
standbys=4
probes=300
reference=1
keep=0
build=1
walrcv=""
do_catchup=1
do_sync=1
do_latency=1
lat_loads=idle
while [ $# -gt 0 ]; do
    case "$1" in
    --wal-mb) wal_mb="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    --seconds) seconds="$2"; shift ;;
    --clients) clients="$2"; shift ;;
    --standbys) standbys="$2"; shift ;;
    --probes) probes="$2"; shift ;;
    --no-reference) reference=0 ;;
    --keep) keep=1 ;;
    --no-build) build=0 ;;
    --walrcv) walrcv="$2"; build=0; shift ;;
    --skip-catchup) do_catchup=0 ;;
    --skip-sync) do_sync=0 ;;
    --skip-latency) do_latency=0 ;;
    --latency-under-load) lat_loads="idle pgbench" ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
require_positive_integers "$wal_mb" "$rounds" "$seconds" "$clients" "$standbys" "$probes"


PGBIN=/usr/lib/postgresql/15/bin
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
clk_tck=$(getconf CLK_TCK)

walrcv_binary "$build"

# --- temporary directory, servers, cleanup ---------------------------------

make_tmp walrcv-bench-serve # $pgdir: every server's files
csv="$tmp/results.csv"
echo "phase,round,position,setup,recv_s,replay_s,mb,recv_mb_per_s,tps,lat_avg_ms,sender_cpu_s" >"$csv"

declare -a servers=() # data directories of started servers
declare -a bg_pids=() # walrcv processes
cleanup() {
    local rc=$? d p
    trap - EXIT INT TERM
    for p in "${bg_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for d in "${servers[@]}"; do
        (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop) >/dev/null 2>&1 || true
    done
    if [ "$keep" = 1 ]; then note "kept $tmp"; else rm -rf "$tmp"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


psql_at() { # port, sql
    psql -XAtq -h "$pgdir" -p "$1" -U postgres -d postgres -c "$2"
}
pg_start() { # data dir, log
    (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$1" -l "$2" -w -t 120 start >/dev/null) ||
        { tail -20 "$2" >&2; die "server $1 did not start"; }
}
pg_stop() { # data dir
    (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null) || true
}
conf_append() { # data dir, lines...
    local d=$1
    shift
    printf '%s\n' "$@" | as_server tee -a "$d/postgresql.conf" >/dev/null
}
# primary_conninfo of a standby: to 127.0.0.1:PORT, or "" (not streaming).
set_upstream() { # data dir, port or "", application_name
    local c=""
    [ -n "$2" ] && c="host=127.0.0.1 port=$2 user=postgres application_name=$3"
    conf_append "$1" "primary_conninfo = '$c'"
}
wait_for_log() { # file, text, pid
    local i
    for i in $(seq 300); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || { cat "$1" >&2; die "process $3 exited"; }
        sleep 0.1
    done
    cat "$1" >&2
    die "no '$2' in $1"
}
stop_pid() { # pid
    local i
    kill -INT "$1" 2>/dev/null || true
    for i in $(seq 100); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# A psql session fed through a FIFO: sql_open NAME PORT sets ${NAME_in} and
# ${NAME_out} (file descriptors) and ${NAME_pid}; sql_ask NAME SQL prints one
# line of result. Queries are short, one transaction each.
sql_open() { # name, port
    local name=$1 port=$2 fin="$tmp/$1.in" fout="$tmp/$1.out" fdi fdo
    rm -f "$fin" "$fout"
    mkfifo "$fin" "$fout"
    stdbuf -oL psql -XAtq -h "$pgdir" -p "$port" -U postgres -d postgres <"$fin" >"$fout" 2>"$tmp/$name.err" &
    printf -v "${name}_pid" '%s' "$!"
    exec {fdi}>"$fin"
    exec {fdo}<"$fout"
    printf -v "${name}_in" '%s' "$fdi"
    printf -v "${name}_out" '%s' "$fdo"
}
sql_ask() { # name, sql
    local fi_="${1}_in" fo_="${1}_out" line
    printf '%s;\n' "$2" >&"${!fi_}"
    read -r -t 60 line <&"${!fo_}" || { cat "$tmp/$1.err" >&2; die "no answer from session $1 to: $2"; }
    printf '%s\n' "$line"
}
sql_do() { # name, sql (no result)
    local fi_="${1}_in"
    printf '%s;\n' "$2" >&"${!fi_}"
}
sql_close() { # name
    local fi_="${1}_in" fo_="${1}_out" p_="${1}_pid" a b
    a=${!fi_}
    b=${!fo_}
    exec {a}>&- {b}<&-
    # Another session's psql may hold this FIFO open too (inherited): end it.
    kill -TERM "${!p_}" 2>/dev/null || true
    wait "${!p_}" 2>/dev/null || true
}

# --- the primary -----------------------------------------------------------

free_port
port=$new_port
primary="$pgdir/primary"
servers+=("$primary")
say "scratch primary on port $port"
(cd "$pgdir" && as_server "$PGBIN/initdb" -D "$primary" -U postgres -A trust --locale=C -E UTF8 >/dev/null)
wal_keep=$((wal_mb * 2 + 1024))
conf_append "$primary" \
    "listen_addresses = '127.0.0.1'" "port = $port" "unix_socket_directories = '$pgdir'" \
    "wal_level = replica" "fsync = on" "synchronous_commit = on" "max_wal_senders = $((standbys + 6))" \
    "max_replication_slots = 8" "max_wal_size = '4GB'" "checkpoint_timeout = '30min'" \
    "shared_buffers = '128MB'" "wal_keep_size = '${wal_keep}MB'" "hot_standby = on"
pg_start "$primary" "$pgdir/primary.log"
psql_() { psql_at "$port" "$1"; }
conninfo="host=127.0.0.1 port=$port user=postgres"
hba="$tmp/serve_hba.conf"
echo "host replication all 127.0.0.1/32 trust" >"$hba"

# A standby from base backup $1 in $pgdir/$2, on a free port (set in sb_port),
# started with no upstream; small shared_buffers, WAL receiver retried every
# 100 ms, replay never cancels the benchmark's queries nor waits for them.
make_standby() { # base dir, name
    local base=$1 d="$pgdir/$2" p
    free_port
    p=$new_port
    as_server cp -a "$base" "$d"
    as_server touch "$d/standby.signal"
    conf_append "$d" "port = $p" "shared_buffers = '64MB'" "hot_standby = on" \
        "wal_retrieve_retry_interval = '100ms'" "max_standby_streaming_delay = '-1'" \
        "primary_conninfo = ''"
    servers+=("$d")
    pg_start "$d" "$pgdir/$2.log"
    sb_port=$p
}
base_backup() { # dir
    (cd "$pgdir" && as_server "$PGBIN/pg_basebackup" -D "$1" -X stream -c fast -h "$pgdir" -p "$port" -U postgres) ||
        die "pg_basebackup failed"
}

# --- 1. catch-up ---------------------------------------------------------------

catchup_mb=""
if [ "$do_catchup" = 1 ]; then
    say "catch-up: base backup, then at least $wal_mb MB of WAL"
    psql_ "SELECT pg_create_physical_replication_slot('bench_archive', true)" >/dev/null
    base_backup "$pgdir/base1"
    start_lsn=$(awk '/^START WAL LOCATION:/ { print $4 }' "$pgdir/base1/backup_label")
    write_wal "$start_lsn" "$wal_mb"
    bytes=$wal_written_bytes
    catchup_mb=$wal_written_mb
    note "WAL from $start_lsn (base backup) to $end_lsn: $catchup_mb MB"

    say "catch-up: walrcv stream archives it (fsync on), walrcv serve serves it"
    archive="$tmp/archive1"
    mkdir -p "$archive"
    t0=$EPOCHREALTIME
    "$walrcv" stream -D "$archive" -d "$conninfo application_name=bench_archive" -S bench_archive \
        -E "$end_lsn" -n >"$tmp/archive1.log" 2>&1 || { cat "$tmp/archive1.log" >&2; die "walrcv stream -E failed"; }
    note "  archived in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
    psql_ "SELECT pg_drop_replication_slot('bench_archive')" >/dev/null
    free_port
    serve_port=$new_port
    "$walrcv" serve -D "$archive" --listen "127.0.0.1:$serve_port" --serve-hba "$hba" >"$tmp/serve1.log" 2>&1 &
    serve_pid=$!
    bg_pids+=("$serve_pid")
    wait_for_log "$tmp/serve1.log" "serving the archive" "$serve_pid"
    served=$(psql -XAtq "host=127.0.0.1 port=$serve_port user=postgres replication=true" -c IDENTIFY_SYSTEM | cut -d'|' -f3)
    [ "$(psql_ "SELECT '$served'::pg_lsn >= '$end_lsn'::pg_lsn")" = t ] ||
        die "walrcv serve's end $served is before $end_lsn"
    note "  walrcv serve on port $serve_port, serving up to $served"

    # One catch-up: a fresh standby from base1, pointed at the setup's upstream.
    catchup_run() { # round, position, setup (primary | walrcv)
        local round=$1 pos=$2 setup=$3 name="catchup-r$1-$3" d sp up t0 now r p recv="" replay="" cpu0=0 cpu1=0 wpid=""
        d="$pgdir/$name"
        make_standby "$pgdir/base1" "$name"
        sp=$sb_port
        up=$port
        [ "$setup" = walrcv ] && up=$serve_port
        sync
        sql_open sb "$sp"
        [ "$(sql_ask sb "SELECT pg_is_in_recovery()")" = t ] || die "$name is not a standby"
        set_upstream "$d" "$up" "$name"
        [ "$setup" = walrcv ] && cpu0=$(cpu_ticks "$serve_pid")
        t0=$EPOCHREALTIME
        sql_ask sb "SELECT pg_reload_conf()" >/dev/null
        while :; do
            IFS='|' read -r r p < <(sql_ask sb "SELECT coalesce(pg_last_wal_receive_lsn(), '0/0') >= '$end_lsn', coalesce(pg_last_wal_replay_lsn(), '0/0') >= '$end_lsn'")
            now=$EPOCHREALTIME
            [ -z "$recv" ] && [ "$r" = t ] && recv=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.2f", b - a }')
            [ "$p" = t ] && { replay=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.2f", b - a }'); break; }
            awk -v a="$t0" -v b="$now" 'BEGIN { exit !(b - a > 900) }' && die "$name: no catch-up in 900 s"
            sleep 0.02
        done
        if [ "$setup" = walrcv ]; then
            cpu1=$(cpu_ticks "$serve_pid")
        else
            # A walsender of its own: its whole CPU time.
            wpid=$(psql_ "SELECT pid FROM pg_stat_replication WHERE application_name = '$name'")
            [ -n "$wpid" ] && cpu1=$(cpu_ticks "$wpid")
        fi
        if [ "$setup" = walrcv ]; then
            [ "$(sql_ask sb "SELECT sender_port FROM pg_stat_wal_receiver")" = "$serve_port" ] ||
                die "$name did not stream from walrcv"
        fi
        sql_close sb
        (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null) || true
        as_server rm -rf "$d"
        local mbs cpu
        mbs=$(awk -v b="$bytes" -v t="$recv" 'BEGIN { printf "%.1f", (t > 0 ? b / 1048576 / t : 0) }')
        cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$clk_tck" 'BEGIN { printf "%.2f", (b - a) / hz }')
        echo "catchup,$round,$pos,$setup,$recv,$replay,$catchup_mb,$mbs,,,$cpu" >>"$csv"
        note "$(printf '  round %s  from %-7s  received in %7s s (%6s MB/s)  replayed in %7s s  sender CPU %6s s' \
            "$round" "$setup" "$recv" "$mbs" "$replay" "$cpu")"
    }

    say "catch-up: $rounds round(s), a standby from the primary's walsender and from walrcv serve"
    for ((round = 1; round <= rounds; round++)); do
        pos=0
        while read -r setup; do
            pos=$((pos + 1))
            catchup_run "$round" "$pos" "$setup" </dev/null
        done < <(rotated "$round" primary walrcv)
    done
    stop_pid "$serve_pid"
    as_server rm -rf "$pgdir/base1"
    rm -rf "$archive"
    psql_ "DROP TABLE filler"
    psql_ "CHECKPOINT"
fi

# --- 2. synchronous commit with standbys fed by walrcv ---------------------------

jobs=$clients
[ "$jobs" -gt "$(nproc)" ] && jobs=$(nproc)
sync_setups=("walrcv+$standbys" walrcv)
[ "$reference" = 1 ] && sync_setups+=("primary+$standbys")
if [ "$do_sync" = 1 ] || [ "$do_latency" = 1 ]; then
    say "synchronous commit: walrcv stream --synchronous --serve, $standbys standbys"
    "$PGBIN/pgbench" -i -s 10 -q -h "$pgdir" -p "$port" -U postgres postgres >"$tmp/pgbench-init.log" 2>&1 ||
        { cat "$tmp/pgbench-init.log" >&2; die "pgbench -i failed"; }
    psql_ "CREATE TABLE probe(i int)"
    free_port
    serve_port=$new_port
    archive="$tmp/archive2"
    mkdir -p "$archive"
    "$walrcv" stream -D "$archive" -d "$conninfo application_name=walrcv_bench" --synchronous \
        --serve "127.0.0.1:$serve_port" --serve-hba "$hba" >"$tmp/stream2.log" 2>&1 &
    stream_pid=$!
    bg_pids+=("$stream_pid")
    for i in $(seq 300); do
        port_is_free "$serve_port" || break
        kill -0 "$stream_pid" 2>/dev/null || { cat "$tmp/stream2.log" >&2; die "walrcv stream exited"; }
        [ "$i" = 300 ] && die "walrcv stream does not listen on $serve_port"
        sleep 0.1
    done
    # The standbys' base backup starts after walrcv's first position, so
    # that walrcv's archive holds all the WAL they need.
    for i in $(seq 300); do
        [ "$(psql_ "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walrcv_bench' AND state = 'streaming'")" = 1 ] && break
        [ "$i" = 300 ] && die "walrcv does not stream"
        sleep 0.1
    done
    base_backup "$pgdir/base2"
    sb_dirs=()
    sb_ports=()
    for ((i = 1; i <= standbys; i++)); do
        make_standby "$pgdir/base2" "standby$i"
        sb_ports+=("$sb_port")
        sb_dirs+=("$pgdir/standby$i")
    done
    as_server rm -rf "$pgdir/base2"
    psql_ "ALTER SYSTEM SET synchronous_standby_names = 'walrcv_bench'" >/dev/null
    psql_ "SELECT pg_reload_conf()" >/dev/null
    for i in $(seq 300); do
        [ "$(psql_ "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walrcv_bench' AND sync_state = 'sync'")" = 1 ] && break
        [ "$i" = 300 ] && die "walrcv never became the synchronous standby"
        sleep 0.1
    done
    note "  walrcv (pid $stream_pid) is the synchronous standby, serving on port $serve_port"

    # Points every standby at the setup's upstream and waits until each one
    # streams from it and has replayed the primary's current WAL.
    current_setup=""
    use_setup() { # setup
        local setup=$1 up="" i d want lsn ok
        case "$setup" in
        walrcv+*) up=$serve_port ;;
        primary+*) up=$port ;;
        walrcv) up="" ;;
        esac
        [ "$setup" = "$current_setup" ] && return 0
        for ((i = 0; i < standbys; i++)); do
            set_upstream "${sb_dirs[$i]}" "$up" "standby$((i + 1))"
            psql_at "${sb_ports[$i]}" "SELECT pg_reload_conf()" >/dev/null
        done
        current_setup=$setup
        [ -n "$up" ] || { sleep 1; return 0; }
        lsn=$(psql_ "SELECT pg_current_wal_flush_lsn()")
        for ((i = 0; i < standbys; i++)); do
            ok=0
            for _ in $(seq 1200); do
                want=$(psql_at "${sb_ports[$i]}" "SELECT coalesce((SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'), 0) = $up AND coalesce(pg_last_wal_replay_lsn(), '0/0') >= '$lsn'")
                [ "$want" = t ] && { ok=1; break; }
                sleep 0.1
            done
            [ "$ok" = 1 ] || die "standby$((i + 1)) did not catch up from port $up"
        done
    }
fi

if [ "$do_sync" = 1 ]; then
    say "synchronous commit: pgbench -N -c $clients -T $seconds, $rounds round(s) of ${sync_setups[*]}"
    for ((round = 1; round <= rounds; round++)); do
        pos=0
        while read -r setup; do
            pos=$((pos + 1))
            use_setup "$setup"
            psql_ "CHECKPOINT"
            cpu0=$(cpu_ticks "$stream_pid")
            out=$("$PGBIN/pgbench" -n -N -c "$clients" -j "$jobs" -T "$seconds" \
                -h "$pgdir" -p "$port" -U postgres postgres 2>&1) || { printf '%s\n' "$out" >&2; die "pgbench failed"; }
            cpu1=$(cpu_ticks "$stream_pid")
            printf '%s\n' "$out" >"$tmp/pgbench-r$round-$setup.out"
            tps=$(sed -nE 's/^tps = ([0-9.]+) .*/\1/p' <<<"$out")
            lat=$(sed -nE 's/^latency average = ([0-9.]+) ms$/\1/p' <<<"$out")
            cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$clk_tck" 'BEGIN { printf "%.2f", (b - a) / hz }')
            echo "sync,$round,$pos,$setup,,,,,$tps,$lat,$cpu" >>"$csv"
            note "$(printf '  round %s  %-10s  %9.1f tps  avg %8s ms  walrcv CPU %6s s' "$round" "$setup" "$tps" "$lat" "$cpu")"
        done < <(rotated "$round" "${sync_setups[@]}")
    done
fi

# --- 3. latency from walrcv's flush to a standby's receipt -----------------------

lat_file="$tmp/latency.csv"
echo "setup,load,ms" >"$lat_file"
probe_run() { # setup, load (idle | pgbench)
    local setup=$1 load=$2 bench_pid="" i f t0 now r
    use_setup "$setup"
    sql_open pri "$port"
    sql_open sb "${sb_ports[0]}"
    if [ "$load" = pgbench ]; then
        "$PGBIN/pgbench" -n -N -c "$clients" -j "$jobs" -T 600 -h "$pgdir" -p "$port" -U postgres postgres \
            >"$tmp/pgbench-latency-$setup.out" 2>&1 &
        bench_pid=$!
        sleep 2
    fi
    for ((i = 1; i <= probes; i++)); do
        sql_do pri "INSERT INTO probe VALUES ($i)"
        f=$(sql_ask pri "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'walrcv_bench'")
        t0=$EPOCHREALTIME
        while :; do
            r=$(sql_ask sb "SELECT pg_last_wal_receive_lsn() >= '$f'")
            [ "$r" = t ] && break
            awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { exit !(b - a > 30) }' &&
                die "standby1 has not received $f after 30 s ($setup, $load)"
        done
        now=$EPOCHREALTIME
        awk -v a="$t0" -v b="$now" -v s="$setup" -v l="$load" 'BEGIN { printf "%s,%s,%.3f\n", s, l, (b - a) * 1000 }' >>"$lat_file"
        [ "$load" = pgbench ] || sleep 0.01
    done
    if [ -n "$bench_pid" ]; then
        # TERM, not INT: a background job of a non-interactive shell starts
        # with SIGINT ignored, and pgbench sets no handler, so INT left it
        # running its -T 600 and the `wait` hung for 10 minutes.
        kill -TERM "$bench_pid" 2>/dev/null || true
        wait "$bench_pid" 2>/dev/null || true
    fi
    sql_close pri
    sql_close sb
}
lat_setups=("walrcv+$standbys")
[ "$reference" = 1 ] && lat_setups+=("primary+$standbys")
if [ "$do_latency" = 1 ]; then
    say "latency: $probes probes per setup ($lat_loads)"
    for load in $lat_loads; do
        for setup in "${lat_setups[@]}"; do
            probe_run "$setup" "$load"
            note "  $setup, $load: done"
        done
    done
fi

# --- report ----------------------------------------------------------------------

median() { # phase, setup, column name
    awk -F, -v ph="$1" -v s="$2" -v name="$3" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) col = i; next }
        $1 == ph && $4 == s && $col != "" { print $col }' "$csv" | median_of "–"
}
median_ratio() { # phase, setup a, setup b, column name
    awk -F, -v ph="$1" -v a="$2" -v b="$3" -v name="$4" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) col = i; next }
        $1 == ph && $col != "" { if ($4 == a) va[$2] = $col; if ($4 == b) vb[$2] = $col }
        END { for (r in va) if ((r in vb) && vb[r] > 0) print va[r] / vb[r] }' "$csv" | median_of "–" "%.3f"
}
# Percentiles (nearest rank) of the probe delays of one setup and load.
lat_pct() { # setup, load, percent
    awk -F, -v s="$1" -v l="$2" 'NR > 1 && $1 == s && $2 == l { print $3 }' "$lat_file" | sort -g |
        awk -v p="$3" '{ v[NR] = $1 }
            END {
                if (NR == 0) { printf "–"; exit }
                k = int(NR * p / 100); if (k < NR * p / 100) k++; if (k < 1) k = 1
                printf "%.2f", v[k]
            }'
}

report() {
    local s
    report_header
    echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{ print $3 }'), 16 MB segments, fsync on; walrcv $("$walrcv" --version 2>/dev/null | awk '{ print $2 }'), release build; medians of $rounds round(s), ratios the medians of the per-round ratios."
    if [ "$do_catchup" = 1 ]; then
        echo
        echo "Catch-up of $catchup_mb MB of WAL by a fresh standby (from the reload of primary_conninfo):"
        echo
        echo "| | from the primary | from walrcv serve | walrcv / primary (speed) |"
        echo "|---|---:|---:|---:|"
        echo "| received (s) | $(median catchup primary recv_s) | $(median catchup walrcv recv_s) | $(median_ratio catchup primary walrcv recv_s) |"
        echo "| received (MB/s) | $(median catchup primary recv_mb_per_s) | $(median catchup walrcv recv_mb_per_s) | $(median_ratio catchup walrcv primary recv_mb_per_s) |"
        echo "| replayed (s) | $(median catchup primary replay_s) | $(median catchup walrcv replay_s) | $(median_ratio catchup primary walrcv replay_s) |"
        echo "| sender CPU (s) | $(median catchup primary sender_cpu_s) | $(median catchup walrcv sender_cpu_s) | |"
    fi
    if [ "$do_sync" = 1 ]; then
        echo
        echo "Synchronous commit, walrcv the synchronous standby, pgbench -N -c $clients -T $seconds (scale 10):"
        echo
        echo "| setup | TPS | latency avg (ms) | walrcv CPU (s) | TPS / walrcv alone |"
        echo "|---|---:|---:|---:|---:|"
        for s in "${sync_setups[@]}"; do
            echo "| $s | $(fmt '%.0f' "$(median sync "$s" tps)") | $(median sync "$s" lat_avg_ms) | $(median sync "$s" sender_cpu_s) | $(median_ratio sync "$s" walrcv tps) |"
        done
    fi
    if [ "$do_latency" = 1 ]; then
        echo
        echo "From a synchronous commit's acknowledgement (walrcv's flush_lsn read on the primary) to the first standby's pg_last_wal_receive_lsn() reaching it, $probes probes each (ms):"
        echo
        echo "| standbys fed by | load | median | p90 | p99 | max |"
        echo "|---|---|---:|---:|---:|---:|"
        for load in $lat_loads; do
            for s in "${lat_setups[@]}"; do
                echo "| $s | $load | $(lat_pct "$s" "$load" 50) | $(lat_pct "$s" "$load" 90) | $(lat_pct "$s" "$load" 99) | $(lat_pct "$s" "$load" 100) |"
            done
        done
    fi
}

say "results"
report | tee "$tmp/report.md"
echo
echo "raw figures: $csv, $lat_file$([ "$keep" = 1 ] || echo ' (deleted on exit: use --keep to keep them)')"
