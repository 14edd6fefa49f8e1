#!/usr/bin/env bash
# walrcv restore of a real 16 MB segment against the plain tool making the same
# copy without any check (cat, gzip -dc, zstd -dc, lz4 -dc), alternating, best
# of 7 each; prints one line per storage form with the ratio. The guide's
# "Restore > Speed" table (docs/src/restore.md) comes from it.
#
#   scripts/bench-restore.sh        (as root: the scratch server runs as postgres)
#
# Needs PostgreSQL 15 from Debian and the gzip, zstd, lz4 and bc commands.
# Builds walrcv in release mode (respects CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PGBIN=/usr/lib/postgresql/15/bin
cargo build --release --quiet
W="${CARGO_TARGET_DIR:-target}/release/walrcv"
d=$(mktemp -d /tmp/walrcv-bench-restore.XXXX)
trap 'su postgres -c "$PGBIN/pg_ctl -D $d/data stop -m immediate" >/dev/null 2>&1 || true; rm -rf "$d"' EXIT
chown postgres "$d"
su postgres -c "$PGBIN/initdb -D $d/data -A trust >/dev/null"
su postgres -c "$PGBIN/pg_ctl -D $d/data -o '-p 54998 -k $d -c listen_addresses=' -l $d/log start >/dev/null"
su postgres -c "$PGBIN/pgbench -h $d -p 54998 -i -s 20 postgres >/dev/null 2>&1"
seg=$(ls $d/data/pg_wal | grep -E '^[0-9A-F]{24}$' | sort | sed -n 3p)
cp $d/data/pg_wal/$seg $d/$seg.orig
su postgres -c "$PGBIN/pg_ctl -D $d/data stop -m fast >/dev/null"
mkdir -p $d/arch $d/out
t() { local s e; s=$(date +%s%N); "$@"; e=$(date +%s%N); echo $(( (e - s) / 1000 )); }
bench() { # label, archive file name, baseline command...
  local label=$1 f=$2; shift 2
  local bw=999999999 bb=999999999 x
  for i in 1 2 3 4 5 6 7; do
    rm -f $d/out/x; x=$(t $W restore $seg $d/out/x -D $d/arch); [ $x -lt $bw ] && bw=$x
    rm -f $d/out/y; x=$(t sh -c "$* > $d/out/y"); [ $x -lt $bb ] && bb=$x
  done
  printf '%s: walrcv restore %.1f ms, %s %.1f ms, ratio %.2f\n' "$label" $(echo "$bw/1000" | bc -l) "$1" $(echo "$bb/1000" | bc -l) $(echo "$bw/$bb" | bc -l)
}
cp $d/$seg.orig $d/arch/$seg; bench plain $seg cat $d/arch/$seg; rm $d/arch/$seg
gzip -6 -c $d/$seg.orig > $d/arch/$seg.gz; bench gzip $seg.gz gzip -dc $d/arch/$seg.gz; rm $d/arch/$seg.gz
zstd -q -3 $d/$seg.orig -o $d/arch/$seg.zst; bench zstd $seg.zst zstd -qdc $d/arch/$seg.zst; rm $d/arch/$seg.zst
lz4 -q $d/$seg.orig $d/arch/$seg.lz4; bench lz4 $seg.lz4 lz4 -qdc $d/arch/$seg.lz4; rm $d/arch/$seg.lz4
cp $d/$seg.orig $d/arch/$seg.partial; bench partial $seg.partial cat $d/arch/$seg.partial
