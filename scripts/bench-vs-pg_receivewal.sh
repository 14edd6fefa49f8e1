#!/usr/bin/env bash
# Side-by-side benchmark of walrcv against pg_receivewal on one scratch primary
# (PostgreSQL 15, 16 MB segments, fsync on), touching nothing else:
#
#   1. catch-up: about WAL_MB of WAL (default 512) is written first, then each
#      receiver archives it from a slot to --endpos; we time it and take its CPU
#      time (user + system, from bash's `time`).
#   2. synchronous commit: each receiver runs as the only synchronous standby
#      (pg_receivewal with --synchronous, walrcv as it always runs) while
#      `pgbench -c 4 -T SECONDS` commits, twice each in the order walrcv,
#      pg_receivewal, pg_receivewal, walrcv; we take the mean tps and latency.
#
# Each receiver runs alone, in turn, against the same primary; the report gives
# ratios (walrcv / pg_receivewal) from this one run. The machine is shared and
# noisy: compare ratios, not absolute figures, and run it more than once.
#
#   scripts/bench-vs-pg_receivewal.sh [--wal-mb N] [--seconds N] [--keep]
#
# Respects CARGO_TARGET_DIR. Needs root (the server runs as `postgres`) or a
# non-root user who can run PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

wal_mb=512
seconds=20
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
    --wal-mb) wal_mb="$2"; shift ;;
    --seconds) seconds="$2"; shift ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '\n== %s\n' "$*"; }
PGBIN=/usr/lib/postgresql/15/bin

say "dependencies and build"
scripts/install-deps.sh --no-npm
cargo build --release
walrcv="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)/walrcv"
pg_receivewal="$PGBIN/pg_receivewal"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/walrcv-bench.XXXXXX")
chmod 755 "$tmp"
pgdir="$tmp/pg"
mkdir -p "$pgdir"
chmod 700 "$pgdir"
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$pgdir"
    as_server() { runuser -u postgres -- "$@"; }
else
    as_server() { "$@"; }
fi
pgdata="$pgdir/data"
bg_pid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$bg_pid" ] && kill -KILL "$bg_pid" 2>/dev/null || true
    (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$pgdata" -m immediate -w stop) >/dev/null 2>&1 || true
    if [ "$keep" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=""
for _ in $(seq 100); do
    candidate=$((20000 + RANDOM % 30000))
    if port_is_free "$candidate"; then port=$candidate; break; fi
done
[ -n "$port" ] || { echo "bench: no free port" >&2; exit 1; }

say "scratch primary on port $port"
(cd "$pgdir" && as_server "$PGBIN/initdb" -D "$pgdata" -U postgres -A trust --locale=C -E UTF8 >/dev/null)
cat >>"$pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$pgdir'
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
max_wal_size = '4GB'
shared_buffers = '128MB'
EOF
(cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$pgdata" -l "$pgdir/server.log" -w start >/dev/null)
psql_() { psql -XAtq -h "$pgdir" -p "$port" -U postgres -d postgres -c "$1"; }
conninfo="host=127.0.0.1 port=$port user=postgres"

say "catch-up: writing about $wal_mb MB of WAL behind two slots"
psql_ "SELECT pg_create_physical_replication_slot('bench_walrcv', true)" >/dev/null
psql_ "SELECT pg_create_physical_replication_slot('bench_pgrw', true)" >/dev/null
start_lsn=$(psql_ "SELECT pg_current_wal_lsn()")
psql_ "CREATE TABLE filler(x bigint, pad text)"
rows=$((wal_mb * 1024 * 1024 / 400))
psql_ "INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, $rows) g"
psql_ "CHECKPOINT"
end_lsn=$(psql_ "SELECT pg_current_wal_flush_lsn()")
bytes=$(psql_ "SELECT pg_wal_lsn_diff('$end_lsn', '$start_lsn')::bigint")
echo "WAL from $start_lsn to $end_lsn: $((bytes / 1024 / 1024)) MB"

TIMEFORMAT='%R %U %S'
catch_up() { # name, command...
    local name=$1 dir="$tmp/archive-$1"
    shift
    mkdir -p "$dir"
    local t
    t=$({ time "$@" -D "$dir" >/dev/null 2>"$tmp/$name.log"; } 2>&1) || {
        echo "bench: $name failed:"; cat "$tmp/$name.log"; exit 1
    }
    echo "$t"
}
# pg_receivewal stops only once a message ends past --endpos (see README), so it
# is given the last byte before the flush position.
end_minus_1=$(psql_ "SELECT pg_lsn('$end_lsn') - 1")
read -r w_real w_user w_sys < <(catch_up walrcv "$walrcv" stream -d "$conninfo" -S bench_walrcv -E "$end_lsn" -n)
read -r p_real p_user p_sys < <(catch_up pgrw "$pg_receivewal" -d "$conninfo" -S bench_pgrw -E "$end_minus_1" -n)
for d in walrcv pgrw; do
    n=$(find "$tmp/archive-$d" -name '????????????????????????' | wc -l)
    echo "$d archived $n complete segments"
done
# Same complete segments, same bytes.
for f in "$tmp"/archive-walrcv/????????????????????????; do
    cmp -s "$f" "$tmp/archive-pgrw/$(basename "$f")" || { echo "bench: $(basename "$f") differs" >&2; exit 1; }
done

say "synchronous commit: pgbench -c 4 -T $seconds with each receiver as the synchronous standby"
(cd "$pgdir" && as_server "$PGBIN/pgbench" -i -s 10 -q -h "$pgdir" -p "$port" -U postgres postgres >/dev/null 2>&1) ||
    "$PGBIN/pgbench" -i -s 10 -q -h "$pgdir" -p "$port" -U postgres postgres >/dev/null
sync_run() { # app_name, command...
    local app=$1
    shift
    local dir="$tmp/sync-$app"
    mkdir -p "$dir"
    "$@" -D "$dir" >/dev/null 2>"$tmp/sync-$app.log" &
    bg_pid=$!
    psql_ "ALTER SYSTEM SET synchronous_standby_names = '\"$app\"'" >/dev/null
    psql_ "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 100); do
        [ "$(psql_ "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$app' AND sync_state = 'sync'")" = 1 ] && break
        sleep 0.1
    done
    local out
    out=$("$PGBIN/pgbench" -n -c 4 -j 2 -T "$seconds" -h "$pgdir" -p "$port" -U postgres postgres 2>&1)
    kill -INT "$bg_pid"; wait "$bg_pid" || true
    bg_pid=""
    psql_ "ALTER SYSTEM RESET synchronous_standby_names" >/dev/null
    psql_ "SELECT pg_reload_conf()" >/dev/null
    local tps lat
    tps=$(echo "$out" | sed -nE 's/^tps = ([0-9.]+).*/\1/p')
    lat=$(echo "$out" | sed -nE 's/^latency average = ([0-9.]+) ms/\1/p')
    echo "$tps $lat"
}
# Order walrcv, pg_receivewal, pg_receivewal, walrcv, and the mean of each pair,
# so that neither gains from running on a warmer or a less bloated database.
w_run() { sync_run walrcv_bench "$walrcv" stream -d "$conninfo application_name=walrcv_bench"; }
p_run() { sync_run pgrw_bench "$pg_receivewal" -d "$conninfo application_name=pgrw_bench" --synchronous; }
read -r w_tps1 w_lat1 < <(w_run)
read -r p_tps1 p_lat1 < <(p_run)
read -r p_tps2 p_lat2 < <(p_run)
read -r w_tps2 w_lat2 < <(w_run)
mean() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (a + b) / 2 }'; }
w_tps=$(mean "$w_tps1" "$w_tps2"); w_lat=$(mean "$w_lat1" "$w_lat2")
p_tps=$(mean "$p_tps1" "$p_tps2"); p_lat=$(mean "$p_lat1" "$p_lat2")
echo "walrcv: $w_tps1 / $w_tps2 tps; pg_receivewal: $p_tps1 / $p_tps2 tps"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
say "results (one run; ratios walrcv / pg_receivewal)"
printf '%-34s %14s %14s %8s\n' "" walrcv pg_receivewal ratio
printf '%-34s %14s %14s %8s\n' "catch-up wall time (s)" "$w_real" "$p_real" "$(ratio "$w_real" "$p_real")"
printf '%-34s %14s %14s %8s\n' "catch-up CPU user+sys (s)" \
    "$(awk -v u="$w_user" -v s="$w_sys" 'BEGIN{printf "%.2f", u+s}')" \
    "$(awk -v u="$p_user" -v s="$p_sys" 'BEGIN{printf "%.2f", u+s}')" \
    "$(ratio "$(awk -v u="$w_user" -v s="$w_sys" 'BEGIN{print u+s}')" "$(awk -v u="$p_user" -v s="$p_sys" 'BEGIN{print u+s}')")"
printf '%-34s %14s %14s %8s\n' "sync commit tps (higher is better)" "$w_tps" "$p_tps" "$(ratio "$w_tps" "$p_tps")"
printf '%-34s %14s %14s %8s\n' "sync commit latency (ms)" "$w_lat" "$p_lat" "$(ratio "$w_lat" "$p_lat")"
