#!/usr/bin/env bash
# walrcv serve's CPU per segment completion with N live clients (pg_receivewal):
# a writer grows a .partial in place (16 steps of 1 MB, 150 ms apart) from real
# 16 MB segments of SRC_ARCHIVE (an archive of at least K+1 complete segments,
# e.g. one written by walrcv stream beside a pgbench run), renames it to its
# segment name when full and begins the next; walrcv serve's CPU (utime+stime)
# over the K completions is divided by K. Prints that, how many client
# segments are byte-identical to the archive's, how many completions walrcv
# checked on instead of reading whole (from its debug log), and the load.
# Compare two binaries by alternating runs (the figures in docs/src/serve.md).
#
#   scripts/bench-serve-completion.sh WALRCV SRC_ARCHIVE [K=12] [N=4]
#
# PGBIN (default /usr/lib/postgresql/15/bin) supplies pg_receivewal.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d'
  exit 2
fi
walrcv=$1 src=$2 k=${3:-12} n=${4:-4}
pgbin=${PGBIN:-/usr/lib/postgresql/15/bin}
tmp=$(mktemp -d /tmp/walrcv-bench-completion.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
mapfile -t segs < <(ls "$src" | grep -E '^[0-9A-F]{24}$' | sort | sed -n "1,$((1 + k))p")
dir=$tmp/a; mkdir -p "$dir"
python3 - "$src/${segs[0]}" "$dir/${segs[0]}.partial" <<'PY'
import sys
src, dst = sys.argv[1:3]
data = open(src, 'rb').read()
with open(dst, 'wb') as f:
    f.write(data[:1 << 20]); f.truncate(len(data))
PY
echo "host replication all 127.0.0.1/32 trust" > "$tmp/hba"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
WALRCV_LOG=info,walrcv::tools::restore=debug "$walrcv" serve -D "$dir" --listen "127.0.0.1:$port" --serve-hba "$tmp/hba" 2> "$tmp/serve.log" &
spid=$!
for _ in $(seq 100); do grep -q "serving the archive" "$tmp/serve.log" && break; sleep 0.1; done
for i in $(seq "$n"); do
  mkdir -p "$tmp/c$i"
  "$pgbin/pg_receivewal" -D "$tmp/c$i" -h 127.0.0.1 -p "$port" -U postgres -n --no-sync 2> "$tmp/c$i.log" &
done
sleep 2
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
t0=$(ticks $spid); s0=$(date +%s.%N)
python3 - "$src" "$dir" "${segs[@]}" <<'PY'
import os, sys, time
src, dst, segs = sys.argv[1], sys.argv[2], sys.argv[3:]
step = 1 << 20
for i, s in enumerate(segs[:-1]):
    data = open(os.path.join(src, s), 'rb').read()
    part = os.path.join(dst, s + '.partial')
    fd = os.open(part, os.O_WRONLY)
    for off in range(step, len(data), step):
        os.pwrite(fd, data[off:off + step], off)
        os.fdatasync(fd)
        time.sleep(0.15)
    os.close(fd)
    os.rename(part, os.path.join(dst, s))
    nxt = segs[i + 1]
    d2 = open(os.path.join(src, nxt), 'rb').read()
    with open(os.path.join(dst, nxt + '.partial'), 'wb') as f:
        f.write(d2[:step]); f.truncate(len(d2))
PY
# Until every client has every completed segment (30 s at most).
for _ in $(seq 300); do
  have=0
  for i in $(seq "$n"); do for s in "${segs[@]:0:$k}"; do [ -f "$tmp/c$i/$s" ] && have=$((have + 1)); done; done
  [ "$have" -ge $((k * n)) ] && break
  sleep 0.1
done
t1=$(ticks $spid); s1=$(date +%s.%N)
if [ "$have" -lt $((k * n)) ]; then
  keep=$(mktemp -d /tmp/walrcv-bench-completion-incomplete.XXXXXX)
  cp "$tmp"/*.log "$keep"/; ls -l "$tmp"/c* "$dir" > "$keep/listing"
  echo "incomplete: logs in $keep"
fi
hz=$(getconf CLK_TCK)
same=0
for i in $(seq "$n"); do
  for s in "${segs[@]:0:$k}"; do cmp -s "$tmp/c$i/$s" "$dir/$s" && same=$((same + 1)); done
done
awk -v a="$t0" -v b="$t1" -v hz="$hz" -v k="$k" -v n="$n" -v w0="$s0" -v w1="$s1" -v same="$same" -v cont="$(grep -c "completed: checked" "$tmp/serve.log" || true)" 'BEGIN {
  printf "completions %d, clients %d: walrcv serve CPU %.2f s over %.1f s, %.1f ms per completion; %d/%d client segments byte-identical; %d completions checked on\n",
    k, n, (b - a) / hz, w1 - w0, (b - a) / hz / k * 1000, same, k * n, cont }'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
