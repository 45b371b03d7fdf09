#!/usr/bin/env bash
# What moving one idle keep-alive connection costs each generation, in instructions
# (callgrind): the old one from the SIGHUP to its exit, the new one from its start to the
# last connection taken. The move's wall time (bench/takeover-scale.sh) varies from run
# to run on a shared 2-CPU machine by more than a change worth making (±20 %); instruction
# counts repeat from run to run within 2 % (the batches a move falls into vary), so they
# tell whether a change made the takeover cheaper.
#
# `hello-hyper --hand-over-idle` runs under callgrind (both generations: the new one is
# traced through its exec). Two runs: one with N idle HTTP/1.1 keep-alive connections
# (bench/takeover_clients.py, one request each), one with none; the cost of a connection
# is the difference of the two counts over N (what a restart costs anyway, the spawn and
# the new generation's start, cancels out). Each connection then sends a second request,
# which the new pid must answer. Release build; nothing is timed.
#
# Only instructions run in user space are counted: what the kernel does for the system calls
# (epoll registrations, the sockets passed, the closes, the old generation's exit) is not,
# and bench/takeover-scale.sh's wall time is still what the targets are measured by.
#
#   bench/takeover-cost.sh [--idle N] [--out DIR] [--no-build]
#
# Prints one table: instructions per connection, old and new generation, and their sum.
# Exits 1 if a connection failed or moved wrong. Loopback only; everything it starts is
# ended on exit. Needs valgrind (installed with apt if missing).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init

IDLE=2000
OUT=""
BUILD=1
while (($#)); do
    case $1 in
        --no-build) BUILD=0; shift; continue ;;
        -h | --help) usage ;;
    esac
    (($# >= 2)) || { echo "$1 needs a value" >&2; usage; }
    case $1 in
        --idle) IDLE=$2 ;;
        --out) OUT=$2 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift 2
done
[[ $IDLE =~ ^[0-9]+$ ]] && ((IDLE >= 1)) || die "--idle takes a whole number, at least 1"

OUT=${OUT:-target/bench/takeover-cost-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
trap cleanup_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
command -v callgrind_control >/dev/null || apt_install valgrind
need_python3
need_jq
((BUILD)) && build_examples
raise_nofile $((IDLE + 1000))
nap_init "$OUT"

# The instructions ("Ir") a callgrind output file counts.
instructions() {
    awk '/^(summary|totals):/ { print $2; exit }' "$1"
}

# run NAME N: one server under callgrind, N idle connections, a SIGHUP; writes
# $OUT/NAME.result (old_ir, new_ir, moved_ok, failed).
run() {
    local name=$1 n=$2
    local prefix="$OUT/$name" pidfile="$OUT/$name.pid" gofile="$OUT/$name.go"
    rm -f "$pidfile" "$gofile" "$prefix".callgrind.*
    # Generous timeouts: under callgrind everything runs tens of times slower.
    LAUNCH="valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=$prefix.callgrind.%p" \
        RUST_LOG=warn start_server hello-hyper "$BIN_DIR/hello-hyper" "$prefix-server" \
        --pid-file "$pidfile" --probation 0 --upgrade-timeout 300 --drain-timeout 300 \
        --hand-over-idle
    wait_pid_file "$pidfile" 60 "$name: the server"
    local client=""
    if ((n > 0)); then
        python3 "$ROOT/bench/takeover_clients.py" --mode http --addr "$SERVER_ADDR" \
            --connections "$n" --go-file "$gofile" >"$prefix.clients" 2>"$prefix.clients.err" &
        client=$!
        BG_PIDS=("$client")
        wait_clients_ready "$prefix.clients" "$client" $(($(now_us) + 600000000)) "$name: the clients"
    fi
    local old=$SERVER_PID
    # Counted from here: what the old generation did before (its start, the first requests)
    # is not the takeover's.
    callgrind_control --zero "$old" >>"$prefix.control" 2>&1
    log "$name: $n idle connections to pid $old; SIGHUP"
    hup_and_wait "$pidfile" 300
    [[ -n $NEW_PID ]] || die "$name: no new generation (see $prefix-server.err)"
    wait_gone "$old" 600
    [[ -n $GONE_AT ]] || die "$name: the old generation did not exit"
    # The new generation's count so far: its start and every connection it took.
    callgrind_control --dump "$NEW_PID" >>"$prefix.control" 2>&1
    local new_dump deadline
    deadline=$(($(now_us) + 60000000))
    until new_dump=$(ls "$prefix.callgrind.$NEW_PID".[0-9]* 2>/dev/null | head -1) && [[ -n $new_dump ]]; do
        (($(now_us) < deadline)) || die "$name: no dump from the new generation"
        sleep 0.1
    done
    local ok=$n failed=0
    if [[ -n $client ]]; then
        echo "$NEW_PID" >"$gofile.tmp" && mv "$gofile.tmp" "$gofile"
        local rc=0
        wait "$client" || rc=1
        BG_PIDS=()
        local json
        json=$(tail -1 "$prefix.clients")
        ok=$(jq -r '.moved_ok' <<<"$json")
        failed=$(jq -r '.failed + .open_failed' <<<"$json")
        ((rc == 0)) || failed=$((failed + 1))
    fi
    stop_server "$SERVER_SID"
    {
        echo "old_ir=$(instructions "$prefix.callgrind.$old")"
        echo "new_ir=$(instructions "$new_dump")"
        echo "moved_ok=$ok"
        echo "failed=$failed"
    } >"$prefix.result"
    log "$name: $ok moved, $failed failed"
}

run idle "$IDLE"
run none 0

declare -A i z
while IFS='=' read -r k v; do i[$k]=$v; done <"$OUT/idle.result"
while IFS='=' read -r k v; do z[$k]=$v; done <"$OUT/none.result"
echo
printf 'Instructions per idle keep-alive connection moved (callgrind, release build, %d connections less none)\n' "$IDLE"
awk -v n="$IDLE" -v oi="${i[old_ir]}" -v oz="${z[old_ir]}" -v ni="${i[new_ir]}" -v nz="${z[new_ir]}" 'BEGIN {
    printf "%-22s %14s %14s %14s\n", "generation", "with", "without", "per_connection"
    printf "%-22s %14d %14d %14.0f\n", "old (SIGHUP to exit)", oi, oz, (oi - oz) / n
    printf "%-22s %14d %14d %14.0f\n", "new (start to moved)", ni, nz, (ni - nz) / n
    printf "%-22s %14d %14d %14.0f\n", "both", oi + ni, oz + nz, (oi + ni - oz - nz) / n }'
echo "raw outputs and callgrind files: $OUT"
if ((i[failed] > 0 || i[moved_ok] != IDLE)); then
    echo "FAILED: ${i[moved_ok]} of $IDLE moved, ${i[failed]} failed (see $OUT/idle.clients)" >&2
    exit 1
fi
