#!/usr/bin/env bash
# Benchmarks walrcv against pg_receivewal, and both against a ceiling, in one go
# on one scratch primary (PostgreSQL 15, 16 MB segments, fsync on) that runs as
# the `postgres` OS user in a temporary directory, on loopback only, on a free
# port; nothing else on the machine is touched.
#
#   1. synchronous commit: `pgbench -N` at each client count of --clients, for
#      --seconds each, with the only synchronous standby being walrcv
#      (`walrcv stream`, application_name=walrcv_bench), pg_receivewal
#      (--synchronous, application_name=pgrw_bench), or nobody
#      (synchronous_standby_names empty: the ceiling). Each receiver starts
#      fresh in an empty directory, and pgbench starts once pg_stat_replication
#      shows it `sync`; a CHECKPOINT precedes every run.
#   2. catch-up: at least --wal-mb MB of WAL is written behind rounds x 3
#      physical slots, then walrcv, pg_receivewal, and the ceiling (walrcv
#      --no-sync into a tmpfs) each archive it from their own slot to --endpos.
#      Complete segments of walrcv and of the ceiling are compared byte for byte
#      (cmp) with pg_receivewal's, then the archives are deleted.
#
# Both phases run --rounds rounds; round r rotates the order of the three (round
# 1: walrcv, pg_receivewal, ceiling; round 2: pg_receivewal, ceiling, walrcv;
# ...). The report is a markdown table of medians over the rounds, with the
# ratios walrcv / pg_receivewal and walrcv / ceiling as medians of the per-round
# ratios (a trend across rounds cancels out); the raw per-run figures go
# to results.csv in the temporary directory. The machine is shared and noisy:
# compare ratios, not absolute figures.
#
#   scripts/bench-vs-pg_receivewal.sh [--clients "1 8 32"] [--seconds 12]
#       [--rounds 3] [--wal-mb 1024] [--keep] [--no-build] [--walrcv PATH] [--tls]
#
#   --clients LIST  pgbench client counts, space-separated (default "1 8 32")
#   --seconds N     pgbench -T of each synchronous run (default 12)
#   --rounds N      rounds of both phases; the report takes medians (default 3)
#   --wal-mb N      catch-up WAL to write, at least, in MB (default 1024)
#   --keep          keep the temporary directory (CSV, logs, pgbench logs, data)
#   --no-build      do not run cargo; use $CARGO_TARGET_DIR/release/walrcv
#   --walrcv PATH   benchmark this walrcv binary (implies --no-build)
#   --compress LIST also run walrcv with -Z METHOD in the synchronous phase,
#                   for each method of LIST (e.g. "lz4 zstd gzip"), in the same
#                   rotation; the report adds a table against plain walrcv
#   --sync-only     skip the catch-up phase
#   --tls           TLS against plain text instead: the primary gets ssl = on
#                   (a self-signed certificate made with openssl), and the
#                   synchronous phase alone runs, its receivers being walrcv
#                   with sslmode=require, walrcv with sslmode=disable and
#                   pg_receivewal with sslmode=require, rotated per round as
#                   above; each run checks in pg_stat_ssl that its walsender
#                   is (or is not) encrypted. No catch-up phase.
#
# Measured: TPS and latency average as pgbench prints them; latency p99 from
# pgbench -l per-transaction logs (exact, nearest rank); receiver CPU-seconds
# (user + system, all threads) and peak RSS (VmHWM) of the receiver process
# itself: from /proc/PID/stat and /proc/PID/status around the pgbench run for
# synchronous commit, from /usr/bin/time (its direct child) for catch-up.
#
# Respects CARGO_TARGET_DIR. Needs root (the server runs as `postgres`; the
# tmpfs is mounted with mount -t tmpfs, else /dev/shm is used) or a non-root
# user who can run PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

command_line="$0"
for arg in "$@"; do command_line+=" $(printf '%q' "$arg")"; done

clients="1 8 32"
seconds=12
rounds=3
wal_mb=1024
keep=0
build=1
walrcv=""
compress=""
sync_only=0
tls=0
while [ $# -gt 0 ]; do
    case "$1" in
    --clients) clients="$2"; shift ;;
    --seconds) seconds="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    --wal-mb) wal_mb="$2"; shift ;;
    --keep) keep=1 ;;
    --no-build) build=0 ;;
    --walrcv) walrcv="$2"; build=0; shift ;;
    --compress) compress="$2"; shift ;;
    --sync-only) sync_only=1 ;;
    --tls) tls=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
# shellcheck disable=SC2086 # $clients: a list, one value a word
require_positive_integers "$seconds" "$rounds" "$wal_mb" $clients
[ -n "$clients" ] || { echo "bench: --clients is empty" >&2; exit 2; }


PGBIN=/usr/lib/postgresql/15/bin
pg_receivewal="$PGBIN/pg_receivewal"
clk_tck=$(getconf CLK_TCK)
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

say "dependencies and build"
scripts/install-deps.sh --no-npm
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (apt-get install time)"
walrcv_binary "$build"

# --- temporary directory, scratch primary, cleanup --------------------------

make_tmp walrcv-bench
pgdata="$pgdir/data"
csv="$tmp/results.csv"
bg_pid=""
tmpfs_dir=""
tmpfs_mounted=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$bg_pid" ] && kill -KILL "$bg_pid" 2>/dev/null || true
    (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$pgdata" -m immediate -w stop) >/dev/null 2>&1 || true
    if [ "$tmpfs_mounted" = 1 ]; then
        umount "$tmpfs_dir" || note "bench: could not unmount $tmpfs_dir"
    elif [ -n "$tmpfs_dir" ]; then
        rm -rf "$tmpfs_dir"
    fi
    if [ "$keep" = 1 ]; then note "kept $tmp"; else rm -rf "$tmp"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port
port=$new_port

say "scratch primary on port $port"
(cd "$pgdir" && as_server "$PGBIN/initdb" -D "$pgdata" -U postgres -A trust --locale=C -E UTF8 >/dev/null)
cat >>"$pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$pgdir'
wal_level = replica
fsync = on
synchronous_commit = on
max_wal_senders = 10
max_replication_slots = $((rounds * 3 + 4))
max_wal_size = '4GB'
checkpoint_timeout = '30min'
shared_buffers = '128MB'
EOF
if [ "$tls" = 1 ]; then
    # ssl_cert_file and ssl_key_file default to these names in the data directory.
    as_server openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
        -keyout "$pgdata/server.key" -out "$pgdata/server.crt" 2>/dev/null
    chmod 600 "$pgdata/server.key"
    echo "ssl = on" >>"$pgdata/postgresql.conf"
fi
(cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$pgdata" -l "$pgdir/server.log" -w start >/dev/null)
psql_() { psql -XAtq -h "$pgdir" -p "$port" -U postgres -d postgres -c "$1"; }
conninfo="host=127.0.0.1 port=$port user=postgres"

echo "phase,clients,round,position,receiver,tps,lat_avg_ms,lat_p99_ms,transactions,wall_s,wal_mb,mb_per_s,cpu_s,cpu_s_per_gb,peak_rss_kb,cpu_us_per_tx,user_us_per_tx" >"$csv"

# --- helpers -----------------------------------------------------------------


# utime alone, in clock ticks.
user_ticks() { # pid
    local stat
    stat=$(cat "/proc/$1/stat")
    awk '{ print $12 }' <<<"${stat##*) }"
}
peak_rss_kb() { # pid
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

# --- 1. synchronous commit ---------------------------------------------------

say "synchronous commit: pgbench -N -T $seconds at clients $clients, $rounds round(s)"
"$PGBIN/pgbench" -i -s 10 -q -h "$pgdir" -p "$port" -U postgres postgres >"$tmp/pgbench-init.log" 2>&1 ||
    { cat "$tmp/pgbench-init.log" >&2; die "pgbench -i failed"; }
nproc_=$(nproc)
mkdir -p "$tmp/pgbench-logs" "$tmp/sync"

# One synchronous run; appends a CSV row. Receiver: walrcv, pg_receivewal, none.
sync_run() { # clients, round, position, receiver
    local c=$1 round=$2 pos=$3 rcv=$4
    local tag="c$c-r$round-$rcv" app="" comm="" dir pid=""
    dir="$tmp/sync/$tag"
    mkdir -p "$dir"
    case "$rcv" in
    walrcv)
        app=walrcv_bench comm=walrcv
        "$walrcv" stream -D "$dir" -d "$conninfo application_name=$app" >"$tmp/sync/$tag.log" 2>&1 &
        pid=$!
        ;;
    pg_receivewal)
        app=pgrw_bench comm=pg_receivewal
        "$pg_receivewal" -D "$dir" -d "$conninfo application_name=$app" --synchronous >"$tmp/sync/$tag.log" 2>&1 &
        pid=$!
        ;;
    walrcv-*)
        app=walrcv_bench comm=walrcv
        "$walrcv" stream -Z "${rcv#walrcv-}" -D "$dir" -d "$conninfo application_name=$app" >"$tmp/sync/$tag.log" 2>&1 &
        pid=$!
        ;;
    walrcv_tls | walrcv_plain)
        app=$rcv comm=walrcv
        local mode=require
        [ "$rcv" = walrcv_plain ] && mode=disable
        "$walrcv" stream -D "$dir" -d "$conninfo application_name=$app sslmode=$mode" >"$tmp/sync/$tag.log" 2>&1 &
        pid=$!
        ;;
    pgrw_tls)
        app=$rcv comm=pg_receivewal
        "$pg_receivewal" -D "$dir" -d "$conninfo application_name=$app sslmode=require" --synchronous >"$tmp/sync/$tag.log" 2>&1 &
        pid=$!
        ;;
    none) ;;
    *) die "unknown receiver $rcv" ;;
    esac
    if [ -n "$pid" ]; then
        bg_pid=$pid
        # $! is the receiver itself (bash execs a simple command), not a shell:
        # check it once the exec is done.
        wait_for_comm "$pid" "$comm" || { cat "$tmp/sync/$tag.log" >&2; die "$rcv (pid $pid) is not running as $comm"; }
        set_sync_standby "$app"
        wait_for_sync "$app" "$pid" || { cat "$tmp/sync/$tag.log" >&2; die "$rcv never became the sync standby"; }
        if [ "$tls" = 1 ]; then
            local want=t
            [ "$rcv" = walrcv_plain ] && want=f
            [ "$(psql_ "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.application_name = '$app'")" = "$want" ] ||
                die "$rcv: its walsender's pg_stat_ssl.ssl is not $want"
        fi
    fi
    psql_ "CHECKPOINT"

    local jobs=$c ticks0=0 ticks1=0 uticks0=0 uticks1=0 rss="" out rc=0
    [ "$jobs" -gt "$nproc_" ] && jobs=$nproc_
    [ -n "$pid" ] && ticks0=$(cpu_ticks "$pid") && uticks0=$(user_ticks "$pid")
    out=$("$PGBIN/pgbench" -n -N -c "$c" -j "$jobs" -T "$seconds" -l --log-prefix="$tmp/pgbench-logs/$tag" \
        -h "$pgdir" -p "$port" -U postgres postgres 2>&1) || rc=$?
    if [ -n "$pid" ]; then
        kill -0 "$pid" 2>/dev/null || { cat "$tmp/sync/$tag.log" >&2; die "$rcv exited during pgbench"; }
        ticks1=$(cpu_ticks "$pid")
        uticks1=$(user_ticks "$pid")
        rss=$(peak_rss_kb "$pid")
        set_sync_standby ""
        stop_receiver "$pid"
        wait_no_walsenders
    fi
    printf '%s\n' "$out" >"$tmp/pgbench-logs/$tag.out"
    [ "$rc" = 0 ] || { printf '%s\n' "$out" >&2; die "pgbench failed ($rcv, $c clients)"; }
    rm -rf "$dir"

    local tps lat p99 n cpu="" cpu_tx="" user_tx=""
    tps=$(sed -nE 's/^tps = ([0-9.]+) .*/\1/p' <<<"$out")
    lat=$(sed -nE 's/^latency average = ([0-9.]+) ms$/\1/p' <<<"$out")
    n=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$out")
    p99=$(percentile_ms 99 "$tmp/pgbench-logs/$tag".*[0-9])
    if [ -n "$pid" ]; then
        cpu=$(awk -v a="$ticks0" -v b="$ticks1" -v hz="$clk_tck" 'BEGIN { printf "%.2f", (b - a) / hz }')
        # Per committed transaction, in microseconds: the figure the targets
        # are stated in (CPU seconds alone favour whoever commits less).
        cpu_tx=$(awk -v a="$ticks0" -v b="$ticks1" -v hz="$clk_tck" -v n="$n" 'BEGIN { printf "%.2f", (n > 0 ? (b - a) / hz / n * 1e6 : 0) }')
        user_tx=$(awk -v a="$uticks0" -v b="$uticks1" -v hz="$clk_tck" -v n="$n" 'BEGIN { printf "%.2f", (n > 0 ? (b - a) / hz / n * 1e6 : 0) }')
    fi
    echo "sync,$c,$round,$pos,$rcv,$tps,$lat,$p99,$n,,,,$cpu,,$rss,$cpu_tx,$user_tx" >>"$csv"
    note "$(printf '  %2s clients  round %s  %-13s  %9.1f tps  avg %8s ms  p99 %8s ms  cpu %6s s (%6s us/tx, user %6s)  rss %6s kB' \
        "$c" "$round" "$rcv" "$tps" "$lat" "$p99" "${cpu:--}" "${cpu_tx:--}" "${user_tx:--}" "${rss:--}")"
}

# --- 3. report -----------------------------------------------------------------

# Median of one CSV column over the rounds for one phase, client count, receiver.
median() { median_over_rounds "$@"; }
# The median over rounds of a / b within each round: every round holds all the
# receivers, so a trend across rounds (a database growing, a busier machine)
# cancels out of the ratio.
median_ratio() { # phase, clients, receiver a, receiver b, column name
    awk -F, -v ph="$1" -v c="$2" -v a="$3" -v b="$4" -v name="$5" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) col = i; next }
        $1 == ph && $2 == c && $col != "" { if ($5 == a) va[$3] = $col; if ($5 == b) vb[$3] = $col }
        END { for (r in va) if ((r in vb) && vb[r] > 0) print va[r] / vb[r] }' "$csv" | median_of "–" "%.2f"
}
row() { # label, format, scale divisor, phase, clients, column, ceiling receiver ("" = none)
    local label=$1 f=$2 d=$3 ph=$4 c=$5 col=$6 ceil=$7 w p x
    w=$(median "$ph" "$c" walrcv "$col")
    p=$(median "$ph" "$c" pg_receivewal "$col")
    x=""
    [ -n "$ceil" ] && x=$(median "$ph" "$c" "$ceil" "$col")
    [ -n "$w" ] && w=$(awk -v v="$w" -v d="$d" 'BEGIN { print v / d }')
    [ -n "$p" ] && p=$(awk -v v="$p" -v d="$d" 'BEGIN { print v / d }')
    [ -n "$x" ] && x=$(awk -v v="$x" -v d="$d" 'BEGIN { print v / d }')
    local rx="–"
    [ -n "$ceil" ] && rx=$(median_ratio "$ph" "$c" walrcv "$ceil" "$col")
    printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "$(fmt "$f" "$w")" "$(fmt "$f" "$p")" "$(fmt "$f" "$x")" \
        "$(median_ratio "$ph" "$c" walrcv pg_receivewal "$col")" "$rx"
}

# The --tls report: walrcv with TLS against walrcv in plain text and
# pg_receivewal with TLS.
report_tls() {
    local c w p x l
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC')  "
    echo "Command: \`$command_line\`  "
    echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{ print $3 }'), ssl = on (RSA 2048, self-signed); walrcv $("$walrcv" --version 2>/dev/null | awk '{ print $2 }'); medians of $rounds round(s), ratios the medians of the per-round ratios; pgbench -N -T $seconds, scale 10; load average $load_at_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end."
    echo
    echo "| | walrcv TLS | walrcv plain | pg_receivewal TLS | walrcv TLS / plain | walrcv TLS / pg_receivewal TLS |"
    echo "|---|---:|---:|---:|---:|---:|"
    for c in $clients; do
        l="sync, $c client$([ "$c" = 1 ] || echo s)"
        for col in tps cpu_s; do
            w=$(median sync "$c" walrcv_tls "$col")
            p=$(median sync "$c" walrcv_plain "$col")
            x=$(median sync "$c" pgrw_tls "$col")
            printf '| %s: %s | %s | %s | %s | %s | %s |\n' "$l" "$([ "$col" = tps ] && echo TPS || echo 'receiver CPU (s)')" \
                "$(fmt '%.2f' "$w")" "$(fmt '%.2f' "$p")" "$(fmt '%.2f' "$x")" \
                "$(median_ratio sync "$c" walrcv_tls walrcv_plain "$col")" \
                "$(median_ratio sync "$c" walrcv_tls pgrw_tls "$col")"
        done
    done
}

sync_receivers=(walrcv pg_receivewal none)
for z in $compress; do sync_receivers+=("walrcv-$z"); done
[ "$tls" = 1 ] && sync_receivers=(walrcv_tls walrcv_plain pgrw_tls)
for c in $clients; do
    for ((round = 1; round <= rounds; round++)); do
        pos=0
        while read -r rcv; do
            pos=$((pos + 1))
            sync_run "$c" "$round" "$pos" "$rcv" </dev/null
        done < <(rotated "$round" "${sync_receivers[@]}")
    done
done
if [ "$tls" = 1 ]; then
    say "results (TLS against plain text)"
    report_tls | tee "$tmp/report.md"
    echo
    echo "raw per-run figures: $csv$([ "$keep" = 1 ] || echo ' (deleted on exit: use --keep to keep it)')"
    exit 0
fi

# --- 2. catch-up ---------------------------------------------------------------
catchup_mb=0
ceiling_where="(catch-up not run: --sync-only)"
if [ "$sync_only" = 0 ]; then

say "catch-up: writing at least $wal_mb MB of WAL behind $((rounds * 3)) slots"
for ((round = 1; round <= rounds; round++)); do
    for rcv in walrcv pgrw ceiling; do
        psql_ "SELECT pg_create_physical_replication_slot('bench_r${round}_$rcv', true)" >/dev/null
    done
done
start_lsn=$(psql_ "SELECT pg_current_wal_lsn()")
write_wal "$start_lsn" "$wal_mb"
bytes=$wal_written_bytes
catchup_mb=$wal_written_mb
note "WAL from $start_lsn to $end_lsn: $catchup_mb MB"
# pg_receivewal stops only once a message ends past --endpos, so it
# is given the last byte before the flush position.
end_minus_1=$(psql_ "SELECT pg_lsn('$end_lsn') - 1")

# The ceiling archives into memory: a tmpfs sized for the WAL plus a margin.
tmpfs_dir="$tmp/tmpfs"
mkdir -p "$tmpfs_dir"
tmpfs_mb=$((bytes / 1048576 * 11 / 10 + 128))
ceiling_where="a tmpfs of $tmpfs_mb MB"
if mount -t tmpfs -o "size=${tmpfs_mb}m,mode=0755" walrcv-bench "$tmpfs_dir" 2>"$tmp/mount.log"; then
    tmpfs_mounted=1
else
    rmdir "$tmpfs_dir"
    tmpfs_dir=$(mktemp -d /dev/shm/walrcv-bench.XXXXXX)
    ceiling_where="/dev/shm (mount -t tmpfs failed: $(tr '\n' ' ' <"$tmp/mount.log" | sed 's/ *$//'))"
    note "bench: could not mount a tmpfs; the ceiling archives into $tmpfs_dir instead"
fi
note "ceiling archive: $ceiling_where"

# One catch-up run, timed by /usr/bin/time, whose child is the receiver itself.
# Appends a CSV row.
catchup_run() { # round, position, receiver
    local round=$1 pos=$2 rcv=$3 dir slot
    case "$rcv" in
    walrcv) dir="$tmp/archive-walrcv"; slot="bench_r${round}_walrcv" ;;
    pg_receivewal) dir="$tmp/archive-pgrw"; slot="bench_r${round}_pgrw" ;;
    ceiling) dir="$tmpfs_dir/archive"; slot="bench_r${round}_ceiling" ;;
    *) die "unknown receiver $rcv" ;;
    esac
    rm -rf "$dir"
    mkdir -p "$dir"
    local log="$tmp/catchup-r$round-$rcv.log" times="$tmp/catchup-r$round-$rcv.time"
    local cmd
    case "$rcv" in
    walrcv) cmd=("$walrcv" stream -D "$dir" -d "$conninfo" -S "$slot" -E "$end_lsn" -n) ;;
    pg_receivewal) cmd=("$pg_receivewal" -D "$dir" -d "$conninfo" -S "$slot" -E "$end_minus_1" -n) ;;
    ceiling) cmd=("$walrcv" stream -D "$dir" -d "$conninfo" -S "$slot" -E "$end_lsn" -n --no-sync) ;;
    esac
    # No run pays for the writeback of the one before, nor for the primary's
    # own checkpoint work.
    psql_ "CHECKPOINT" >/dev/null
    sync
    /usr/bin/time -o "$times" -f '%e %U %S %M' "${cmd[@]}" >"$log" 2>&1 ||
        { cat "$log" "$times" >&2; die "$rcv catch-up failed"; }
    local wall user sys rss mbs cpu cpu_gb
    read -r wall user sys rss <"$times"
    mbs=$(awk -v b="$bytes" -v t="$wall" 'BEGIN { printf "%.1f", (t > 0 ? b / 1048576 / t : 0) }')
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    cpu_gb=$(awk -v c="$cpu" -v b="$bytes" 'BEGIN { printf "%.3f", c / (b / 1073741824) }')
    echo "catchup,,$round,$pos,$rcv,,,,,$wall,$catchup_mb,$mbs,$cpu,$cpu_gb,$rss,," >>"$csv"
    note "$(printf '  round %s  %-13s  %7s s  %7s MB/s  cpu %6s s (%6s s/GB)  rss %6s kB' \
        "$round" "$rcv" "$wall" "$mbs" "$cpu" "$cpu_gb" "$rss")"
}

complete_segments() { # dir
    find "$1" -maxdepth 1 -name '????????????????????????' -printf '%f\n' | sort
}
# Same complete segments, same bytes, as pg_receivewal's.
compare_archives() { # round
    local reference="$tmp/archive-pgrw" other f n
    n=$(complete_segments "$reference" | wc -l)
    [ "$n" -gt 0 ] || die "round $1: pg_receivewal archived no complete segment"
    for other in "$tmp/archive-walrcv" "$tmpfs_dir/archive"; do
        [ "$(complete_segments "$other")" = "$(complete_segments "$reference")" ] ||
            die "round $1: $other and $reference hold different complete segments"
        while read -r f; do
            cmp -s "$other/$f" "$reference/$f" || die "round $1: $other/$f differs from pg_receivewal's"
        done < <(complete_segments "$reference")
    done
    note "  round $1: $n complete segments, identical in the three archives"
}

say "catch-up: $rounds round(s) of walrcv, pg_receivewal, ceiling"
for ((round = 1; round <= rounds; round++)); do
    pos=0
    while read -r rcv; do
        pos=$((pos + 1))
        catchup_run "$round" "$pos" "$rcv" </dev/null
    done < <(rotated "$round" walrcv pg_receivewal ceiling)
    compare_archives "$round"
    rm -rf "$tmp/archive-walrcv" "$tmp/archive-pgrw" "$tmpfs_dir/archive"
done
fi

report() {
    local c
    report_header
    echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{ print $3 }'), 16 MB segments, fsync on; walrcv $("$walrcv" --version 2>/dev/null | awk '{ print $2 }'); each figure is the median of $rounds round(s), taken on its own, and each ratio the median of the per-round ratios; synchronous runs: pgbench -N -T $seconds, scale 10; catch-up: $catchup_mb MB of WAL; ceiling = no synchronous standby (synchronous commit) or walrcv --no-sync into $ceiling_where (catch-up)."
    echo
    echo "| | walrcv | pg_receivewal | ceiling | walrcv / pg_receivewal | walrcv / ceiling |"
    echo "|---|---:|---:|---:|---:|---:|"
    for c in $clients; do
        local l="sync, $c client$([ "$c" = 1 ] || echo s)"
        row "$l: TPS" '%.0f' 1 sync "$c" tps none
        row "$l: latency avg (ms)" '%.3f' 1 sync "$c" lat_avg_ms none
        row "$l: latency p99 (ms)" '%.3f' 1 sync "$c" lat_p99_ms none
        row "$l: receiver CPU (s)" '%.2f' 1 sync "$c" cpu_s ""
        row "$l: receiver CPU per commit (µs)" '%.1f' 1 sync "$c" cpu_us_per_tx ""
        row "$l: receiver user CPU per commit (µs)" '%.1f' 1 sync "$c" user_us_per_tx ""
        row "$l: receiver peak RSS (MB)" '%.1f' 1024 sync "$c" peak_rss_kb ""
    done
    row "catch-up: wall time (s)" '%.2f' 1 catchup "" wall_s ceiling
    row "catch-up: MB/s" '%.0f' 1 catchup "" mb_per_s ceiling
    row "catch-up: CPU (s)" '%.2f' 1 catchup "" cpu_s ceiling
    row "catch-up: CPU (s) per GB" '%.2f' 1 catchup "" cpu_s_per_gb ceiling
    row "catch-up: peak RSS (MB)" '%.1f' 1024 catchup "" peak_rss_kb ceiling
}

# Compressed walrcv (-Z) against plain walrcv, synchronous phase only.
compress_report() {
    local c z
    echo
    echo "| -Z | clients | TPS | TPS / plain walrcv | receiver CPU (s) | CPU / plain walrcv |"
    echo "|---|---:|---:|---:|---:|---:|"
    for c in $clients; do
        for z in none $compress; do
            local r=walrcv
            [ "$z" = none ] || r="walrcv-$z"
            printf '| %s | %s | %s | %s | %s | %s |\n' "$z" "$c" \
                "$(fmt '%.0f' "$(median sync "$c" "$r" tps)")" "$(median_ratio sync "$c" "$r" walrcv tps)" \
                "$(fmt '%.2f' "$(median sync "$c" "$r" cpu_s)")" "$(median_ratio sync "$c" "$r" walrcv cpu_s)"
        done
    done
}

say "results"
{
    report
    [ -z "$compress" ] || compress_report
} | tee "$tmp/report.md"
echo
echo "raw per-run figures: $csv$([ "$keep" = 1 ] || echo ' (deleted on exit: use --keep to keep it)')"
