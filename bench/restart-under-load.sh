#!/usr/bin/env bash
# Restart under load: does a client that never retries see a single failed request while
# the server restarts N times?
#
# For each load generator (wrk, then oha): starts `hello-hyper` on 127.0.0.1 (a port the
# kernel picks) with a pid file, runs the load generator against it (64 keep-alive
# connections, 20 s) and meanwhile sends SIGHUP N times (default 10, one every 2 s,
# centred in the run), each to the pid the pid file names. For each restart it records the
# handover time: from the SIGHUP until the pid file names the new generation (polled every
# millisecond; the new process writes it once it is ready, just before the old one stops
# accepting).
#
# Prints one table: tool, requests, failures, p50/p99/max latency, restarts done, handover
# time min/median/max. Failures are everything a client sees go wrong: wrk's socket errors
# (connect, read — which includes a connection closed under a request —, write, timeout)
# and its non-2xx/3xx count; oha's errors and every status other than 200. Exits 1 if any
# request failed or a restart did not complete, 0 otherwise.
#
#   bench/restart-under-load.sh [--restarts N] [--interval SECS] [--duration SECS]
#       [--connections N] [--threads N] [--tools "wrk oha"] [--server NAME] [--out DIR]
#       [--server-arg ARG]... [--no-build]
#
# --server-arg passes ARG to the server (repeatable), e.g. `--server-arg --hand-over-idle`
# to hand idle keep-alive connections to the new generation instead of draining them.
#
# --tools also takes `oha-h2` (oha over HTTP/2 with prior knowledge, one stream per
# connection). The raw outputs of the load generators, the servers' logs (RUST_LOG=info
# unless set) and the handover times are kept in --out (default
# target/bench/restart-under-load-<time>/).
#
# Installs wrk (apt) and oha (`cargo install oha --locked`, once: it stays in cargo's bin
# directory) and jq (apt) if they are missing. Loopback only. Everything it starts — the
# load generator and every generation of the server, which share one process group — is
# ended on exit.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init

RESTARTS=10
INTERVAL=2
DURATION=20
CONNECTIONS=64
THREADS=2
TOOLS="wrk oha"
SERVER=hello-hyper
OUT=""
BUILD=1
HANDOVER_TIMEOUT_S=15
SERVER_ARGS=()

while (($#)); do
    case $1 in
        --no-build) BUILD=0; shift; continue ;;
        -h | --help) usage ;;
    esac
    (($# >= 2)) || { echo "$1 needs a value" >&2; usage; }
    case $1 in
        --restarts) RESTARTS=$2 ;;
        --interval) INTERVAL=$2 ;;
        --duration) DURATION=$2 ;;
        --connections) CONNECTIONS=$2 ;;
        --threads) THREADS=$2 ;;
        --tools) TOOLS=$2 ;;
        --server) SERVER=$2 ;;
        --server-arg) SERVER_ARGS+=("$2") ;;
        --out) OUT=$2 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift 2
done
for v in RESTARTS DURATION CONNECTIONS THREADS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v,,} takes a whole number"
done
[[ $INTERVAL =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--interval takes seconds"
for tool in $TOOLS; do
    [[ $tool == wrk || $tool == oha || $tool == oha-h2 ]] || die "unknown tool $tool"
done

# Restart i (0-based) is sent at OFFSET + i * INTERVAL after the load starts, the whole
# series centred in the run: 10 restarts every 2 s in 20 s are at 1, 3, …, 19 s.
INTERVAL_US=$(awk -v s="$INTERVAL" 'BEGIN { printf "%d", s * 1000000 }')
SPAN_US=$(((RESTARTS > 0 ? RESTARTS - 1 : 0) * INTERVAL_US))
OFFSET_US=$(((DURATION * 1000000 - SPAN_US) / 2))
((OFFSET_US > 0)) || die "$RESTARTS restarts every $INTERVAL s do not fit in $DURATION s"

OUT=${OUT:-target/bench/restart-under-load-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

LOAD_PID=""
TICK_FD=""
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    cleanup_all
    [[ -n $TICK_FD ]] && exec {TICK_FD}>&-
    rm -f "$OUT/.tick"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $BUILD == 1 ]] && build_examples
for tool in $TOOLS; do
    case $tool in
        wrk) need_wrk ;;
        oha | oha-h2) need_oha; need_jq ;;
    esac
done
[[ -x $BIN_DIR/$SERVER ]] || die "$BIN_DIR/$SERVER not found"

# A 1 ms sleep without a fork: a read that times out on a FIFO nobody writes to.
rm -f "$OUT/.tick"
mkfifo "$OUT/.tick"
exec {TICK_FD}<>"$OUT/.tick"
sleep_1ms() {
    read -r -t 0.001 -u "$TICK_FD" _ || true
}

# The pid the pid file $1 names, or nothing.
read_pid() {
    local pid=""
    { read -r pid <"$1"; } 2>/dev/null || true
    echo "$pid"
}

# restart PIDFILE: SIGHUP to the pid the pid file names; waits until it names another one.
# Sets HANDOVER_US (empty if it did not happen within HANDOVER_TIMEOUT_S).
restart() {
    local pidfile=$1 old cur="" t0 now deadline
    { read -r old <"$pidfile"; } 2>/dev/null || die "the pid file $pidfile is gone (see $OUT)"
    # No forks in this loop ($(…) would cost about a millisecond each time).
    t0=${EPOCHREALTIME/./}
    HUP_AT=$t0
    deadline=$((t0 + HANDOVER_TIMEOUT_S * 1000000))
    kill -HUP "$old" 2>/dev/null || die "cannot signal pid $old from the pid file (see $OUT)"
    HANDOVER_US=""
    while :; do
        { read -r cur <"$pidfile"; } 2>/dev/null || cur=""
        now=${EPOCHREALTIME/./}
        if [[ -n $cur && $cur != "$old" ]]; then
            HANDOVER_US=$((now - t0))
            return
        fi
        ((now < deadline)) || return 0
        sleep_1ms
    done
}

# run_one TOOL: one server, one load run, the restarts; writes $OUT/TOOL.result.
run_one() {
    local tool=$1 prefix="$OUT/$1"
    local pidfile="$prefix.pid" i t now target done_count=0
    local -a handovers=()
    rm -f "$pidfile"
    RUST_LOG=${RUST_LOG:-info} start_server "$SERVER" "$BIN_DIR/$SERVER" "$prefix-server" \
        --pid-file "$pidfile" "${SERVER_ARGS[@]}"
    local deadline=$(($(now_us) + 10000000))
    until [[ $(read_pid "$pidfile") == "$SERVER_PID" ]]; do
        (($(now_us) < deadline)) || die "$SERVER did not write its pid file"
        sleep 0.01
    done
    local url="http://$SERVER_ADDR/"
    log "$tool: $CONNECTIONS connections for ${DURATION}s against $SERVER at $url (pid $SERVER_PID), $RESTARTS restarts"

    case $tool in
        wrk)
            wrk -c "$CONNECTIONS" -t "$THREADS" -d "${DURATION}s" --latency "$url" \
                >"$prefix.txt" 2>&1 &
            ;;
        oha | oha-h2)
            local -a h2=()
            [[ $tool == oha-h2 ]] && h2=(--http2)
            # -w: requests in flight at the deadline finish and count, instead of being
            # cancelled by oha and reported as errors ("aborted due to deadline").
            oha -c "$CONNECTIONS" -z "${DURATION}s" -w --no-tui --output-format json \
                "${h2[@]}" "$url" >"$prefix.json" 2>"$prefix.stderr" &
            ;;
    esac
    LOAD_PID=$!
    BG_PIDS=("$LOAD_PID")
    local start
    start=$(now_us)

    : >"$prefix.handover"
    for ((i = 0; i < RESTARTS; i++)); do
        target=$((start + OFFSET_US + i * INTERVAL_US))
        now=$(now_us)
        if ((target > now)); then
            sleep "$(awk -v us=$((target - now)) 'BEGIN { printf "%.6f", us / 1e6 }')"
        fi
        restart "$pidfile"
        if [[ -n $HANDOVER_US ]]; then
            handovers+=("$HANDOVER_US")
            done_count=$((done_count + 1))
            echo "restart $((i + 1)) at +$(((HUP_AT - start) / 1000))ms: handover ${HANDOVER_US}us, pid $(read_pid "$pidfile")" \
                >>"$prefix.handover"
        else
            echo "restart $((i + 1)): no handover within ${HANDOVER_TIMEOUT_S}s" >>"$prefix.handover"
            log "$tool: restart $((i + 1)) did not hand over within ${HANDOVER_TIMEOUT_S}s"
        fi
    done

    local load_rc=0
    wait "$LOAD_PID" || load_rc=$?
    LOAD_PID=""
    BG_PIDS=()
    ((load_rc == 0)) || log "$tool exited with status $load_rc (see $prefix.*)"

    # Every generation announced itself on the shared stdout.
    local generations
    generations=$(grep -c '^listening ' "$prefix-server.out" || true)
    local alive
    alive=$(session_members "$SERVER_SID" | wc -l)
    stop_server "$SERVER_SID"

    local requests failures p50 p99 max detail
    case $tool in
        wrk)
            local -A w=()
            local k v
            while IFS='=' read -r k v; do w[$k]=$v; done < <(parse_wrk "$prefix.txt")
            requests=${w[requests]:-}
            failures=${w[failures]}
            p50=${w[p50]} p99=${w[p99]} max=${w[max]}
            detail="socket errors: connect ${w[connect]}, read ${w[read]}, write ${w[write]}, timeout ${w[timeout]}; non-2xx/3xx ${w[non2xx]}"
            ;;
        *)
            local parsed
            parsed=$(jq -r '
                (.statusCodeDistribution // {}) as $s
                | (.errorDistribution // {}) as $e
                | ([$s[]] | add // 0) as $ok
                | ([$e[]] | add // 0) as $err
                | ([$s | to_entries[] | select(.key != "200") | .value] | add // 0) as $non200
                | [ $ok + $err, $err + $non200,
                    ((.latencyPercentiles.p50 // 0) * 1000),
                    ((.latencyPercentiles.p99 // 0) * 1000),
                    ((.summary.slowest // 0) * 1000),
                    ("errors: " + (if $err == 0 then "0" else ($e | to_entries | map("\(.key): \(.value)") | join("; ")) end)
                     + "; status: " + ($s | to_entries | map("\(.key) × \(.value)") | join(", ")))
                  ] | @tsv' "$prefix.json" 2>/dev/null) || parsed=""
            [[ -n $parsed ]] || {
                cat "$prefix.stderr" >&2
                die "cannot read oha's output $prefix.json"
            }
            IFS=$'\t' read -r requests failures p50 p99 max detail <<<"$parsed"
            ;;
    esac
    [[ -n $requests ]] || die "no result from $tool (see $prefix.*)"

    local hmin="-" hmed="-" hmax="-"
    if ((${#handovers[@]})); then
        hmin=$(printf '%s\n' "${handovers[@]}" | sort -n | head -1)
        hmax=$(printf '%s\n' "${handovers[@]}" | sort -n | tail -1)
        hmed=$(median "${handovers[@]}")
    fi
    {
        printf 'tool=%s\nrequests=%s\nfailures=%s\np50=%s\np99=%s\nmax=%s\n' \
            "$tool" "$requests" "$failures" "$p50" "$p99" "$max"
        printf 'restarts=%s\nhmin=%s\nhmed=%s\nhmax=%s\n' "$done_count" "$hmin" "$hmed" "$hmax"
        printf 'generations=%s\nalive=%s\nload_rc=%s\ndetail=%s\n' "$generations" "$alive" "$load_rc" "$detail"
    } >"$prefix.result"
    log "$tool: $requests requests, $failures failed, $done_count/$RESTARTS restarts, $generations generations"
}

LOAD_BEFORE=$(loadavg)
for tool in $TOOLS; do
    run_one "$tool"
done

# The table.
ms() { awk -v v="$1" 'BEGIN { if (v == "-" || v == "") print "-"; else printf "%.2f", v }'; }
us_ms() { awk -v v="$1" 'BEGIN { if (v == "-" || v == "") print "-"; else printf "%.1f", v / 1000 }'; }

status=0
echo
printf '%s against %s: %d connections, %ss, %d restarts every %ss (loopback, %d CPUs, load average %s before, %s after)\n' \
    "$TOOLS" "$SERVER" "$CONNECTIONS" "$DURATION" "$RESTARTS" "$INTERVAL" "$(nproc)" "$LOAD_BEFORE" "$(loadavg)"
printf '%-7s %10s %9s %9s %9s %9s %9s   %s\n' tool requests failures p50_ms p99_ms max_ms restarts \
    'handover_ms min/median/max'
for tool in $TOOLS; do
    declare -A r=()
    while IFS='=' read -r k v; do r[$k]=$v; done <"$OUT/$tool.result"
    printf '%-7s %10s %9s %9s %9s %9s %9s   %s / %s / %s\n' "$tool" "${r[requests]}" \
        "${r[failures]}" "$(ms "${r[p50]}")" "$(ms "${r[p99]}")" "$(ms "${r[max]}")" \
        "${r[restarts]}/$RESTARTS" "$(us_ms "${r[hmin]}")" "$(us_ms "${r[hmed]}")" "$(us_ms "${r[hmax]}")"
    if ((r[failures] > 0)); then
        status=1
    fi
    if ((r[restarts] != RESTARTS)) || ((r[generations] != RESTARTS + 1)); then
        status=1
    fi
    unset r
done
echo
for tool in $TOOLS; do
    declare -A r=()
    while IFS='=' read -r k v; do r[$k]=$v; done <"$OUT/$tool.result"
    printf '%-7s %s; generations %s\n' "$tool" "${r[detail]}" "${r[generations]}"
    if ((r[failures] > 0)); then
        echo "        FAILED REQUESTS: see $OUT/$tool.* (load generator output, server log $tool-server.err)"
    fi
    if ((r[restarts] != RESTARTS)) || ((r[generations] != RESTARTS + 1)); then
        echo "        INCOMPLETE RESTARTS: ${r[restarts]}/$RESTARTS handovers, ${r[generations]} generations (see $OUT/$tool.handover)"
    fi
    unset r
done
echo "raw outputs and server logs: $OUT"
exit "$status"
