#!/usr/bin/env bash
# Drain time with idle keep-alive connections: how long does the old generation take to
# exit when it holds 10,000 idle HTTP/1.1 keep-alive connections, and does every one of
# them end the way a client can live with?
#
# Starts `hello-hyper` (a port the kernel picks, a pid file), opens N connections to it
# (bench/idle_clients.py, python3's asyncio), sends one request on each and leaves them
# idle. Then SIGHUP: once the new generation is ready the old one drains. Expected:
#
# - idle connections are closed cleanly (EOF, no reset) once they have been idle for the
#   drain's grace period (endless-hyper's `Server::idle_grace`, 2 s), not at once: a
#   client's next request may already be on its way;
# - a sample of the connections sends a request 0.3 s into the drain: it is answered by the
#   old generation with `Connection: close`, then closed cleanly;
# - the old generation exits once its last connection is closed.
#
# Prints one table per round: connections, handover (SIGHUP → new pid ready), drain
# (SIGHUP → old pid exited), first/last close seen by the clients after the SIGHUP, clean
# closes, resets, and the sample's answers. Exits 1 if any connection failed, was reset, or
# was still open at the end, or the old generation did not exit.
#
#   bench/drain-idle.sh [--connections N] [--sample N] [--rounds N] [--server NAME]
#       [--out DIR] [--no-build]
#
# Raises the open-file limit (ulimit -n) to N + 1000 for itself, the server and the
# clients. Loopback only; everything it starts is ended on exit.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init

CONNECTIONS=10000
SAMPLE=100
ROUNDS=1
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
        --connections) CONNECTIONS=$2 ;;
        --sample) SAMPLE=$2 ;;
        --rounds) ROUNDS=$2 ;;
        --server) SERVER=$2 ;;
        --out) OUT=$2 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift 2
done
for v in CONNECTIONS SAMPLE ROUNDS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v,,} takes a whole number"
done

OUT=${OUT:-target/bench/drain-idle-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
trap 'cleanup_all' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

raise_nofile $((CONNECTIONS + 1000))
[[ $BUILD == 1 ]] && build_examples
need_python3
[[ -x $BIN_DIR/$SERVER ]] || die "$BIN_DIR/$SERVER not found"
nap_init "$OUT"

# round I: writes $OUT/round-I.result (key=value).
round() {
    local i=$1 prefix="$OUT/round-$1"
    local pidfile="$prefix.pid" hupfile="$prefix.hup"
    rm -f "$pidfile" "$hupfile"
    RUST_LOG=${RUST_LOG:-info} start_server "$SERVER" "$BIN_DIR/$SERVER" "$prefix-server" \
        --pid-file "$pidfile"
    wait_pid_file "$pidfile" 10 "$SERVER"
    log "round $i: opening $CONNECTIONS connections to $SERVER at $SERVER_ADDR (pid $SERVER_PID)"
    python3 "$ROOT/bench/idle_clients.py" --addr "$SERVER_ADDR" --connections "$CONNECTIONS" \
        --sample "$SAMPLE" --hup-file "$hupfile" >"$prefix.clients" 2>"$prefix.clients.err" &
    local clients=$!
    BG_PIDS=("$clients")
    wait_clients_ready "$prefix.clients" "$clients" $(($(now_us) + 120000000)) "the clients"
    local opened
    opened=$(sed -n 's/^ready //p' "$prefix.clients")
    log "round $i: $opened connections open and idle; SIGHUP"
    sleep 1
    local old=$SERVER_PID
    hup_and_wait "$pidfile" 15
    # The clients time the sample's requests and their closes from this.
    echo "$HUP_AT" >"$hupfile.tmp" && mv "$hupfile.tmp" "$hupfile"
    [[ -n $HANDOVER_US ]] || die "round $i: no new generation within 15 s (see $prefix-server.err)"
    wait_gone "$old" 120
    local drain_us="-"
    [[ -n $GONE_AT ]] && drain_us=$((GONE_AT - HUP_AT))
    local clients_rc=0
    wait "$clients" || clients_rc=$?
    BG_PIDS=()
    stop_server "$SERVER_SID"
    local json
    json=$(tail -1 "$prefix.clients")
    jq -r --arg hup "$HUP_AT" '
        def ms(t): if t == null then "-" else ((t - ($hup | tonumber)) / 1000 | floor | tostring) end;
        "opened=\(.opened)\nopen_failed=\(.open_failed)\nclean=\(.closed_clean)\nreset=\(.reset)",
        "unexpected=\(.unexpected_data)\nstill_open=\(.still_open)\nsample=\(.sample)",
        "sample_ok=\(.sample_ok)\nsample_failed=\(.sample_failed)",
        "first_close_ms=\(ms(.first_close))\nlast_close_ms=\(ms(.last_close))",
        "errors=\(.errors | join(" | "))"' <<<"$json" >"$prefix.result"
    {
        echo "handover_us=$HANDOVER_US"
        echo "drain_us=$drain_us"
        echo "clients_rc=$clients_rc"
    } >>"$prefix.result"
}

need_jq
LOAD_BEFORE=$(loadavg)
for ((r = 1; r <= ROUNDS; r++)); do
    round "$r"
done

status=0
echo
printf '%s with %d idle keep-alive connections, SIGHUP, drain (loopback, %d CPUs, load average %s before, %s after)\n' \
    "$SERVER" "$CONNECTIONS" "$(nproc)" "$LOAD_BEFORE" "$(loadavg)"
printf '%-5s %11s %11s %9s %14s %13s %11s %6s %11s\n' round connections handover_ms drain_ms \
    first_close_ms last_close_ms clean_close reset sample_ok
for ((r = 1; r <= ROUNDS; r++)); do
    declare -A x=()
    while IFS='=' read -r k v; do x[$k]=$v; done <"$OUT/round-$r.result"
    printf '%-5s %11s %11s %9s %14s %13s %11s %6s %11s\n' "$r" "${x[opened]}" \
        "$(awk -v v="${x[handover_us]}" 'BEGIN { printf "%.1f", v / 1000 }')" \
        "$(awk -v v="${x[drain_us]}" 'BEGIN { if (v == "-") print "-"; else printf "%.0f", v / 1000 }')" \
        "${x[first_close_ms]}" "${x[last_close_ms]}" "${x[clean]}" "${x[reset]}" \
        "${x[sample_ok]}/${x[sample]}"
    if ((x[clients_rc] != 0)) || [[ ${x[drain_us]} == - ]] || ((x[opened] != CONNECTIONS)); then
        status=1
        echo "      FAILED: open failures ${x[open_failed]}, resets ${x[reset]}, unexpected bytes ${x[unexpected]}, still open ${x[still_open]}, sample failures ${x[sample_failed]}; ${x[errors]}"
    fi
    unset x
done
echo
echo "handover: SIGHUP → the pid file names the new generation; drain: SIGHUP → the old generation"
echo "exited; first/last close: SIGHUP → the first/last clean close a client saw; sample_ok:"
echo "requests sent 0.3 s into the drain answered with Connection: close by the old pid."
echo "raw outputs and server logs: $OUT"
exit "$status"
