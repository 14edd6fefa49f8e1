#!/usr/bin/env bash
# The crash loop: walrcv is killed with SIGKILL at random moments while it is the
# synchronous standby of a primary under load, then the archive must restore every
# commit the primary acknowledged to a client.
#
#   scripts/crash-loop.sh [N] [--clients C] [--keep]
#
#   N            kill and restart cycles (default 5)
#   --clients C  concurrent committing clients (default 4)
#   --keep       keep the scratch directory (archive, data directories, logs)
#
# 1. Starts a scratch PostgreSQL 15 primary (user postgres, 1 MB segments, a free
#    port, a temporary directory removed on exit, also on failure) with
#    synchronous_standby_names = 'walrcv', creates the slot walrcv_crash, starts
#    `walrcv stream` (release build) on it and takes a base backup (-X none: its
#    WAL must come from the archive).
# 2. Clients insert numbered rows (client c inserts c, c+C, c+2C, ...), one
#    autocommit INSERT at a time through psql; the k-th "INSERT 0 1" psql prints is
#    the k-th row, acknowledged (a commit's CommandComplete comes after the
#    synchronous-replication wait).
# 3. N times: waits 0.2 to 2.5 s, SIGKILLs walrcv, restarts it.
# 4. Stops the primary in immediate mode, kills walrcv, and checks the archive:
#    only WAL names (no .tmp, no other file), every complete segment a whole
#    segment byte-identical to the primary's, the newest .partial equal to the
#    primary's segment up to where its zero padding starts, `walrcv verify` passes.
# 5. Restores the base backup plus the archive on a new server (restore_command
#    copies from a copy of the archive), recovers to the end, and checks that every
#    acknowledged row is there.
#
# Exits 0 when everything holds, 1 with a message naming the failed check.
# Respects CARGO_TARGET_DIR. Needs root (or the postgres user itself).
set -euo pipefail
cd "$(dirname "$0")/.."

cycles=5
clients=4
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
    --clients)
        clients="$2"
        shift
        ;;
    --keep) keep=1 ;;
    -h | --help)
        sed -n '2,32p' "$0"
        exit 0
        ;;
    '' | *[!0-9]*)
        echo "crash-loop.sh: unknown argument: $1 (see --help)" >&2
        exit 2
        ;;
    *) cycles="$1" ;;
    esac
    shift
done

PGBIN=/usr/lib/postgresql/15/bin
SEGMENT_SIZE=$((1024 * 1024))
SLOT=walrcv_crash
started=$(date +%s)

say() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
fail() {
    echo "crash-loop.sh: FAILED: $*" >&2
    exit 1
}

say "PostgreSQL 15 and a release build of walrcv"
scripts/install-deps.sh --no-npm
cargo build --release --quiet
walrcv="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)/walrcv"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/walrcv-crash-loop.XXXXXX")
chmod 755 "$tmp"
pgdir="$tmp/pg" # data directories, sockets and server logs; owned by the server user
archive="$tmp/archive"
mkdir -p "$pgdir" "$archive"
chmod 700 "$pgdir"
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$pgdir"
    as_server() { runuser -u postgres -- "$@"; }
else
    as_server() { "$@"; }
fi
primary="$pgdir/primary"
restored="$pgdir/restored"
walrcv_pid=""
client_pids=()
running_servers=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${client_pids[@]}" $walrcv_pid; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for data in "${running_servers[@]}"; do
        (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$data" -m immediate -w stop) >/dev/null 2>&1 || true
    done
    if [ "$keep" = 1 ] || [ "$rc" != 0 ]; then
        echo "crash-loop.sh: logs kept in $tmp" >&2
    fi
    if [ "$keep" = 1 ]; then
        :
    elif [ "$rc" != 0 ]; then
        # Keep the logs of a failed run; drop the bulky data.
        rm -rf "$primary/base" "$restored/base" "$pgdir/base-backup"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_server DATA: starts the server of DATA on a free port (retrying when another
# process takes the port first) and sets $port.
start_server() {
    local data=$1 log="$1.log"
    for _ in 1 2 3 4 5; do
        port=""
        for _ in $(seq 50); do
            local candidate=$((20000 + RANDOM % 30000))
            if port_is_free "$candidate"; then
                port=$candidate
                break
            fi
        done
        echo "port = $port" >"$data/crash_loop_port.conf"
        if (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$data" -l "$log" -w -t 600 start >/dev/null); then
            running_servers+=("$data")
            return 0
        fi
        grep -q "could not bind" "$log" || break
    done
    tail -n 30 "$log" >&2
    fail "could not start the server in $data"
}

stop_server() {
    local data=$1 mode=$2
    (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$data" -m "$mode" -w stop >/dev/null)
    local kept=()
    for d in "${running_servers[@]}"; do
        [ "$d" = "$data" ] || kept+=("$d")
    done
    running_servers=(${kept[@]+"${kept[@]}"})
}

sql() { "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"; }

# --- 1. primary, slot, walrcv, base backup ---------------------------------------
say "primary in $primary"
(cd "$pgdir" && as_server "$PGBIN/initdb" -D "$primary" -U postgres -A trust --locale=C -E UTF8 \
    --wal-segsize=1 >/dev/null)
cat >>"$primary/postgresql.conf" <<EOF
# --- scripts/crash-loop.sh ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$pgdir'
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
synchronous_standby_names = 'walrcv'
synchronous_commit = on
# keep every segment so that the archive can be compared with pg_wal
wal_keep_size = '4GB'
max_wal_size = '64MB'
shared_buffers = '64MB'
log_line_prefix = '%m [%p] %q%a '
log_replication_commands = on
include 'crash_loop_port.conf'
EOF
start_server "$primary"
primary_port=$port
conninfo="host=127.0.0.1 port=$primary_port user=postgres"
# No synchronous standby yet: this commit must not wait for one.
sql "$primary_port" "SET synchronous_commit = local;
    CREATE TABLE acked (id bigint PRIMARY KEY, client int NOT NULL)"

"$walrcv" stream --create-slot --slot="$SLOT" -d "$conninfo" >>"$tmp/walrcv.log" 2>&1 ||
    fail "walrcv --create-slot failed (see $tmp/walrcv.log)"

start_walrcv() {
    "$walrcv" stream -D "$archive" -d "$conninfo" --slot="$SLOT" -v >>"$tmp/walrcv.log" 2>&1 &
    walrcv_pid=$!
}

# wait_streaming: until walrcv streams as the synchronous standby (60 s at most).
wait_streaming() {
    for _ in $(seq 600); do
        kill -0 "$walrcv_pid" 2>/dev/null || fail "walrcv exited by itself (see $tmp/walrcv.log)"
        [ "$(sql "$primary_port" "SELECT count(*) FROM pg_stat_replication
                 WHERE application_name = 'walrcv' AND sync_state = 'sync'")" = 1 ] && return 0
        sleep 0.1
    done
    fail "walrcv is not the synchronous standby after 60 s (see $tmp/walrcv.log)"
}

start_walrcv
wait_streaming
echo "walrcv streams as the synchronous standby (pid $walrcv_pid)"

say "base backup"
(cd "$pgdir" && as_server "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres \
    -D "$pgdir/base-backup" -X none -c fast)

# --- 2. clients ----------------------------------------------------------------------
say "$clients clients committing numbered rows"
for c in $(seq 1 "$clients"); do
    (
        i=0
        while :; do
            echo "INSERT INTO acked VALUES ($((c + i * clients)), $c);"
            i=$((i + 1))
        done | stdbuf -oL "$PGBIN/psql" -X -h 127.0.0.1 -p "$primary_port" -U postgres -d postgres \
            >"$tmp/client-$c.out" 2>"$tmp/client-$c.err"
    ) &
    client_pids+=($!)
done

acknowledged() { cat "$tmp"/client-*.out 2>/dev/null | grep -c '^INSERT 0 1$' || true; }

# --- 3. the kills -----------------------------------------------------------------------
say "$cycles cycles: SIGKILL walrcv at a random moment, restart it"
for cycle in $(seq 1 "$cycles"); do
    pause_ms=$((200 + RANDOM % 2300))
    sleep "$((pause_ms / 1000)).$(printf '%03d' $((pause_ms % 1000)))"
    kill -0 "$walrcv_pid" 2>/dev/null || fail "walrcv exited by itself in cycle $cycle (see $tmp/walrcv.log)"
    kill -KILL "$walrcv_pid"
    wait "$walrcv_pid" 2>/dev/null || true
    echo "cycle $cycle/$cycles: killed after ${pause_ms} ms, $(acknowledged) commits acknowledged so far" >>"$tmp/cycles.log"
    if [ $((cycle % 10)) = 0 ] || [ "$cycle" = "$cycles" ]; then
        tail -n 1 "$tmp/cycles.log"
    fi
    echo "--- crash-loop.sh: SIGKILL (cycle $cycle), restart" >>"$tmp/walrcv.log"
    start_walrcv
done
# Let the last walrcv catch up and acknowledge commits again before the end.
wait_streaming
sleep 2

# --- 4. the end, and the archive ------------------------------------------------------
say "stopping the primary (immediate), killing walrcv"
stop_server "$primary" immediate
kill -KILL "$walrcv_pid" 2>/dev/null || true
wait "$walrcv_pid" 2>/dev/null || true
walrcv_pid=""
for pid in "${client_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
done
client_pids=()
acked=$(acknowledged)
[ "$acked" -gt 0 ] || fail "no commit was acknowledged (see $tmp/client-*.err)"
echo "$acked commits acknowledged to the clients"

say "checking the archive"
complete=0
partials=()
for f in "$archive"/* "$archive"/.[!.]*; do
    [ -e "$f" ] || continue
    name=$(basename "$f")
    size=$(stat -c %s "$f")
    if [[ "$name" =~ ^[0-9A-F]{24}$ ]]; then
        [ "$size" = "$SEGMENT_SIZE" ] || fail "$name is $size bytes, not a whole segment"
        [ -f "$primary/pg_wal/$name" ] || fail "$name is not in the primary's pg_wal"
        cmp -s "$f" "$primary/pg_wal/$name" ||
            fail "$name differs from the primary's: $(cmp "$f" "$primary/pg_wal/$name" 2>&1 | head -n 1)"
        complete=$((complete + 1))
    elif [[ "$name" =~ ^[0-9A-F]{24}\.partial$ ]]; then
        [ "$size" = 0 ] || [ "$size" = "$SEGMENT_SIZE" ] ||
            fail "$name is $size bytes: neither empty nor a whole segment"
        partials+=("$name")
    elif [[ ! "$name" =~ ^[0-9A-F]{8}\.history$ ]]; then
        fail "stray file in the archive: $name ($size bytes)"
    fi
done
[ "$complete" -gt 0 ] || fail "no complete segment in the archive"
[ "${#partials[@]}" -le 1 ] || fail "more than one .partial on one timeline: ${partials[*]}"
if [ "${#partials[@]}" = 1 ]; then
    partial=${partials[0]}
    segment=${partial%.partial}
    # The .partial is the primary's segment up to where walrcv stopped receiving,
    # then zeros (its pre-padding).
    first_difference=$( (LC_ALL=C cmp "$archive/$partial" "$primary/pg_wal/$segment" 2>&1 || true) |
        sed -n 's/.* differ: byte \([0-9]*\),.*/\1/p')
    if [ -n "$first_difference" ]; then
        nonzero=$(tail -c +"$first_difference" "$archive/$partial" | tr -d '\0' | wc -c)
        [ "$nonzero" = 0 ] ||
            fail "$partial differs from the primary's segment at byte $first_difference, before its zero padding"
    fi
fi
"$walrcv" verify "$archive" >"$tmp/verify.log" 2>&1 || {
    cat "$tmp/verify.log" >&2
    fail "walrcv verify found problems in the archive"
}
echo "$complete complete segments identical to the primary's, ${partials[*]:-no .partial}, no stray file"
tail -n 1 "$tmp/verify.log"

# --- 5. restore -------------------------------------------------------------------------
say "restoring the base backup plus the archive on a new server"
restore_wal="$tmp/restore-wal"
cp -a "$archive" "$restore_wal"
# `walrcv restore` does not exist yet: the newest .partial is offered to recovery
# under its segment name, as a restore_command serving a pg_receivewal archive must.
if [ "${#partials[@]}" = 1 ]; then
    mv "$restore_wal/${partials[0]}" "$restore_wal/${partials[0]%.partial}"
fi
chmod -R a+rX "$restore_wal"
cp -a "$pgdir/base-backup" "$restored"
chown -R postgres: "$restored" 2>/dev/null || true
cat >>"$restored/postgresql.conf" <<EOF
# --- scripts/crash-loop.sh: restore ---
synchronous_standby_names = ''
restore_command = 'cp "$restore_wal/%f" "%p"'
# No connections before recovery has replayed everything (nothing can read a
# half-recovered table); pg_ctl -w returns once recovery has started.
hot_standby = off
EOF
touch "$restored/recovery.signal"
chown postgres: "$restored/recovery.signal" 2>/dev/null || true
start_server "$restored"
restored_port=$port
# Recovery ends when the archive has no next segment; the server then promotes
# itself to a new timeline and accepts connections.
recovered=0
for _ in $(seq 6000); do
    if [ "$(sql "$restored_port" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ]; then
        recovered=1
        break
    fi
    sleep 0.1
done
[ "$recovered" = 1 ] || fail "the restored server is still in recovery after 600 s (see $restored.log)"
grep -E "redo done at|archive recovery complete|selected new timeline" "$restored.log" | sed 's/^/  | /' || true

rows=$(sql "$restored_port" "SELECT count(*) FROM acked")
for c in $(seq 1 "$clients"); do
    n=$(grep -c '^INSERT 0 1$' "$tmp/client-$c.out" || true)
    [ "$n" -gt 0 ] || continue
    # Every acknowledged id of client c: c, c+C, ..., c+(n-1)C.
    lost=$(sql "$restored_port" "SELECT count(*) FROM generate_series(0, $n - 1) AS k
        WHERE NOT EXISTS (SELECT 1 FROM acked WHERE id = $c + k * $clients)")
    [ "$lost" = 0 ] ||
        fail "client $c: $lost of its $n acknowledged rows are missing after the restore"
done
stop_server "$restored" fast
echo "all $acked acknowledged rows restored ($rows rows in the table: the others were in flight when the primary stopped)"

say "OK: $cycles cycles, $acked acknowledged commits, $complete segments, in $(($(date +%s) - started)) s"
