#!/usr/bin/env bash
# Restart time with many inherited listeners: how long does a handover take when the
# server has 1,000 listening sockets to pass on, against one?
#
# For each listener count (default "1 1000"): starts `hello-hyper` with that many
# `--listen 127.0.0.1:0` (each on a port the kernel picks) and a pid file, waits until it is
# ready, then restarts it R times (default 5): SIGHUP, time until the pid file names the new
# generation (it writes it once it is ready, having adopted every listener), then until the
# old generation has exited. After the last restart, every one of the ports is asked for
# `GET /` and must be answered by the newest generation.
#
# Prints one table: listeners, handover min/median/max (ms), old generation gone after the
# SIGHUP (median, ms), ports answered by the newest generation. Exits 1 if a restart did
# not hand over or a port did not answer.
#
#   bench/many-listeners.sh [--listeners "1 1000"] [--restarts N] [--server NAME]
#       [--out DIR] [--no-build]
#
# Raises the open-file limit to the largest count + 1000. Loopback only; everything it
# starts is ended on exit.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init

COUNTS="1 1000"
RESTARTS=5
SERVER=hello-hyper
OUT=""
BUILD=1

while (($#)); do
    case $1 in
        --no-build) BUILD=0; shift; continue ;;
        -h | --help) usage ;;
    esac
    (($# >= 2)) || { echo "$1 needs a value" >&2; usage; }
    case $1 in
        --listeners) COUNTS=$2 ;;
        --restarts) RESTARTS=$2 ;;
        --server) SERVER=$2 ;;
        --out) OUT=$2 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift 2
done
[[ $RESTARTS =~ ^[0-9]+$ ]] || die "--restarts takes a whole number"
max=0
for n in $COUNTS; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "--listeners takes whole numbers ≥ 1"
    ((n > max)) && max=$n
done

OUT=${OUT:-target/bench/many-listeners-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
trap 'cleanup_all' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

raise_nofile $((max + 1000))
[[ $BUILD == 1 ]] && build_examples
need_python3
[[ -x $BIN_DIR/$SERVER ]] || die "$BIN_DIR/$SERVER not found"
nap_init "$OUT"

# GET / on every address (one per line in file $1); prints how many answered pid $2.
check_ports() {
    python3 - "$1" "$2" <<'PY'
import socket, sys
addrs = [line.strip() for line in open(sys.argv[1]) if line.strip()]
want = f"pid={sys.argv[2]}\n".encode()
ok = 0
for addr in addrs:
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        if data.startswith(b"HTTP/1.1 200") and data.endswith(want):
            ok += 1
    except OSError:
        pass
print(ok)
PY
}

# count N: writes $OUT/N.result.
count() {
    local n=$1 prefix="$OUT/listeners-$1"
    local pidfile="$prefix.pid" i
    local -a extra=() handovers=() gones=()
    for ((i = 1; i < n; i++)); do extra+=(--listen 127.0.0.1:0); done
    rm -f "$pidfile"
    local t0
    t0=$(now_us)
    RUST_LOG=${RUST_LOG:-warn} start_server "$SERVER" "$BIN_DIR/$SERVER" "$prefix-server" \
        --pid-file "$pidfile" "${extra[@]}"
    wait_pid_file "$pidfile" 30 "$SERVER with $n listeners"
    local start_us=$(($(now_us) - t0))
    # The first generation's addresses: the first n `listening` lines.
    grep '^listening ' "$prefix-server.out" | head -n "$n" | awk '{ print $3 }' >"$prefix.addrs"
    (($(wc -l <"$prefix.addrs") == n)) || die "$SERVER announced $(wc -l <"$prefix.addrs") of $n listeners"
    log "$n listeners: ready in $((start_us / 1000)) ms (pid $SERVER_PID); $RESTARTS restarts"
    for ((i = 0; i < RESTARTS; i++)); do
        hup_and_wait "$pidfile" 30
        [[ -n $HANDOVER_US ]] || die "$n listeners: restart $((i + 1)) did not hand over in 30 s"
        handovers+=("$HANDOVER_US")
        wait_gone "$OLD_PID" 30
        [[ -n $GONE_AT ]] || die "$n listeners: pid $OLD_PID still alive 30 s after the restart"
        gones+=($((GONE_AT - HUP_AT)))
        sleep 0.2
    done
    local newest answered
    newest=$(pid_in "$pidfile")
    answered=$(check_ports "$prefix.addrs" "$newest")
    stop_server "$SERVER_SID"
    {
        echo "start_us=$start_us"
        echo "handover=$(ms_summary "${handovers[@]}")"
        echo "gone=$(awk -v v="$(median "${gones[@]}")" 'BEGIN { printf "%.1f", v / 1000 }')"
        echo "answered=$answered"
    } >"$prefix.result"
}

LOAD_BEFORE=$(loadavg)
for n in $COUNTS; do
    count "$n"
done

status=0
echo
printf '%s, %d restarts per listener count (loopback, %d CPUs, load average %s before, %s after)\n' \
    "$SERVER" "$RESTARTS" "$(nproc)" "$LOAD_BEFORE" "$(loadavg)"
printf '%-9s %9s %30s %19s %17s\n' listeners start_ms 'handover_ms min/median/max' \
    'old_gone_ms median' 'ports_answering'
for n in $COUNTS; do
    declare -A x=()
    while IFS='=' read -r k v; do x[$k]=$v; done <"$OUT/listeners-$n.result"
    printf '%-9s %9s %30s %19s %17s\n' "$n" "$((x[start_us] / 1000))" "${x[handover]}" \
        "${x[gone]}" "${x[answered]}/$n"
    ((x[answered] == n)) || status=1
    unset x
done
echo
echo "start: launch → the first generation is ready (pid file written); handover: SIGHUP → the"
echo "new generation is ready; old_gone: SIGHUP → the old generation has exited; ports_answering:"
echo "after the last restart, ports answering GET / from the newest generation."
echo "raw outputs and server logs: $OUT"
exit "$status"
