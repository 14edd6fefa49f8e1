#!/usr/bin/env bash
# Tries walrcv on this machine, in a couple of minutes, touching nothing else:
#   1. installs PostgreSQL 15 from Debian if missing (scripts/install-deps.sh --no-npm)
#   2. builds walrcv (cargo build --release)
#   3. starts a scratch primary (16 MB segments) on a free port in a temporary directory
#   4. creates the slot walrcv_try and streams into an archive directory with
#      `walrcv stream -D ARCHIVE -S walrcv_try -v` while pgbench writes for 15 s
#   5. shows the archive beside the primary's pg_wal, pg_stat_replication, and
#      compares every complete segment byte for byte
#   6. stops walrcv (SIGINT), stops the primary, removes the temporary directory
#
#   scripts/try.sh [--keep] [--seconds N] [--receiver PATH]
#
#   --keep           keep the temporary directory (archive, data directory, logs)
#   --seconds N      how long pgbench writes (default 15)
#   --receiver PATH  stream with another binary taking pg_receivewal's flags
#                    (e.g. /usr/lib/postgresql/15/bin/pg_receivewal) instead of
#                    building walrcv
#
# Respects CARGO_TARGET_DIR. Exits non-zero if a complete segment differs.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
seconds=15
receiver=""
while [ $# -gt 0 ]; do
    case "$1" in
    --keep) keep=1 ;;
    --seconds)
        seconds="$2"
        shift
        ;;
    --receiver)
        receiver="$2"
        shift
        ;;
    -h | --help)
        sed -n '2,20p' "$0"
        exit 0
        ;;
    *)
        echo "try.sh: unknown argument: $1 (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

PGBIN=/usr/lib/postgresql/15/bin

# --- 1 and 2: PostgreSQL and walrcv --------------------------------------------
say "installing PostgreSQL 15 if missing"
scripts/install-deps.sh --no-npm

if [ -z "$receiver" ]; then
    say "building walrcv (cargo build --release)"
    cargo build --release
    target_dir="${CARGO_TARGET_DIR:-target}"
    receiver="$target_dir/release/walrcv"
    receiver_args=(stream)
    app_name=walrcv
else
    receiver_args=()
    app_name=$(basename "$receiver")
fi
[ -x "$receiver" ] || {
    echo "try.sh: $receiver is not an executable" >&2
    exit 1
}
receiver=$(cd "$(dirname "$receiver")" && pwd)/$(basename "$receiver")

# --- 3: a scratch primary ------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/walrcv-try.XXXXXX")
chmod 755 "$tmp"
pgdir="$tmp/pg" # data directory, Unix socket and server log; owned by the server user
archive="$tmp/archive"
mkdir -p "$pgdir" "$archive"
chmod 700 "$pgdir"
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$pgdir"
    as_server() { runuser -u postgres -- "$@"; }
else
    as_server() { "$@"; }
fi
pgdata="$pgdir/data"
receiver_pid=""
server_started=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$receiver_pid" ] && kill -0 "$receiver_pid" 2>/dev/null; then
        kill -INT "$receiver_pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$receiver_pid" 2>/dev/null || true
    fi
    if [ "$server_started" = 1 ]; then
        (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$pgdata" -m immediate -w stop) >/dev/null 2>&1 || true
    fi
    if [ "$keep" = 1 ]; then
        echo "kept $tmp (archive: $archive, data: $pgdata, logs: $pgdir/server.log $tmp/receiver.log)"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting a scratch PostgreSQL 15 primary in $pgdir"
(cd "$pgdir" && as_server "$PGBIN/initdb" -D "$pgdata" -U postgres -A trust --locale=C -E UTF8 >/dev/null)
cat >>"$pgdata/postgresql.conf" <<EOF
# --- scripts/try.sh ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$pgdir'
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
# keep the primary's segments so they can be compared with the archive
wal_keep_size = '1GB'
shared_buffers = '64MB'
log_line_prefix = '%m [%p] %q%a '
log_replication_commands = on
include 'try_port.conf'
EOF

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=""
for _ in 1 2 3 4 5; do
    for _ in $(seq 50); do
        candidate=$((20000 + RANDOM % 30000))
        if port_is_free "$candidate"; then
            port=$candidate
            break
        fi
    done
    echo "port = $port" >"$pgdata/try_port.conf"
    if (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$pgdata" -l "$pgdir/server.log" -w -t 60 start >/dev/null); then
        server_started=1
        break
    fi
    if ! grep -q "could not bind" "$pgdir/server.log"; then
        tail -n 20 "$pgdir/server.log" >&2
        exit 1
    fi
done
if [ "$server_started" != 1 ]; then
    echo "try.sh: could not start the server on a free port" >&2
    tail -n 20 "$pgdir/server.log" >&2
    exit 1
fi

psql_() { "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -h "$pgdir" -p "$port" -U postgres -d postgres "$@"; }
echo "primary: PostgreSQL $(psql_ -c 'SHOW server_version'), port $port, data $pgdata"

# --- 4: stream while pgbench writes ---------------------------------------------
conninfo="host=127.0.0.1 port=$port user=postgres"
say "creating the replication slot walrcv_try"
echo "+ $receiver${receiver_args[*]:+ ${receiver_args[*]}} --create-slot --if-not-exists -S walrcv_try -d \"$conninfo\""
"$receiver" "${receiver_args[@]}" --create-slot --if-not-exists -S walrcv_try -d "$conninfo"
psql_ -c "SELECT slot_name, slot_type, restart_lsn FROM pg_replication_slots" |
    sed 's/^/  slot: /'

say "streaming into $archive"
echo "+ $receiver${receiver_args[*]:+ ${receiver_args[*]}} -D $archive -d \"$conninfo\" -S walrcv_try -v &"
"$receiver" "${receiver_args[@]}" -D "$archive" -d "$conninfo" -S walrcv_try -v \
    >"$tmp/receiver.log" 2>&1 &
receiver_pid=$!

streaming=0
for _ in $(seq 100); do
    if ! kill -0 "$receiver_pid" 2>/dev/null; then
        break
    fi
    if [ "$(psql_ -c "SELECT count(*) FROM pg_stat_replication
                      WHERE state = 'streaming' AND application_name = '$app_name'")" != 0 ]; then
        streaming=1
        break
    fi
    sleep 0.1
done
if [ "$streaming" != 1 ]; then
    if ! kill -0 "$receiver_pid" 2>/dev/null; then
        rc=0
        wait "$receiver_pid" || rc=$?
        receiver_pid=""
        echo "try.sh: $app_name exited with status $rc before streaming; its output:" >&2
    else
        echo "try.sh: $app_name is not streaming after 10 s; its output:" >&2
    fi
    cat "$tmp/receiver.log" >&2
    exit 1
fi

say "pgbench -i -s 5, then pgbench -T $seconds"
"$PGBIN/pgbench" -h "$pgdir" -p "$port" -U postgres -i -q -s 5 postgres 2>&1 | tail -n 1
"$PGBIN/pgbench" -h "$pgdir" -p "$port" -U postgres -c 4 -j 2 -T "$seconds" -P 5 postgres 2>&1 |
    grep -E '^progress|^tps|^latency average|^number of transactions actually'
switch_lsn=$(psql_ -c "SELECT pg_switch_wal()")
echo "pg_switch_wal() at $switch_lsn"

say "pg_stat_replication (while streaming)"
sleep 3
psql_ -P footer=off -c "\\pset format aligned" -c "\\pset tuples_only off" -c \
    "SELECT application_name, state, sync_state, sent_lsn, write_lsn, flush_lsn, replay_lsn
     FROM pg_stat_replication"

# --- 5: the archive beside pg_wal -----------------------------------------------
say "archive ($archive)"
ls -l "$archive"
say "primary's pg_wal ($pgdata/pg_wal)"
ls -l "$pgdata/pg_wal"

say "comparing complete segments"
same=0
differ=0
missing=0
printf '  %-28s %-12s %s\n' SEGMENT PRIMARY ARCHIVE
for f in "$archive"/*; do
    name=$(basename "$f")
    [[ "$name" =~ ^[0-9A-F]{24}$ ]] || continue
    if [ ! -f "$pgdata/pg_wal/$name" ]; then
        printf '  %-28s %-12s %s\n' "$name" "(removed)" "$(wc -c <"$f") bytes"
        missing=$((missing + 1))
    elif cmp -s "$f" "$pgdata/pg_wal/$name"; then
        printf '  %-28s %-12s %s\n' "$name" "$(cksum <"$f" | cut -d' ' -f1)" identical
        same=$((same + 1))
    else
        printf '  %-28s %-12s %s\n' "$name" "$(cksum <"$pgdata/pg_wal/$name" | cut -d' ' -f1)" \
            "DIFFERENT ($(cmp "$f" "$pgdata/pg_wal/$name" 2>&1 | head -n 1))"
        differ=$((differ + 1))
    fi
done
for f in "$archive"/*.partial; do
    [ -e "$f" ] && echo "  $(basename "$f"): the segment being written"
done

# --- 6: stop --------------------------------------------------------------------
say "stopping the receiver (SIGINT)"
kill -INT "$receiver_pid"
rc=0
wait "$receiver_pid" || rc=$?
receiver_pid=""
echo "receiver exit status $rc; last lines of its output:"
tail -n 15 "$tmp/receiver.log" | sed 's/^/  | /'

say "stopping the primary"
(cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$pgdata" -m fast -w stop)
server_started=0

say "result"
echo "$same complete segments identical, $differ different, $missing no longer on the primary"
if [ "$differ" -gt 0 ] || [ "$same" -eq 0 ]; then
    echo "FAILED"
    exit 1
fi
echo "OK: the archive is byte-identical to the primary's WAL"
