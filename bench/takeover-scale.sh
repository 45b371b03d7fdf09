#!/usr/bin/env bash
# Connection takeover at scale: how long do many connections take to move to the new
# generation, does every one arrive intact, and what does moving idle keep-alives cost the
# latency of a restart under load?
#
# 1. idle: `hello-hyper --hand-over-idle` with N idle HTTP/1.1 keep-alive connections (one
#    request each, bench/takeover_clients.py). SIGHUP; the new generation takes them all.
#    Two times, both from the new generation's readiness (the pid file names it, polled
#    every millisecond): taken = until the new generation has every connection (it logs
#    `connection takeover ended` once the old one has closed the takeover channel, after
#    its last batch's answer; tracing's timestamp); gone = until the old generation's
#    process is gone (it exits once its last connection moved, `--probation 0`, and its
#    exit frees the memory that held the connections: hyper's buffers, about 20 KiB each).
#    The target is read on `taken`: a connection has moved once the new generation holds
#    it. Each connection then sends a second request, which the new pid must
#    answer on the same connection. K rounds (default 3), each with a server and clients of
#    its own: the move varies from run to run on a shared machine by more than a change
#    worth measuring, so the idle row is the round with the median `taken`, and every
#    round's times are listed under the table.
# 2. sessions: `pingpong` with S sessions (each has sent one line: counter 1), spread over
#    P client processes and over the loopback sources 127.0.0.1, .2, … (28,000 ephemeral
#    ports each). The same SIGHUP and times; then each session sends a line, which the
#    new pid must answer with counter 2.
# 3. p99: bench/restart-under-load.sh with wrk at C connections and R restarts, without and
#    then with `--hand-over-idle`; the ratio of the two p99 (and max) latencies.
#
# The table also gives each generation's resident memory (VmRSS) while it holds the
# connections: the old one's before the SIGHUP, the new one's once the old one is gone
# (before any connection sends again).
#
# Prints one table and the ratios. Targets: 10,000 idle connections move in under 200 ms;
# 100,000 sessions in under 2 s; p99 with --hand-over-idle within 1.5x of the run without.
# Exits 1 if a connection failed or moved wrong, or a restart did not happen.
#
#   bench/takeover-scale.sh [--idle N] [--idle-rounds K] [--sessions N] [--procs P] [--p99-connections C]
#       [--p99-restarts R] [--skip-p99] [--out DIR] [--no-build]
#
# Raises the open-file limit (ulimit -n) for itself, the servers and the clients: each
# generation holds every connection (S + 1000). Where the hard limit is lower (a container
# that may not raise it), the sessions are as many as it allows, and the table says so.
# Loopback only; everything it starts is ended on exit.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init

IDLE=10000
IDLE_ROUNDS=3
SESSIONS=100000
PROCS=4
P99_CONNECTIONS=256
P99_RESTARTS=10
SKIP_P99=0
OUT=""
BUILD=1

while (($#)); do
    case $1 in
        --no-build) BUILD=0; shift; continue ;;
        --skip-p99) SKIP_P99=1; shift; continue ;;
        -h | --help) usage ;;
    esac
    (($# >= 2)) || { echo "$1 needs a value" >&2; usage; }
    case $1 in
        --idle) IDLE=$2 ;;
        --idle-rounds) IDLE_ROUNDS=$2 ;;
        --sessions) SESSIONS=$2 ;;
        --procs) PROCS=$2 ;;
        --p99-connections) P99_CONNECTIONS=$2 ;;
        --p99-restarts) P99_RESTARTS=$2 ;;
        --out) OUT=$2 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift 2
done
for v in IDLE IDLE_ROUNDS SESSIONS PROCS P99_CONNECTIONS P99_RESTARTS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v,,} takes a whole number"
done
((PROCS >= 1)) || die "--procs takes at least 1"
((IDLE_ROUNDS >= 1)) || die "--idle-rounds takes at least 1"

OUT=${OUT:-target/bench/takeover-scale-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
trap 'cleanup_all' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# As many open files as allowed (root may raise the hard limit; a container may forbid it).
ulimit -Hn 1048576 2>/dev/null || true
HARD=$(ulimit -Hn)
[[ $HARD == unlimited ]] && HARD=1048576
ulimit -n "$HARD"
MAX_CONNS=$((HARD - 1000))
WANTED_SESSIONS=$SESSIONS
((SESSIONS <= MAX_CONNS)) || SESSIONS=$MAX_CONNS
((IDLE <= MAX_CONNS)) || die "--idle $IDLE needs $((IDLE + 1000)) open files; the hard limit is $HARD"

[[ $BUILD == 1 ]] && build_examples
need_python3
need_jq
nap_init "$OUT"

# move NAME SERVER MODE N PROCS SOURCES [SERVER_ARGS...]: one restart with N connections;
# writes $OUT/NAME.result (key=value).
move() {
    local name=$1 server=$2 mode=$3 n=$4 procs=$5 sources=$6
    shift 6
    local prefix="$OUT/$name" pidfile="$OUT/$name.pid" gofile="$OUT/$name.go"
    rm -f "$pidfile" "$gofile"
    # Warnings, and the takeover's two lines a restart (its end marks `taken`).
    RUST_LOG=${RUST_LOG:-warn,endless_unix::takeover=info} start_server "$server" "$BIN_DIR/$server" "$prefix-server" \
        --pid-file "$pidfile" --probation 0 "$@"
    wait_pid_file "$pidfile" 10 "$server"
    log "$name: $n connections to $server at $SERVER_ADDR (pid $SERVER_PID), $procs client processes"
    local clients=() p per
    per=$(((n + procs - 1) / procs))
    for ((p = 0; p < procs; p++)); do
        local count=$((n - p * per < per ? n - p * per : per))
        ((count > 0)) || break
        # Each process its own sources, so that no two share an ephemeral port range.
        local srcs=$(((sources + procs - 1) / procs))
        python3 "$ROOT/bench/takeover_clients.py" --mode "$mode" --addr "$SERVER_ADDR" \
            --connections "$count" --sources "$srcs" --first $((1 + p * srcs)) \
            --go-file "$gofile" >"$prefix.clients-$p" 2>"$prefix.clients-$p.err" &
        clients+=($!)
    done
    BG_PIDS=("${clients[@]}")
    local deadline=$(($(now_us) + 300000000))
    for ((p = 0; p < ${#clients[@]}; p++)); do
        wait_clients_ready "$prefix.clients-$p" "${clients[p]}" "$deadline" "$name: client $p"
    done
    log "$name: every connection open and used once; SIGHUP"
    local old=$SERVER_PID
    local old_rss
    old_rss=$(rss_mib "$old")
    watch_exit "$old" 150
    hup_and_wait "$pidfile" 30
    [[ -n $HANDOVER_US ]] || die "$name: no new generation within 30 s (see $prefix-server.err)"
    local ready_at=$((HUP_AT + HANDOVER_US))
    wait_gone "$old" 120
    [[ -n $GONE_AT ]] || die "$name: the old generation did not exit in 120 s"
    local move_us=$((GONE_AT - ready_at)) taken_at taken_us=""
    taken_at=$(log_time "$prefix-server.err" 'connection takeover ended' "$HUP_AT")
    [[ -n $taken_at ]] && taken_us=$((taken_at - ready_at))
    # What holding the connections costs the new generation, before any sends again.
    local new_rss
    new_rss=$(rss_mib "$NEW_PID")
    echo "$NEW_PID" >"$gofile.tmp" && mv "$gofile.tmp" "$gofile"
    local ok=0 failed=0 rc=0 c errors=""
    for ((p = 0; p < ${#clients[@]}; p++)); do
        wait "${clients[p]}" || rc=1
        local json
        json=$(tail -1 "$prefix.clients-$p")
        c=$(jq -r '.moved_ok' <<<"$json")
        ok=$((ok + c))
        c=$(jq -r '.failed + .open_failed' <<<"$json")
        failed=$((failed + c))
        errors+=$(jq -r '.errors | join(" | ")' <<<"$json")
    done
    BG_PIDS=()
    stop_server "$SERVER_SID"
    {
        echo "connections=$n"
        echo "handover_us=$HANDOVER_US"
        echo "taken_us=$taken_us"
        echo "move_us=$move_us"
        echo "old_rss_mib=$old_rss"
        echo "new_rss_mib=$new_rss"
        echo "moved_ok=$ok"
        echo "failed=$failed"
        echo "clients_rc=$rc"
        echo "errors=$errors"
    } >"$prefix.result"
    log "$name: moved in ${taken_us:+$((taken_us / 1000)) ms, the old generation gone in }$((move_us / 1000)) ms; $ok ok, $failed failed"
}

LOAD_BEFORE=$(loadavg)
for ((r = 1; r <= IDLE_ROUNDS; r++)); do
    move "idle-$r" hello-hyper http "$IDLE" 1 1 --hand-over-idle
done
# The idle row is the round with the median `taken` (`gone` if the log has no end line);
# every round is checked.
IDLE_MOVES_MS=""
MEDIAN_ROUND=$(for ((r = 1; r <= IDLE_ROUNDS; r++)); do
    t=$(grep '^taken_us=' "$OUT/idle-$r.result" | cut -d= -f2)
    echo "${t:-$(grep '^move_us=' "$OUT/idle-$r.result" | cut -d= -f2)} $r"
done | sort -n | awk '{ r[NR] = $2 } END { print r[int((NR + 1) / 2)] }')
cp "$OUT/idle-$MEDIAN_ROUND.result" "$OUT/idle.result"
# 28,000 ephemeral ports per source address, with room to spare.
SOURCES=$(((SESSIONS + 19999) / 20000))
((SOURCES >= PROCS)) || SOURCES=$PROCS
move sessions pingpong pingpong "$SESSIONS" "$PROCS" "$SOURCES"

P99_STATUS=0
if [[ $SKIP_P99 == 0 ]]; then
    for mode in plain idle; do
        args=()
        [[ $mode == idle ]] && args=(--server-arg --hand-over-idle)
        log "p99: restart-under-load.sh, wrk, $P99_CONNECTIONS connections, $P99_RESTARTS restarts ($mode)"
        bash "$ROOT/bench/restart-under-load.sh" --no-build --tools wrk \
            --connections "$P99_CONNECTIONS" --restarts "$P99_RESTARTS" \
            --out "$OUT/p99-$mode" "${args[@]}" >"$OUT/p99-$mode.txt" 2>&1 || P99_STATUS=1
    done
fi

status=0
echo
printf 'Connection takeover at scale (release build, loopback, %d CPUs, load average %s before, %s after, open-file limit %s)\n' \
    "$(nproc)" "$LOAD_BEFORE" "$(loadavg)" "$HARD"
printf '%-9s %12s %12s %9s %9s %9s %9s %12s %12s\n' what connections handover_ms taken_ms gone_ms moved_ok \
    failed old_rss_mib new_rss_mib
for ((r = 1; r <= IDLE_ROUNDS; r++)); do
    declare -A x=()
    while IFS='=' read -r k v; do x[$k]=$v; done <"$OUT/idle-$r.result"
    IDLE_MOVES_MS+="${IDLE_MOVES_MS:+, }$(ms_or_dash "${x[taken_us]}")/$(ms_or_dash "${x[move_us]}")"
    if ((x[failed] > 0 || x[moved_ok] != x[connections] || x[clients_rc] != 0)); then
        status=1
        echo "  idle round $r: ${x[errors]}"
    fi
    unset x
done
for name in idle sessions; do
    declare -A x=()
    while IFS='=' read -r k v; do x[$k]=$v; done <"$OUT/$name.result"
    printf '%-9s %12s %12s %9s %9s %9s %9s %12s %12s\n' "$name" "${x[connections]}" \
        "$(ms_or_dash "${x[handover_us]}")" "$(ms_or_dash "${x[taken_us]}")" \
        "$(ms_or_dash "${x[move_us]}")" "${x[moved_ok]}" "${x[failed]}" "${x[old_rss_mib]:--}" "${x[new_rss_mib]:--}"
    if ((x[failed] > 0 || x[moved_ok] != x[connections] || x[clients_rc] != 0)); then
        status=1
        echo "  $name: ${x[errors]}"
    fi
    unset x
done
echo "idle: the median of $IDLE_ROUNDS rounds (taken_ms/gone_ms $IDLE_MOVES_MS)"
if ((SESSIONS < WANTED_SESSIONS)); then
    echo "sessions: $SESSIONS, not $WANTED_SESSIONS: the hard open-file limit here is $HARD (each generation holds every session)"
fi
declare -A i=() s=()
while IFS='=' read -r k v; do i[$k]=$v; done <"$OUT/idle.result"
while IFS='=' read -r k v; do s[$k]=$v; done <"$OUT/sessions.result"
# verdict NAME WANTED LIMIT_MS RESULT: the target (WANTED connections in under LIMIT_MS), read on
# `taken`; on `gone`, which is later, if the log had no end line (a RUST_LOG that hides it).
verdict() {
    local -n r=$4
    awk -v what="$1" -v want="$2" -v limit="$3" -v n="${r[connections]}" \
        -v taken="${r[taken_us]}" -v gone="${r[move_us]}" 'BEGIN {
        us = (taken != "") ? taken : gone
        rate = sprintf("%.1f us each", us / n)
        if (n < want) rate = rate sprintf("; at that rate %d take %.0f ms", want, us / n * want / 1000)
        when = (taken != "") ? sprintf("after %.1f ms", taken / 1000) : "(its log has no end line: read on the old one'"'"'s exit)"
        printf "%s: %d connections in the new generation %s (%s); the old one gone after %.1f ms; target %d in < %d ms: %s\n",
            what, n, when, rate, gone / 1000, want, limit,
            (n < want) ? "not measured at " want : (us < limit * 1000 ? "met" : "NOT met") }'
}
verdict idle 10000 200 i
verdict sessions 100000 2000 s
if [[ $SKIP_P99 == 0 ]]; then
    declare -A a=() b=()
    while IFS='=' read -r k v; do a[$k]=$v; done <"$OUT/p99-plain/wrk.result"
    while IFS='=' read -r k v; do b[$k]=$v; done <"$OUT/p99-idle/wrk.result"
    awk -v p0="${a[p99]}" -v p1="${b[p99]}" -v m0="${a[max]}" -v m1="${b[max]}" \
        -v f0="${a[failures]}" -v f1="${b[failures]}" -v c="$P99_CONNECTIONS" 'BEGIN {
        printf "p99 under wrk at %d connections with restarts: %.2f ms without --hand-over-idle, %.2f ms with (max %.1f / %.1f ms; failed %d / %d)\n",
            c, p0, p1, m0, m1, f0, f1
        printf "p99 with / without --hand-over-idle: %.2f (target <= 1.5: %s)\n", p1 / p0, (p1 / p0 <= 1.5) ? "met" : "NOT met" }'
    ((P99_STATUS == 0)) || status=1
fi
echo "raw outputs and logs: $OUT"
exit "$status"
