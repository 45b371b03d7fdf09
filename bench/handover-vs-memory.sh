#!/usr/bin/env bash
# Handover time against the serving process's memory: does a restart get slower, and does
# the old generation answer more slowly while it spawns its successor, when it holds 1 or
# 4 GiB of resident memory? (Spawning by fork copies the page tables of everything
# resident; the target is a handover at 4 GiB within 1.2× of the one at 0, and an old
# generation whose p99 during the spawn is no worse than its steady p99.)
#
# For each ballast size (default "0 1024 4096" MiB): starts `hello-hyper --ballast-mib N
# --probation 0` with a pid file, waits until its ballast is resident (the server logs
# `ballast resident pid=…`: each generation writes every page of N MiB once it is ready),
# puts a paced load on it (`latency_client.py load`: 16 keep-alive connections, 4,000
# requests/s in all, each request's latency taken from the time it was due), then restarts
# it R times (default 5). Before each restart the server serves STEADY seconds (default 2)
# with nothing else going on: the previous old generation has exited and the new one's
# ballast is resident. Then SIGHUP, and the script waits until the pid file names the new
# generation, the old one has exited and the new one's ballast is resident.
#
# Measured, from the server's own log (tracing's timestamps, to the microsecond) and the
# client's records (`latency_client.py analyze`):
# - handover: `signal received` (old generation) → `ready pid=NEW` (new generation);
# - spawn: `signal received` → `spawned the new generation pid=NEW` (the old generation's
#   spawn call has returned: posix_spawn, or fork + exec before issue 17);
# - the old generation's latency during the spawn: requests it answered that were in
#   flight between the SIGHUP and the spawn call's return, against its steady latency
#   (requests due in the STEADY seconds before the SIGHUP, less 50 ms at the end and
#   200 ms at the start); and, wider, in flight between the SIGHUP and the new
#   generation's readiness + 5 ms (window_p99: the new process's start-up shares the CPUs).
#
# Prints a table per size (handover min/median/max, spawn, p99 steady and during the spawn,
# their ratio) and the ratios against the targets: handover(largest)/handover(0) (medians)
# and p99 during the spawn / steady p99 per size. Exits 1 if a restart did not hand over or
# a request failed; a ratio beyond its target is reported, not an error.
#
#   bench/handover-vs-memory.sh [--sizes "0 1024 4096"] [--restarts N] [--steady SECS]
#       [--rate N] [--connections N] [--server NAME] [--out DIR] [--no-build]
#
# Memory: while a generation hands over, the old and the new one both hold their ballast
# for a moment, so a size N needs 2 × N MiB + 1 GiB available (MemAvailable in
# /proc/meminfo, read before each size); a size that does not fit is skipped, and said so,
# rather than risking the OOM killer. Needs python3 (standard library; apt if missing).
# Loopback only; everything it starts is ended on exit.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init

SIZES="0 1024 4096"
RESTARTS=5
STEADY=2
RATE=4000
CONNECTIONS=16
SERVER=hello-hyper
OUT=""
BUILD=1
TAIL_MS=5
HEADROOM_MIB=1024

while (($#)); do
    case $1 in
        --no-build) BUILD=0; shift; continue ;;
        -h | --help) usage ;;
    esac
    (($# >= 2)) || { echo "$1 needs a value" >&2; usage; }
    case $1 in
        --sizes) SIZES=$2 ;;
        --restarts) RESTARTS=$2 ;;
        --steady) STEADY=$2 ;;
        --rate) RATE=$2 ;;
        --connections) CONNECTIONS=$2 ;;
        --server) SERVER=$2 ;;
        --out) OUT=$2 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift 2
done
for v in RESTARTS RATE CONNECTIONS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--${v,,} takes a whole number ≥ 1"
done
[[ $STEADY =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--steady takes seconds"
awk -v s="$STEADY" 'BEGIN { exit !(s >= 0.5) }' || die "--steady takes at least 0.5 s"
for n in $SIZES; do
    [[ $n =~ ^[0-9]+$ ]] || die "--sizes takes whole numbers of MiB"
done
[[ -n $SIZES ]] || die "--sizes is empty"

OUT=${OUT:-target/bench/handover-vs-memory-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
trap 'cleanup_all' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $BUILD == 1 ]] && build_examples
need_python3
[[ -x $BIN_DIR/$SERVER ]] || die "$BIN_DIR/$SERVER not found"
nap_init "$OUT"
CLIENT="$ROOT/bench/latency_client.py"

mem_available_mib() {
    awk '/^MemAvailable:/ { printf "%d", $2 / 1024 }' /proc/meminfo
}

# wait_log FILE PATTERN TIMEOUT_S: waits until a line of the log (colours stripped) matches
# the extended regular expression; dies after TIMEOUT_S.
wait_log() {
    local file=$1 pattern=$2 deadline=$(($(now_us) + $3 * 1000000))
    until sed 's/\x1b\[[0-9;]*m//g' "$file" | grep -Eq -- "$pattern"; do
        (($(now_us) < deadline)) || die "no line matching \"$pattern\" in $file within $3 s"
        sleep 0.05
    done
}

# wait_ballast LOG PID MIB: with MIB > 0, waits until PID has logged its ballast resident.
wait_ballast() {
    (($3 > 0)) || return 0
    wait_log "$1" "ballast resident pid=$2 " 300
}

# size MIB: one server with MIB of ballast, the load, the restarts; writes
# $OUT/size-MIB.result (or .skipped).
size() {
    local mib=$1 prefix="$OUT/size-$1"
    local pidfile="$prefix.pid" log="$prefix-server.err" i avail need
    avail=$(mem_available_mib)
    need=$((2 * mib + HEADROOM_MIB))
    if ((need > avail)); then
        log "$mib MiB: skipped, needs $need MiB available (2 × ballast + $HEADROOM_MIB), $avail MiB are"
        echo "needs $need MiB available (2 × ballast + $HEADROOM_MIB), $avail MiB were" >"$prefix.skipped"
        return 0
    fi
    rm -f "$pidfile"
    RUST_LOG=${RUST_LOG:-info} start_server "$SERVER" "$BIN_DIR/$SERVER" "$prefix-server" \
        --pid-file "$pidfile" --probation 0 --ballast-mib "$mib"
    wait_pid_file "$pidfile" 30 "$SERVER"
    wait_ballast "$log" "$SERVER_PID" "$mib"
    log "$mib MiB: pid $SERVER_PID ready, ballast resident ($(awk '/^VmRSS:/ { print $2 / 1024 " MiB" }' "/proc/$SERVER_PID/status")); load $RATE req/s on $CONNECTIONS connections, $RESTARTS restarts"

    python3 "$CLIENT" load "$SERVER_ADDR" --connections "$CONNECTIONS" --rate "$RATE" \
        --out "$prefix.records" >"$prefix.client" 2>&1 &
    local client=$!
    BG_PIDS+=("$client")
    wait_log "$prefix.client" '^started' 10
    local steady_from
    steady_from=$(($(now_us) + 200000))
    : >"$prefix.restarts"
    for ((i = 0; i < RESTARTS; i++)); do
        sleep "$STEADY"
        hup_and_wait "$pidfile" 60
        [[ -n $HANDOVER_US ]] || die "$mib MiB: restart $((i + 1)) did not hand over in 60 s (see $OUT)"
        echo "$HUP_AT $OLD_PID $NEW_PID $HANDOVER_US $steady_from" >>"$prefix.restarts"
        wait_gone "$OLD_PID" 60
        [[ -n $GONE_AT ]] || die "$mib MiB: pid $OLD_PID still alive 60 s after the restart"
        wait_ballast "$log" "$NEW_PID" "$mib"
        steady_from=$(($(now_us) + 200000))
        log "$mib MiB: restart $((i + 1)): pid $OLD_PID → $NEW_PID, pid file after $((HANDOVER_US / 1000)) ms"
    done
    # The last steady window is never used; the load stops here.
    kill -TERM "$client" 2>/dev/null || true
    wait "$client" || true
    BG_PIDS=()
    stop_server "$SERVER_SID"
    python3 "$CLIENT" analyze --records "$prefix.records" --log "$log" \
        --restarts "$prefix.restarts" --tail-ms "$TAIL_MS" >"$prefix.result"
}

LOAD_BEFORE=$(loadavg)
for mib in $SIZES; do
    size "$mib"
done

status=0
echo
printf '%s, %d restarts per ballast size, %d req/s on %d connections, %s s steady before each (loopback, %d CPUs, load average %s before, %s after)\n' \
    "$SERVER" "$RESTARTS" "$RATE" "$CONNECTIONS" "$STEADY" "$(nproc)" "$LOAD_BEFORE" "$(loadavg)"
printf '%-11s %-25s %-25s %9s %9s %14s %9s %10s %8s\n' ballast_mib 'handover_ms min/med/max' \
    'spawn_ms min/med/max' steady_p99 spawn_p99 'spawn_n/max_ms' p99_ratio window_p99 failed
base="" last="" last_mib=""
for mib in $SIZES; do
    if [[ -f $OUT/size-$mib.skipped ]]; then
        printf '%-11s skipped: %s\n' "$mib" "$(cat "$OUT/size-$mib.skipped")"
        continue
    fi
    declare -A x=()
    while IFS='=' read -r k v; do x[$k]=$v; done <"$OUT/size-$mib.result"
    printf '%-11s %-25s %-25s %9s %9s %14s %9s %10s %8s\n' "$mib" "${x[handover]}" "${x[spawn]}" \
        "${x[steady_p99]}" "${x[spawn_p99]}" "${x[spawn_n]}/${x[spawn_max]}" "${x[p99_ratio]}" \
        "${x[window_p99]}" "${x[failed]}"
    ((x[failed] == 0 && x[missing] == 0)) || status=1
    if [[ $mib == 0 ]]; then base=${x[handover_median_us]}; fi
    last=${x[handover_median_us]} last_mib=$mib
    unset x
done
echo
if [[ -n $base && -n $last && $last_mib != 0 ]]; then
    awk -v a="$last" -v b="$base" -v m="$last_mib" 'BEGIN {
        r = a / b
        printf "handover(%d MiB) / handover(0), medians: %.2f (target ≤ 1.20: %s)\n", m, r, r <= 1.2 ? "met" : "NOT met"
    }'
else
    echo "handover ratio: needs size 0 and a larger size measured"
fi
for mib in $SIZES; do
    [[ -f $OUT/size-$mib.result ]] || continue
    r=$(awk -F= '$1 == "p99_ratio" { print $2 }' "$OUT/size-$mib.result")
    awk -v r="$r" -v m="$mib" 'BEGIN {
        if (r == "-") { printf "p99 during the spawn / steady p99 at %d MiB: -\n", m; exit }
        printf "p99 during the spawn / steady p99 at %d MiB: %.2f (target ≤ 1.00: %s)\n", m, r, r <= 1.0 ? "met" : "NOT met"
    }'
done
echo
echo "handover: 'signal received' → 'ready pid=NEW' in the server's log; spawn: 'signal received' →"
echo "'spawned the new generation' (the old generation's spawn call returned); steady_p99 /"
echo "spawn_p99 (ms): the old generation's answers, from the time each request was due, in the"
echo "${STEADY} s before each SIGHUP / in flight between the SIGHUP and the spawn call's return,"
echo "pooled over the restarts (spawn_n of them; max_ms the slowest); window_p99: the same in flight"
echo "between the SIGHUP and the new generation's ready + ${TAIL_MS} ms (its start-up competes for"
echo "the CPUs); failed: requests of the whole run that failed."
echo "raw outputs and server logs: $OUT"
exit "$status"
