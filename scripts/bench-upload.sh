#!/usr/bin/env bash
# Benchmarks `walrcv stream --upload` (issue 18) against plain `walrcv stream`,
# in one go, on one scratch primary (PostgreSQL 15, 16 MB segments, fsync on,
# as the `postgres` OS user in a temporary directory) and one SeaweedFS store
# (`weed mini`, telemetry off), both on 127.0.0.1 only and on free ports;
# everything is torn down at exit and nothing else on the machine is touched.
#
#   1. synchronous commit: `pgbench -N` at each client count of --clients, for
#      --seconds each, with walrcv as the only synchronous standby, once
#      without `--upload` ("local") and once with `--upload s3://bench/...`
#      ("upload"), in alternating order (round 1: local, upload; round 2:
#      upload, local; ...). The store runs through both, so both pay for its
#      idle presence. Each receiver starts in an empty directory; pgbench starts
#      once it is `sync` in pg_stat_replication, after a CHECKPOINT.
#   2. throughput: at least --wal-mb MB of WAL is written behind one physical
#      slot per round; then, each round, `walrcv stream -n -E END` archives it
#      into an empty directory (timed: "local" MB/s), and `walrcv stream
#      --upload` is started on that archive and timed until its uploader has
#      confirmed every complete segment (walrcv_upload_backlog_files = 0 on
#      --metrics-address, polled every 0.1 s: "upload" MB/s of the same WAL).
#
# The report: medians over the rounds of the absolute figures, and the ratios
# upload / local as medians of the per-round ratios (a trend across rounds
# cancels out). Raw per-run figures go to results.csv in the temporary
# directory. Besides TPS and latency, each synchronous run records the
# CPU-seconds of walrcv (and of its `walrcv-upload` thread alone), of weed,
# and of the whole machine (busy and iowait, from /proc/stat), and the bytes the
# uploader sent: where the time goes when the ratio is below target.
#
#   scripts/bench-upload.sh [--clients "4"] [--seconds 30] [--rounds 4]
#       [--wal-mb 1024] [--partial-interval 60] [--keep] [--no-build]
#       [--walrcv PATH] [--sync-only] [--throughput-only] [--perf] [--strace]
#       [--store-dir DIR]
#
#   --clients LIST        pgbench client counts, space-separated (default "4")
#   --seconds N           pgbench -T of each synchronous run (default 30)
#   --rounds N            rounds of both phases (default 4)
#   --wal-mb N            throughput WAL to write, at least, in MB (default 1024)
#   --partial-interval N  --upload-partial-interval of the upload runs (default
#                         60, walrcv's default)
#   --keep                keep the temporary directory (CSV, logs, profiles)
#   --no-build            do not run cargo; use $CARGO_TARGET_DIR/release/walrcv
#   --walrcv PATH         benchmark this walrcv binary (implies --no-build)
#   --sync-only           skip the throughput phase
#   --throughput-only     skip the synchronous commit phase
#   --perf                during each synchronous upload run, `perf record -g`
#                         walrcv and weed (99 Hz) and keep the top of
#                         `perf report` in the temporary directory (implies
#                         --keep)
#   --strace              during each synchronous run (both modes), `strace -c
#                         -f` walrcv and weed for --seconds and keep the
#                         syscall summaries (time per fdatasync, fsync, write):
#                         slows what it traces, so its TPS figures are not the
#                         benchmark's (implies --keep)
#   --store-dir DIR       put the store's data under DIR (e.g. /dev/shm: no
#                         disk writes from weed) instead of the temporary
#                         directory
#
# The S3 client's own settings come from the caller's environment (the script
# sets only the endpoint and the identity): WALRCV_S3_CHECKSUM=none or
# AWS_UNSIGNED_PAYLOAD=true measure the upload without the payload's SHA-256;
# the report names them.
#
# With the defaults a run takes about 5 to 6 minutes on 2 cores. Respects
# CARGO_TARGET_DIR and WALRCV_WEED (the weed binary; else `weed` on the PATH,
# through pyenv if that is a shim). Needs root (the server runs as `postgres`)
# or a non-root user who can run PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

command_line="$0"
for arg in "$@"; do command_line+=" $(printf '%q' "$arg")"; done

clients="4"
seconds=30
rounds=4
wal_mb=1024
partial_interval=60
keep=0
build=1
walrcv=""
do_sync=1
do_tput=1
perf_on=0
strace_on=0
store_parent=""
while [ $# -gt 0 ]; do
    case "$1" in
    --clients) clients="$2"; shift ;;
    --seconds) seconds="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    --wal-mb) wal_mb="$2"; shift ;;
    --partial-interval) partial_interval="$2"; shift ;;
    --keep) keep=1 ;;
    --no-build) build=0 ;;
    --walrcv) walrcv="$2"; build=0; shift ;;
    --sync-only) do_tput=0 ;;
    --throughput-only) do_sync=0 ;;
    --perf) perf_on=1; keep=1 ;;
    --strace) strace_on=1; keep=1 ;;
    --store-dir) store_parent="$2"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
# shellcheck disable=SC2086 # $clients: a list, one value a word
require_positive_integers "$seconds" "$rounds" "$wal_mb" "$partial_interval" $clients
[ -n "$clients" ] || { echo "bench: --clients is empty" >&2; exit 2; }
[ "$do_sync$do_tput" != 00 ] || { echo "bench: --sync-only and --throughput-only exclude each other" >&2; exit 2; }


PGBIN=/usr/lib/postgresql/15/bin
clk_tck=$(getconf CLK_TCK)
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

say "dependencies and build"
scripts/install-deps.sh --no-npm
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (apt-get install time)"
command -v curl >/dev/null || die "curl is missing"
[ "$perf_on" = 0 ] || command -v perf >/dev/null || die "--perf: perf is missing (apt-get install linux-perf)"
[ "$strace_on" = 0 ] || command -v strace >/dev/null || die "--strace: strace is missing (apt-get install strace)"
walrcv_binary "$build"

# The weed binary itself (an ELF file), so that $! is the store's process and
# its CPU can be read: pyenv's shim would be a shell and a Python in between.
weed=${WALRCV_WEED:-$(command -v weed || true)}
[ -n "$weed" ] || die "no weed on the PATH (scripts/install-deps.sh installs it; or set WALRCV_WEED)"
if [ "$(head -c 4 "$weed" | tail -c 3)" != ELF ] && command -v pyenv >/dev/null; then
    weed=$(pyenv which weed)
fi
[ "$(head -c 4 "$weed" | tail -c 3)" = ELF ] || die "$weed is not the weed binary (set WALRCV_WEED)"
note "weed: $weed ($("$weed" version 2>/dev/null | head -1))"

# --- temporary directory, scratch primary, store, cleanup --------------------

make_tmp walrcv-bench-upload
pgdata="$pgdir/data"
csv="$tmp/results.csv"
bg_pid=""
weed_pid=""
store_dir="$tmp/weed"
[ -z "$store_parent" ] || store_dir=$(mktemp -d "$store_parent/walrcv-bench-store.XXXXXX")
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$bg_pid" ] && kill -KILL "$bg_pid" 2>/dev/null || true
    [ -n "$weed_pid" ] && kill -KILL "$weed_pid" 2>/dev/null || true
    (cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$pgdata" -m immediate -w stop) >/dev/null 2>&1 || true
    [ -z "$store_parent" ] || rm -rf "$store_dir"
    if [ "$keep" = 1 ]; then note "kept $tmp"; else rm -rf "$tmp"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port
port=$new_port
free_port
s3_port=$new_port
free_port
metrics_port=$new_port

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
max_replication_slots = $((rounds + 4))
max_wal_size = '4GB'
checkpoint_timeout = '30min'
shared_buffers = '128MB'
EOF
(cd "$pgdir" && as_server "$PGBIN/pg_ctl" -D "$pgdata" -l "$pgdir/server.log" -w start >/dev/null)
psql_() { psql -XAtq -h "$pgdir" -p "$port" -U postgres -d postgres -c "$1"; }
conninfo="host=127.0.0.1 port=$port user=postgres"

# As tests/support/seaweed.rs: every listener on a free loopback port, the S3
# identity from the AWS_* variables, telemetry off.
say "SeaweedFS (weed mini) with S3 on port $s3_port"
bucket=bench
export AWS_ACCESS_KEY_ID=walrcvbench AWS_SECRET_ACCESS_KEY=walrcvbenchsecret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port" AWS_ALLOW_HTTP=true
mkdir -p "$tmp/weed" "$store_dir"
weed_args=(mini "-dir=$store_dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false
    -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0
    "-bucket=$bucket" "-s3.port=$s3_port")
for flag in s3.port.grpc master.port master.port.grpc filer.port filer.port.grpc \
    volume.port volume.port.grpc admin.port admin.port.grpc; do
    free_port
    weed_args+=("-$flag=$new_port")
done
(cd "$tmp/weed" && exec "$weed" "${weed_args[@]}" </dev/null >"$tmp/weed.log" 2>&1) &
weed_pid=$!
disown "$weed_pid" # killed at exit without a "Killed" line from bash
for i in $(seq 600); do
    grep -q "All enabled components are running" "$tmp/weed.log" 2>/dev/null && break
    kill -0 "$weed_pid" 2>/dev/null || { cat "$tmp/weed.log" >&2; die "weed mini exited"; }
    [ "$i" = 600 ] && { tail -20 "$tmp/weed.log" >&2; die "weed mini not ready after 60 s"; }
    sleep 0.1
done
sleep 0.5 # the filer creates the bucket just before
note "weed mini: pid $weed_pid"

echo "phase,clients,round,position,mode,tps,lat_avg_ms,lat_p99_ms,transactions,wall_s,wal_mb,mb_per_s,walrcv_cpu_s,upload_thread_cpu_s,weed_cpu_s,machine_busy_pct,machine_iowait_pct,uploaded_mb,uploaded_files,walrcv_us_per_tx,weed_us_per_tx" >"$csv"

# --- helpers -----------------------------------------------------------------

# The uploader's thread alone (named walrcv-upload), 0 if there is none.
upload_thread_ticks() { # pid
    local t sum=0
    for t in /proc/"$1"/task/*; do
        [ "$(cat "$t/comm" 2>/dev/null)" = walrcv-upload ] || continue
        sum=$((sum + $(ticks_of_stat "$(cat "$t/stat")")))
    done
    echo "$sum"
}
# The whole machine: "busy iowait total" jiffies from /proc/stat.
machine_ticks() {
    awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, $6, busy + $5 + $6; exit }' /proc/stat
}
ticks_s() { awk -v a="$1" -v b="$2" -v hz="$clk_tck" 'BEGIN { printf "%.2f", (b - a) / hz }'; }

metric() { # name: its value on walrcv's --metrics-address, or ""
    local page
    page=$(curl -fsS --max-time 2 "http://127.0.0.1:$metrics_port/metrics" 2>/dev/null) || return 0
    awk -v m="$1" '$1 == m && !seen { print $2; seen = 1 }' <<<"$page"
}

# The modes of round $1 in alternating order: local first in odd rounds.
modes_of_round() { # round
    if [ $(($1 % 2)) = 1 ]; then printf 'local\nupload\n'; else printf 'upload\nlocal\n'; fi
}

# `perf record` of one process for N seconds, in the background; the top of
# its report is written next to the data afterwards.
perf_pids=()
perf_start() { # pid, output name
    perf record -F 99 -g -p "$1" -o "$tmp/perf/$2.data" -- sleep "$seconds" >"$tmp/perf/$2.log" 2>&1 &
    perf_pids+=($!)
}
perf_finish() {
    local p f
    for p in "${perf_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    perf_pids=()
    for f in "$tmp"/perf/*.data; do
        [ -f "${f%.data}.txt" ] && continue
        {
            perf report -i "$f" --stdio --no-children -g none --sort dso 2>/dev/null | grep '%' | head -10
            echo
            perf report -i "$f" --stdio --no-children -g none --sort comm,dso,sym 2>/dev/null | grep '%' | head -60
        } >"${f%.data}.txt" || true
    done
}

# `strace -c -f` of one process for --seconds, in the background.
strace_pids=()
strace_start() { # pid, output name
    timeout -s INT "$seconds" strace -c -f -p "$1" -o "$tmp/strace/$2.txt" >/dev/null 2>&1 &
    strace_pids+=($!)
}
strace_finish() {
    local p
    for p in "${strace_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    strace_pids=()
}

# --- 1. synchronous commit ---------------------------------------------------

nproc_=$(nproc)
# One synchronous run; appends a CSV row.
sync_run() { # clients, round, position, mode
    local c=$1 round=$2 pos=$3 mode=$4
    local tag="c$c-r$round-$mode" app=walrcv_bench dir pid
    dir="$tmp/sync/$tag"
    mkdir -p "$dir"
    local cmd=("$walrcv" stream -D "$dir" -d "$conninfo application_name=$app" --metrics-address "127.0.0.1:$metrics_port")
    [ "$mode" = upload ] && cmd+=(--upload "s3://$bucket/sync-$tag" --upload-partial-interval "$partial_interval")
    "${cmd[@]}" >"$tmp/sync/$tag.log" 2>&1 &
    pid=$!
    bg_pid=$pid
    wait_for_comm "$pid" walrcv || { cat "$tmp/sync/$tag.log" >&2; die "walrcv (pid $pid) is not running"; }
    set_sync_standby "$app"
    wait_for_sync "$app" "$pid" || { cat "$tmp/sync/$tag.log" >&2; die "walrcv never became the sync standby"; }
    psql_ "CHECKPOINT"

    local jobs=$c out rc=0 lsn0 lsn1 w0 w1 u0 u1 s0 s1 m0 m1 up_bytes="" up_files=""
    [ "$jobs" -gt "$nproc_" ] && jobs=$nproc_
    if [ "$perf_on" = 1 ] && [ "$mode" = upload ]; then
        mkdir -p "$tmp/perf"
        perf_start "$pid" "$tag-walrcv"
        perf_start "$weed_pid" "$tag-weed"
    fi
    if [ "$strace_on" = 1 ]; then
        mkdir -p "$tmp/strace"
        strace_start "$pid" "$tag-walrcv"
        strace_start "$weed_pid" "$tag-weed"
    fi
    lsn0=$(psql_ "SELECT pg_current_wal_lsn()")
    w0=$(cpu_ticks "$pid") u0=$(upload_thread_ticks "$pid") s0=$(cpu_ticks "$weed_pid") m0=$(machine_ticks)
    out=$("$PGBIN/pgbench" -n -N -c "$c" -j "$jobs" -T "$seconds" -l --log-prefix="$tmp/pgbench-logs/$tag" \
        -h "$pgdir" -p "$port" -U postgres postgres 2>&1) || rc=$?
    w1=$(cpu_ticks "$pid") u1=$(upload_thread_ticks "$pid") s1=$(cpu_ticks "$weed_pid") m1=$(machine_ticks)
    lsn1=$(psql_ "SELECT pg_current_wal_lsn()")
    kill -0 "$pid" 2>/dev/null || { cat "$tmp/sync/$tag.log" >&2; die "walrcv ($mode) exited during pgbench"; }
    if [ "$mode" = upload ]; then
        up_bytes=$(metric walrcv_upload_bytes_total)
        up_files=$(metric walrcv_upload_files_total)
    fi
    [ "$perf_on" = 1 ] && [ "$mode" = upload ] && perf_finish
    [ "$strace_on" = 1 ] && strace_finish
    set_sync_standby ""
    # Up to 40 s: with --upload the stop waits up to 30 s for the uploader's
    # last pass.
    stop_receiver "$pid" 40
    wait_no_walsenders
    printf '%s\n' "$out" >"$tmp/pgbench-logs/$tag.out"
    [ "$rc" = 0 ] || { printf '%s\n' "$out" >&2; die "pgbench failed ($mode, $c clients)"; }
    rm -rf "$dir"

    local tps lat p99 n wal walrcv_s up_s weed_s busy iow up_mb wtx stx
    tps=$(sed -nE 's/^tps = ([0-9.]+) .*/\1/p' <<<"$out")
    lat=$(sed -nE 's/^latency average = ([0-9.]+) ms$/\1/p' <<<"$out")
    n=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$out")
    p99=$(percentile_ms 99 "$tmp/pgbench-logs/$tag".*[0-9])
    wal=$(psql_ "SELECT round(pg_wal_lsn_diff('$lsn1', '$lsn0') / 1048576.0, 1)")
    walrcv_s=$(ticks_s "$w0" "$w1")
    up_s=$(ticks_s "$u0" "$u1")
    weed_s=$(ticks_s "$s0" "$s1")
    read -r busy iow < <(awk -v a="$m0" -v b="$m1" 'BEGIN {
        split(a, x, " "); split(b, y, " "); t = y[3] - x[3]
        if (t <= 0) t = 1
        printf "%.1f %.1f\n", 100 * (y[1] - x[1]) / t, 100 * (y[2] - x[2]) / t }')
    up_mb=""
    [ -n "$up_bytes" ] && up_mb=$(awk -v b="$up_bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
    wtx=$(awk -v s="$walrcv_s" -v n="$n" 'BEGIN { printf "%.1f", (n > 0 ? s / n * 1e6 : 0) }')
    stx=$(awk -v s="$weed_s" -v n="$n" 'BEGIN { printf "%.1f", (n > 0 ? s / n * 1e6 : 0) }')
    echo "sync,$c,$round,$pos,$mode,$tps,$lat,$p99,$n,,$wal,,$walrcv_s,$up_s,$weed_s,$busy,$iow,$up_mb,$up_files,$wtx,$stx" >>"$csv"
    note "$(printf '  %2s clients  round %s  %-6s  %8.1f tps  avg %7s ms  p99 %7s ms  WAL %6s MB  cpu walrcv %5s s (uploader %5s)  weed %5s s  machine busy %5s%% iowait %4s%%  uploaded %s MB in %s files' \
        "$c" "$round" "$mode" "$tps" "$lat" "$p99" "$wal" "$walrcv_s" "$up_s" "$weed_s" "$busy" "$iow" "${up_mb:--}" "${up_files:--}")"
}

if [ "$do_sync" = 1 ]; then
    say "synchronous commit: pgbench -N -T $seconds at clients $clients, $rounds round(s), local and upload alternating"
    "$PGBIN/pgbench" -i -s 10 -q -h "$pgdir" -p "$port" -U postgres postgres >"$tmp/pgbench-init.log" 2>&1 ||
        { cat "$tmp/pgbench-init.log" >&2; die "pgbench -i failed"; }
    mkdir -p "$tmp/pgbench-logs" "$tmp/sync"
    for c in $clients; do
        for ((round = 1; round <= rounds; round++)); do
            pos=0
            while read -r mode; do
                pos=$((pos + 1))
                sync_run "$c" "$round" "$pos" "$mode" </dev/null
            done < <(modes_of_round "$round")
        done
    done
fi

# --- 2. throughput ---------------------------------------------------------------

tput_mb=0
if [ "$do_tput" = 1 ]; then
    say "throughput: writing at least $wal_mb MB of WAL behind $rounds slot(s)"
    for ((round = 1; round <= rounds; round++)); do
        psql_ "SELECT pg_create_physical_replication_slot('bench_r$round', true)" >/dev/null
    done
    start_lsn=$(psql_ "SELECT pg_current_wal_lsn()")
    write_wal "$start_lsn" "$wal_mb"
    bytes=$wal_written_bytes
    tput_mb=$wal_written_mb
    note "WAL from $start_lsn to $end_lsn: $tput_mb MB"

    mbs() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.1f", (t > 0 ? b / 1048576 / t : 0) }'; }
    now_s() { date +%s.%N; }

    # Local archiving of round $1's slot to END, timed by /usr/bin/time.
    local_run() { # round
        local round=$1 dir="$tmp/tput/r$1" times="$tmp/tput/r$1-local.time" log="$tmp/tput/r$1-local.log"
        mkdir -p "$dir"
        psql_ "CHECKPOINT" >/dev/null
        sync
        /usr/bin/time -o "$times" -f '%e %U %S' "$walrcv" stream -D "$dir" -d "$conninfo" -S "bench_r$round" -E "$end_lsn" -n \
            >"$log" 2>&1 || { cat "$log" "$times" >&2; die "local archiving failed"; }
        local wall user sys cpu
        read -r wall user sys <"$times"
        cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
        echo "throughput,,$round,1,local,,,,,$wall,$tput_mb,$(mbs "$bytes" "$wall"),$cpu,,,,,,,," >>"$csv"
        note "$(printf '  round %s  local   %7s s  %7s MB/s  walrcv cpu %6s s' "$round" "$wall" "$(mbs "$bytes" "$wall")" "$cpu")"
    }

    # Upload of the archive round $1's local run made: `walrcv stream --upload`
    # on it (the slot is at END: nothing more to stream) until the uploader
    # has confirmed every complete segment.
    upload_run() { # round
        local round=$1 dir="$tmp/tput/r$1" log="$tmp/tput/r$1-upload.log"
        local n seg_bytes t0 t1 pid s0 s1 w1 files backlog wall
        n=$(find "$dir" -maxdepth 1 -name '????????????????????????' | wc -l)
        seg_bytes=$(find "$dir" -maxdepth 1 -name '????????????????????????' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
        [ "$n" -gt 0 ] || die "round $round: no complete segment to upload"
        sync
        s0=$(cpu_ticks "$weed_pid")
        t0=$(now_s)
        "$walrcv" stream -D "$dir" -d "$conninfo" -S "bench_r$round" --upload "s3://$bucket/tput-r$round" \
            --metrics-address "127.0.0.1:$metrics_port" >"$log" 2>&1 &
        pid=$!
        bg_pid=$pid
        for _ in $(seq 18000); do
            kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "walrcv --upload exited"; }
            backlog=$(metric walrcv_upload_backlog_files)
            files=$(metric walrcv_upload_files_total)
            if [ "$backlog" = 0 ] && [ -n "$files" ] && awk -v f="$files" -v n="$n" 'BEGIN { exit !(f >= n) }'; then
                break
            fi
            sleep 0.1
        done
        t1=$(now_s)
        w1=$(cpu_ticks "$pid")
        s1=$(cpu_ticks "$weed_pid")
        [ "$backlog" = 0 ] || die "round $round: the backlog did not drain in 30 minutes"
        stop_receiver "$pid" 40
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
        echo "throughput,,$round,2,upload,,,,,$wall,$tput_mb,$(mbs "$seg_bytes" "$wall"),$(ticks_s 0 "$w1"),,$(ticks_s "$s0" "$s1"),,,$(awk -v b="$seg_bytes" 'BEGIN { printf "%.1f", b / 1048576 }'),$n,," >>"$csv"
        note "$(printf '  round %s  upload  %7s s  %7s MB/s  %s segments  walrcv cpu %6s s  weed cpu %6s s' \
            "$round" "$wall" "$(mbs "$seg_bytes" "$wall")" "$n" "$(ticks_s 0 "$w1")" "$(ticks_s "$s0" "$s1")")"
        rm -rf "$dir"
    }

    say "throughput: $rounds round(s) of local archiving, then the upload of that archive"
    mkdir -p "$tmp/tput"
    for ((round = 1; round <= rounds; round++)); do
        local_run "$round" </dev/null
        upload_run "$round" </dev/null
    done
fi

# --- 3. report -----------------------------------------------------------------

# Median of one CSV column over the rounds for one phase, client count, mode.
median() { median_over_rounds "$@"; }
# Median over rounds of upload / local within each round, and the per-round
# ratios themselves.
ratios() { # phase, clients, column name
    awk -F, -v ph="$1" -v c="$2" -v name="$3" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) col = i; next }
        $1 == ph && $2 == c && $col != "" { if ($5 == "upload") u[$3] = $col; if ($5 == "local") l[$3] = $col }
        END { for (r in u) if ((r in l) && l[r] > 0) printf "%s %.3f\n", r, u[r] / l[r] }' "$csv" | sort -n
}
median_ratio() { # phase, clients, column name
    ratios "$@" | awk '{ print $2 }' | median_of "–" "%.2f"
}
per_round() { # phase, clients, column name
    ratios "$@" | awk '{ printf "%s%.2f", (NR > 1 ? " / " : ""), $2 }'
}
row() { # label, format, phase, clients, column, with ratio (1/0)
    local label=$1 f=$2 ph=$3 c=$4 col=$5 with_ratio=$6 l u
    l=$(median "$ph" "$c" local "$col")
    u=$(median "$ph" "$c" upload "$col")
    if [ "$with_ratio" = 1 ]; then
        printf '| %s | %s | %s | %s | %s |\n' "$label" "$(fmt "$f" "$l")" "$(fmt "$f" "$u")" \
            "$(median_ratio "$ph" "$c" "$col")" "$(per_round "$ph" "$c" "$col")"
    else
        printf '| %s | %s | %s | | |\n' "$label" "$(fmt "$f" "$l")" "$(fmt "$f" "$u")"
    fi
}

report() {
    local c l
    report_header
    echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{ print $3 }'), 16 MB segments, fsync on; walrcv $("$walrcv" --version 2>/dev/null | awk '{ print $2 }'); SeaweedFS $("$weed" version 2>/dev/null | awk '{ print $3; exit }') (weed mini, same machine); medians of $rounds round(s), ratios = upload / local, the median of the per-round ratios (then each round's); synchronous runs: pgbench -N -T $seconds, scale 10, --upload-partial-interval $partial_interval; throughput: $tput_mb MB of WAL."
    echo "Store data: ${store_parent:-the temporary directory (disk)}. S3 client: WALRCV_S3_CHECKSUM=${WALRCV_S3_CHECKSUM:-(unset: sha256)}, AWS_UNSIGNED_PAYLOAD=${AWS_UNSIGNED_PAYLOAD:-(unset: false)}."
    echo
    echo "| | local (no --upload) | --upload | ratio | per round |"
    echo "|---|---:|---:|---:|---|"
    if [ "$do_sync" = 1 ]; then
        for c in $clients; do
            l="sync, $c client$([ "$c" = 1 ] || echo s)"
            row "$l: TPS" '%.0f' sync "$c" tps 1
            row "$l: latency avg (ms)" '%.3f' sync "$c" lat_avg_ms 1
            row "$l: latency p99 (ms)" '%.3f' sync "$c" lat_p99_ms 1
            row "$l: WAL written (MB)" '%.0f' sync "$c" wal_mb 0
            row "$l: walrcv CPU per commit (µs)" '%.1f' sync "$c" walrcv_us_per_tx 1
            row "$l: of which uploader thread (s)" '%.2f' sync "$c" upload_thread_cpu_s 0
            row "$l: weed CPU (s)" '%.2f' sync "$c" weed_cpu_s 0
            row "$l: machine busy (%)" '%.1f' sync "$c" machine_busy_pct 0
            row "$l: machine iowait (%)" '%.1f' sync "$c" machine_iowait_pct 0
            row "$l: uploaded (MB)" '%.0f' sync "$c" uploaded_mb 0
        done
    fi
    if [ "$do_tput" = 1 ]; then
        row "throughput: MB/s of the same WAL" '%.1f' throughput "" mb_per_s 1
        row "throughput: wall time (s)" '%.2f' throughput "" wall_s 1
        row "throughput: walrcv CPU (s)" '%.2f' throughput "" walrcv_cpu_s 1
        row "throughput: weed CPU (s)" '%.2f' throughput "" weed_cpu_s 0
    fi
}

say "results"
report | tee "$tmp/report.md"
echo
echo "raw per-run figures: $csv$([ "$keep" = 1 ] || echo ' (deleted on exit: use --keep to keep it)')"
if [ "$perf_on" = 1 ]; then echo "profiles: $tmp/perf/*.txt"; fi
if [ "$strace_on" = 1 ]; then echo "syscall summaries: $tmp/strace/*.txt"; fi
