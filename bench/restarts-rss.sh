#!/usr/bin/env bash
# Leaks across restarts: after 100 restarts, does the serving generation hold more memory,
# file descriptors or threads than the first one did, and is anything left behind?
#
# Starts `hello-hyper` (a port the kernel picks, a pid file) and restarts it N times
# (default 100): SIGHUP, wait until the pid file names the new generation, wait until the
# old one has exited. Each generation serves some keep-alive requests first (curl, 200
# requests on one connection, so that its connection path has run). At 0, 10, 50 and 100
# restarts it records the serving generation's RSS (VmRSS), open fds (/proc/PID/fd),
# threads, and the live processes of the server's process group (every generation shares
# it: 1 means no generation was left behind).
#
# Prints one table; exits 1 if a restart did not hand over, an old generation did not
# exit, or more than one process was alive at a checkpoint.
#
#   bench/restarts-rss.sh [--restarts N] [--at "0 10 50 100"] [--server NAME]
#       [--out DIR] [--no-build]
#
# Loopback only; everything it starts is ended on exit.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init

RESTARTS=100
AT=""
SERVER=hello-hyper
OUT=""
BUILD=1
REQUESTS=200

while (($#)); do
    case $1 in
        --no-build) BUILD=0; shift; continue ;;
        -h | --help) usage ;;
    esac
    (($# >= 2)) || { echo "$1 needs a value" >&2; usage; }
    case $1 in
        --restarts) RESTARTS=$2 ;;
        --at) AT=$2 ;;
        --server) SERVER=$2 ;;
        --out) OUT=$2 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift 2
done
[[ $RESTARTS =~ ^[0-9]+$ ]] || die "--restarts takes a whole number"
if [[ -z $AT ]]; then
    AT="0 $((RESTARTS / 10)) $((RESTARTS / 2)) $RESTARTS"
fi
declare -A CHECKPOINT=()
for a in $AT; do
    if ! [[ $a =~ ^[0-9]+$ ]] || ((a > RESTARTS)); then
        die "--at takes restart counts ≤ $RESTARTS"
    fi
    CHECKPOINT[$a]=1
done

OUT=${OUT:-target/bench/restarts-rss-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
trap 'cleanup_all' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $BUILD == 1 ]] && build_examples
command -v curl >/dev/null || apt_install curl
[[ -x $BIN_DIR/$SERVER ]] || die "$BIN_DIR/$SERVER not found"
nap_init "$OUT"

pidfile="$OUT/server.pid"
RUST_LOG=${RUST_LOG:-warn} start_server "$SERVER" "$BIN_DIR/$SERVER" "$OUT/server" \
    --pid-file "$pidfile"
wait_pid_file "$pidfile" 10 "$SERVER"
url="http://$SERVER_ADDR/"
# One curl, REQUESTS requests on one keep-alive connection.
urls=()
for ((i = 0; i < REQUESTS; i++)); do urls+=("$url"); done

# serve_some: REQUESTS requests, all answered by the serving generation.
serve_some() {
    local pid answered
    pid=$(pid_in "$pidfile")
    answered=$(curl -s --fail "${urls[@]}" | grep -c "^pid=$pid\$" || true)
    ((answered == REQUESTS)) || die "pid $pid answered $answered of $REQUESTS requests"
}

# measure RESTARTS_DONE: a line of the table.
measure() {
    local pid rss fds threads alive
    pid=$(pid_in "$pidfile")
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    alive=$(session_members "$SERVER_SID" | wc -l)
    printf '%8s %8s %8s %5s %8s %15s\n' "$1" "$pid" "$rss" "$fds" "$threads" "$alive" >>"$OUT/table"
    ((alive == 1)) || { log "$alive processes alive after $1 restarts"; STATUS=1; }
}

STATUS=0
: >"$OUT/table"
handovers=()
LOAD_BEFORE=$(loadavg)
log "$SERVER at $url (pid $SERVER_PID): $RESTARTS restarts, measured after ${AT// /, }"
for ((r = 0; ; r++)); do
    serve_some
    [[ -n ${CHECKPOINT[$r]:-} ]] && measure "$r"
    ((r < RESTARTS)) || break
    hup_and_wait "$pidfile" 15
    [[ -n $HANDOVER_US ]] || die "restart $((r + 1)) did not hand over within 15 s"
    handovers+=("$HANDOVER_US")
    wait_gone "$OLD_PID" 30
    [[ -n $GONE_AT ]] || die "pid $OLD_PID still alive 30 s after restart $((r + 1))"
    if (((r + 1) % 10 == 0)); then log "$((r + 1)) restarts"; fi
done
stop_server "$SERVER_SID"

echo
printf '%s, %d restarts, %d keep-alive requests per generation (loopback, %d CPUs, load average %s before, %s after)\n' \
    "$SERVER" "$RESTARTS" "$REQUESTS" "$(nproc)" "$LOAD_BEFORE" "$(loadavg)"
printf '%8s %8s %8s %5s %8s %15s\n' restarts pid rss_kib fds threads processes_alive
cat "$OUT/table"
echo
echo "handover_ms min/median/max over the $RESTARTS restarts: $(ms_summary "${handovers[@]}")"
echo "rss_kib: VmRSS of the serving generation; fds: its open descriptors; processes_alive:"
echo "live processes in the server's process group (all generations), 1 = nothing left behind."
echo "raw outputs and server logs: $OUT"
exit "$STATUS"
