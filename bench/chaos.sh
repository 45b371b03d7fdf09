#!/usr/bin/env bash
# Chaos run: keeps HTTP/1.1 keep-alive load on an example server while it injects, at
# random (seeded), the faults a restart must survive, and checks throughout and at the end
# that nobody was served badly except by a process the script killed itself.
#
# Injections (one at a time, at random, 0.2–1.2 s apart):
#   hup          SIGHUP to the serving generation
#   burst        100 SIGHUPs to it, back to back
#   kill-new     SIGHUP, then SIGKILL of the new generation before it is ready (caught
#                between "spawned the new generation pid=N" in the log and its pid file)
#   kill-old     SIGHUP, then SIGKILL of the predecessor while its successor starts (the
#                successor adopts the fds, orphaned, and becomes the serving process)
#   swap-KIND    the installed binary replaced (atomic rename) by KIND, then SIGHUP: crash
#                (exits 1 at start), hang (a script that never reports ready: killed at
#                the upgrade timeout with its process group), wrapper (a script without
#                exec that runs the real server as its child: its readiness names the
#                child, which the parent refuses, so it must fail like the other two; the
#                requests that child accepted before its kill count as lost to a kill),
#                good (back to the server)
#   hammer       SIGHUP, then SIGUSR2 to the draining predecessor while slow requests are
#                in flight on it
#   kill-ready   (with --kill-after-ready) SIGKILL of the successor right after it
#                reported ready: the predecessor, its fallback, must take the service back
#                (the pid file names it again within 5 s)
#
# The server runs with --probation 1: a predecessor stays the fallback for a second after
# its drain.
#
# Checked: the probe (a fresh connection every 50 ms) never goes longer than --max-gap
# (1 s) without a successful connect, nor without an answer; every failed request was on a
# connection held by a process the script killed (SIGKILL or the hammer), or, before its
# first answer, within 3 s of such a kill; every SIGHUP with a working binary handed over
# and every one with a broken binary failed with the old generation still serving. At the
# end: exactly one process in the server's session, no zombie, nothing else holding the
# listening socket, and the serving process's fd count equal to a freshly started one's.
#
#   bench/chaos.sh [--duration SECS] [--seed N] [--server NAME] [--debug] [--no-build]
#       [--kill-after-ready] [--max-gap SECS] [--out DIR] [--server-arg ARG]...
#
# --debug runs the debug build of the examples (target/debug; what `cargo test` builds)
# instead of the release one. Prints the seed (replay a run with --seed), what it injected
# (counts per kind) and what it saw, and exits 1 on any breach. The server's log, the
# load's result and the injections are kept in --out (default target/bench/chaos-<time>/).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init

DURATION=60
SEED=""
SERVER=hello-hyper
PROFILE=release
BUILD=1
KILL_AFTER_READY=0
MAX_GAP=1
OUT=""
SERVER_ARGS=()
UPGRADE_TIMEOUT=2
DRAIN_TIMEOUT=5

while (($#)); do
    case $1 in
        --no-build) BUILD=0; shift; continue ;;
        --debug) PROFILE=debug; shift; continue ;;
        --kill-after-ready) KILL_AFTER_READY=1; shift; continue ;;
        -h | --help) usage ;;
    esac
    (($# >= 2)) || { echo "$1 needs a value" >&2; usage; }
    case $1 in
        --duration) DURATION=$2 ;;
        --seed) SEED=$2 ;;
        --server) SERVER=$2 ;;
        --max-gap) MAX_GAP=$2 ;;
        --server-arg) SERVER_ARGS+=("$2") ;;
        --out) OUT=$2 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift 2
done
[[ $DURATION =~ ^[0-9]+$ ]] || die "--duration takes a whole number of seconds"
[[ -z $SEED ]] && SEED=$((${EPOCHREALTIME/./} % 32768))
[[ $SEED =~ ^[0-9]+$ ]] || die "--seed takes a whole number"
[[ $MAX_GAP =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--max-gap takes seconds"
RANDOM=$SEED

OUT=${OUT:-target/bench/chaos-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
HERE="$ROOT/bench"
[[ $PROFILE == debug ]] && BIN_DIR=${BIN_DIR%/release}/debug

STOP_FILE="$OUT/load.stop"
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    touch "$STOP_FILE"
    cleanup_all
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $BUILD == 1 ]]; then
    if [[ $PROFILE == release ]]; then
        build_examples
    else
        log "building the examples (debug)"
        cargo build -p endless-examples --locked >&2
    fi
fi
need_python3
[[ -x $BIN_DIR/$SERVER ]] || die "$BIN_DIR/$SERVER not found"
nap_init "$OUT"

# The binaries to install. The server runs from $RUN/$SERVER and re-executes that path on
# each restart, so replacing that file (by rename) is a deploy.
RUN="$OUT/run"
mkdir -p "$RUN" "$OUT/bin"
cp "$BIN_DIR/$SERVER" "$OUT/bin/good"
printf '#!/bin/sh\nexit 1\n' >"$OUT/bin/crash"
printf '#!/bin/sh\n# never ready: killed at the upgrade timeout, with its sleep\nsleep 600 &\nwait\n' \
    >"$OUT/bin/hang"
# No exec: the server runs as the script's child, under the installed path as argv[0] (the
# path it re-executes on its next restart).
printf '#!/bin/bash\n(exec -a "$0" %q "$@")\nexit $?\n' "$OUT/bin/good" >"$OUT/bin/wrapper"
chmod 755 "$OUT/bin/"*
INSTALLED=""
install_bin() {
    cp "$OUT/bin/$1" "$RUN/.$SERVER.new"
    mv -f "$RUN/.$SERVER.new" "$RUN/$SERVER"
    INSTALLED=$1
}
install_bin good

PROBATION=1
FLAGS=(--upgrade-timeout "$UPGRADE_TIMEOUT" --drain-timeout "$DRAIN_TIMEOUT" --probation "$PROBATION"
    "${SERVER_ARGS[@]}")
LAUNCH="python3 $HERE/chaos.py reap --"
LOG="$OUT/server.err"
PIDFILE="$OUT/server.pid"
KILLS="$OUT/kills"
: >"$KILLS"
: >"$OUT/injections"

breaches=()
breach() {
    breaches+=("$*")
    log "BREACH: $*"
}

log_size() { stat -c %s "$LOG"; }
# log_has OFFSET PATTERN: the log after OFFSET (colours stripped) has a line matching PATTERN.
log_has() {
    tail -c +$(($1 + 1)) "$LOG" | sed 's/\x1b\[[0-9;]*m//g' | grep -q -- "$2"
}
fd_count() { { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null || true; } | wc -l; }
main_pid() { pid_in "$PIDFILE"; }

# Ancestors of PID (up to, not including, pid 1).
ancestors() {
    local p=$1 pp
    while :; do
        pp=$(awk '{ print $4 }' "/proc/$p/stat" 2>/dev/null || true)
        [[ -n $pp && $pp != 0 && $pp != 1 ]] || return 0
        echo "$pp"
        p=$pp
    done
}

# settle TIMEOUT_S: waits until the session holds only the serving process (and, after a
# wrapper, the script it runs under). Returns 1 on a timeout.
settle() {
    local deadline=$(($(now_us) + $1 * 1000000)) main others
    while :; do
        main=$(main_pid)
        if [[ -n $main ]] && proc_alive "$main"; then
            others=$(session_members "$SERVER_SID" | grep -vxF -f <(echo "$main"; ancestors "$main") || true)
            [[ -z $others ]] && return 0
        fi
        (($(now_us) < deadline)) || return 1
        sleep 0.05
    done
}

# The outcome of a restart of OLD with the installed binary: a handover for a working one,
# "restart failed" (and OLD still serving) for a broken one.
expect_outcome() {
    local old=$1 off=$2 what=$3 deadline
    deadline=$(($(now_us) + (UPGRADE_TIMEOUT + 10) * 1000000))
    case $INSTALLED in
        good)
            while [[ $(main_pid) == "$old" ]]; do
                if (($(now_us) > deadline)); then
                    breach "$what: no handover from $old within $((UPGRADE_TIMEOUT + 10)) s ($INSTALLED binary)"
                    return 1
                fi
                nap_1ms
            done
            ;;
        crash | hang | wrapper)
            until log_has "$off" "pid=$old}.*restart failed; this process keeps serving"; do
                if (($(now_us) > deadline)); then
                    breach "$what: no \"restart failed\" from $old within $((UPGRADE_TIMEOUT + 10)) s ($INSTALLED binary)"
                    return 1
                fi
                sleep 0.02
            done
            # The old generation writes its pid back as it serves again, just after it logs
            # the failure: a wrapper's server, refused, wrote its own pid on its way to
            # ready, and the old generation's rewrite (a temporary file and a rename) came
            # 26 ms after the log line in one CI run. The pid file must name it again
            # within a second.
            deadline=$(($(now_us) + 1000000))
            until [[ $(main_pid) == "$old" ]] || (($(now_us) > deadline)); do
                nap_1ms
            done
            [[ $(main_pid) == "$old" ]] && proc_alive "$old" ||
                breach "$what: 1 s after a failed restart the pid file names $(main_pid), not $old"
            if [[ $INSTALLED == wrapper ]]; then
                # The server under the wrapper reported ready under its own pid, was refused
                # and killed with the wrapper's group; what it accepted meanwhile is lost (a
                # documented limit, README: "Nothing left behind"). Its losses count as a kill.
                local refused
                refused=$(tail -c +$((off + 1)) "$LOG" | sed 's/\x1b\[[0-9;]*m//g' |
                    grep -o 'received "endless/1 ready [0-9]*' | head -n 1 | grep -o '[0-9]*$' || true)
                [[ -n $refused ]] && echo "$(now_us) $refused wrapper-refused" >>"$KILLS"
            fi
            ;;
    esac
}

declare -A COUNT=()
note() {
    COUNT[$1]=$((${COUNT[$1]:-0} + 1))
    printf '%s +%dms %s\n' "$1" $((($(now_us) - START_US) / 1000)) "${2:-}" >>"$OUT/injections"
}

inject() {
    local kind=$1 old off r i new
    old=$(main_pid)
    off=$(log_size)
    case $kind in
        hup)
            kill -HUP "$old"
            note hup "$old ($INSTALLED)"
            expect_outcome "$old" "$off" "SIGHUP to $old"
            ;;
        burst)
            for ((i = 0; i < 100; i++)); do kill -HUP "$old" 2>/dev/null || break; done
            note burst "$old ($INSTALLED), $i signals"
            ;;
        kill-new | kill-old)
            r=$(python3 "$HERE/chaos.py" catch --log "$LOG" --offset "$off" --pid-file "$PIDFILE" \
                --old "$old" --target "${kind#kill-}" --deadline 10)
            if [[ $r == killed* ]]; then
                # killed TIME PID NEW KIND
                read -r _ t victim new _ <<<"$r"
                echo "$t $victim $kind" >>"$KILLS"
                note "$kind" "$victim ($INSTALLED; new generation $new)"
                if [[ $kind == kill-old ]]; then
                    # The orphaned successor must take over and become the serving process.
                    local deadline=$(($(now_us) + (UPGRADE_TIMEOUT + 10) * 1000000))
                    # (Under the wrapper, the serving process is the wrapper's child.)
                    until [[ $(main_pid) != "$old" ]] && proc_alive "$(main_pid)"; do
                        if (($(now_us) > deadline)); then
                            breach "kill-old: the successor $new of the killed $old did not become the serving process"
                            break
                        fi
                        nap_1ms
                    done
                else
                    # The restart fails; the old generation keeps serving, and names itself
                    # in the pid file.
                    local saved=$INSTALLED
                    INSTALLED=crash
                    expect_outcome "$old" "$off" "kill-new of $new"
                    INSTALLED=$saved
                fi
            else
                note "$kind-missed" "$old ($INSTALLED): $r"
            fi
            ;;
        swap)
            local kinds=() k pick
            for k in good crash hang wrapper; do [[ $k == "$INSTALLED" ]] || kinds+=("$k"); done
            pick=${kinds[RANDOM % ${#kinds[@]}]}
            install_bin "$pick"
            kill -HUP "$old"
            note "swap-$pick" "$old"
            expect_outcome "$old" "$off" "swap to $pick, SIGHUP to $old"
            ;;
        hammer)
            kill -HUP "$old"
            expect_outcome "$old" "$off" "SIGHUP to $old (hammer)" || return 0
            if proc_alive "$old"; then
                echo "$(now_us) $old hammer" >>"$KILLS"
                kill -USR2 "$old" 2>/dev/null || true
                note hammer "$old ($INSTALLED)"
            else
                note hammer-missed "$old had drained already"
            fi
            ;;
        kill-ready)
            kill -HUP "$old"
            expect_outcome "$old" "$off" "SIGHUP to $old (kill-ready)" || return 0
            new=$(main_pid)
            echo "$(now_us) $new kill-ready" >>"$KILLS"
            kill -KILL "$new" 2>/dev/null || true
            note kill-ready "$new ($INSTALLED)"
            # The fallback: the predecessor names itself in the pid file again.
            deadline=$(($(now_us) + 5000000))
            until [[ $(main_pid) == "$old" ]]; do
                if (($(now_us) > deadline)); then
                    breach "the predecessor $old did not take the service back after $new was killed"
                    break
                fi
                sleep 0.01
            done
            ;;
    esac
}

# ---- a fresh server: the fd count to compare with at the end --------------------------------
log "seed $SEED; $SERVER ($PROFILE build), ${DURATION}s"
start_server "$SERVER" "$BIN_DIR/$SERVER" "$OUT/fresh" --pid-file "$OUT/fresh.pid" "${FLAGS[@]}"
wait_pid_file "$OUT/fresh.pid" 10 "the fresh $SERVER"
FRESH_FDS=$(fd_count "$SERVER_PID")
stop_server "$SERVER_SID"

# ---- the server under chaos, and the load ---------------------------------------------------
RUST_LOG=${RUST_LOG:-info} LAUNCH=$LAUNCH start_server "$SERVER" "$RUN/$SERVER" "$OUT/server" \
    --pid-file "$PIDFILE" "${FLAGS[@]}"
deadline=$(($(now_us) + 10000000))
until [[ $(main_pid) == "$SERVER_PID" ]]; do
    (($(now_us) < deadline)) || die "$SERVER did not write its pid file"
    sleep 0.01
done
PORT=${SERVER_ADDR##*:}
rm -f "$STOP_FILE" "$OUT/load.ready"
# A server that hands idle connections over moves them to its successor: a connection's
# last answer then need not name the process that holds it.
MOVES=()
for a in "${SERVER_ARGS[@]}"; do
    [[ $a == --hand-over-idle ]] && MOVES=(--moves --server-log "$LOG")
done
python3 "$HERE/chaos.py" load --addr "$SERVER_ADDR" --kills "$KILLS" --stop "$STOP_FILE" \
    --ready "$OUT/load.ready" --result "$OUT/load.json" "${MOVES[@]}" &
LOAD_PID=$!
BG_PIDS+=("$LOAD_PID")
deadline=$(($(now_us) + 10000000))
until [[ -e $OUT/load.ready ]]; do
    (($(now_us) < deadline)) || die "the load did not start"
    sleep 0.02
done
LOAD_BEFORE=$(loadavg)
log "load on $SERVER_ADDR (pid $SERVER_PID, session $SERVER_SID); injecting for ${DURATION}s"

START_US=$(now_us)
END_US=$((START_US + DURATION * 1000000))
KINDS=(hup hup burst kill-new kill-new kill-old kill-old swap swap swap hammer hammer)
((KILL_AFTER_READY)) && KINDS+=(kill-ready)
while (($(now_us) < END_US)); do
    if ! proc_alive "$(main_pid)"; then
        breach "no serving process: the pid file names $(main_pid), which is gone; injections stop here"
        break
    fi
    kind=${KINDS[RANDOM % ${#KINDS[@]}]}
    # Killing the predecessor, or hammering it, needs a successor that can take over.
    case $kind in
        kill-old | hammer | kill-ready) [[ $INSTALLED == good ]] || kind=swap ;;
    esac
    pause=$((200 + RANDOM % 1000))
    inject "$kind"
    if ! settle $((UPGRADE_TIMEOUT + DRAIN_TIMEOUT + PROBATION + 10)); then
        strays=$(session_members "$SERVER_SID" | grep -vxF -f <(main_pid; ancestors "$(main_pid)") || true)
        breach "after $kind: the session did not settle to the serving process $(main_pid): also $(echo $strays) ($(ps -o pid=,ppid=,args= -p "$(echo $strays | tr ' ' ,)" 2>/dev/null | tr -s ' \n' ' '))"
        # Recorded, then ended (as the script's own kills) so that the run goes on.
        for p in $strays; do
            echo "$(now_us) $p kill-stray" >>"$KILLS"
            kill -KILL "$p" 2>/dev/null || true
        done
        note kill-stray "$(echo $strays)"
        settle 10 || true
    fi
    sleep "$(awk -v ms=$pause 'BEGIN { printf "%.3f", ms / 1000 }')"
done

# ---- the end: the good binary back, one last restart, then the checks ---------------------
install_bin good
old=$(main_pid)
off=$(log_size)
if kill -HUP "$old" 2>/dev/null; then
    expect_outcome "$old" "$off" "the final SIGHUP to $old" || true
else
    breach "at the end the pid file names $old, which is gone"
fi
settle $((DRAIN_TIMEOUT + PROBATION + 10)) || true
touch "$STOP_FILE"
wait "$LOAD_PID" || breach "the load client failed (status $?)"
BG_PIDS=()

MAIN=$(main_pid)
deadline=$(($(now_us) + 10000000))
while :; do
    members=$(session_members "$SERVER_SID" | tr '\n' ' ')
    zombies=$(ps -eo sid=,pid=,ppid=,stat= | awk -v s="$SERVER_SID" '$1 == s && $4 ~ /^Z/ { print $2 "(parent " $3 ")" }' | tr '\n' ' ')
    fds=$(fd_count "$MAIN")
    [[ $members == "$MAIN " && -z $zombies && $fds == "$FRESH_FDS" ]] && break
    (($(now_us) < deadline)) || break
    sleep 0.05
done
[[ $members == "$MAIN " ]] || breach "processes in the session at the end: $members (serving: $MAIN)"
[[ -z $zombies ]] || breach "zombies in the session at the end: $zombies"
[[ $fds == "$FRESH_FDS" ]] || breach "the serving process holds $fds fds, a fresh one $FRESH_FDS"
# Who holds the listening socket: its inode (/proc/net/tcp, state 0A) against every fd.
port_hex=$(printf '%04X' "$PORT")
inode=$(awk -v p=":$port_hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10; exit }' /proc/net/tcp)
holders=""
if [[ -n $inode ]]; then
    holders=$(find /proc/[0-9]*/fd -lname "socket:\[$inode\]" 2>/dev/null | cut -d/ -f3 | sort -u | tr '\n' ' ' || true)
fi
[[ $holders == "$MAIN " ]] || breach "the listening socket (inode ${inode:-none}) is held by: ${holders:-nobody} (serving: $MAIN)"

# ---- the report ------------------------------------------------------------------------------
read -r requests failures attributed unattributed gap_refused gap_unanswered probes < <(
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); p = r["probes"]
print(r["requests"], r["failures"], r["attributed"], r["unattributed"], r["gap_refused_ms"], r["gap_unanswered_ms"], "%d/%d/%d" % (p["sent"], p["connect_failed"], p["unanswered"]))' "$OUT/load.json")
((unattributed == 0)) || breach "$unattributed failed requests not on a connection of a process the script killed (see $OUT/load.json)"
max_gap_ms=$(awk -v s="$MAX_GAP" 'BEGIN { printf "%d", s * 1000 }')
awk -v g="$gap_refused" -v m="$max_gap_ms" 'BEGIN { exit !(g > m) }' &&
    breach "the port refused or did not accept connections for ${gap_refused} ms"
awk -v g="$gap_unanswered" -v m="$max_gap_ms" 'BEGIN { exit !(g > m) }' &&
    breach "the probe went ${gap_unanswered} ms without an answer"

echo
printf 'chaos against %s (%s build): %ss, seed %s (loopback, %d CPUs, load average %s before, %s after)\n' \
    "$SERVER" "$PROFILE" "$DURATION" "$SEED" "$(nproc)" "$LOAD_BEFORE" "$(loadavg)"
injected=""
for k in $(printf '%s\n' "${!COUNT[@]}" | sort); do injected+="${injected:+, }$k ${COUNT[$k]}"; done
echo "injected: ${injected:-nothing}"
printf 'saw: %s requests, %s failed (%s on processes the script killed, %s not), probes sent/refused/unanswered %s\n' \
    "$requests" "$failures" "$attributed" "$unattributed" "$probes"
printf '     longest gap without a connect %s ms, without an answer %s ms (limit %s ms)\n' \
    "$gap_refused" "$gap_unanswered" "$max_gap_ms"
printf 'end: serving pid %s; in its session: %s; zombies: %s; %s fds (fresh: %s); listening socket held by %s\n' \
    "$MAIN" "$members" "${zombies:-none}" "$fds" "$FRESH_FDS" "${holders:-nobody}"
if ((${#breaches[@]})); then
    echo "BREACHES (${#breaches[@]}):"
    printf '  %s\n' "${breaches[@]}"
    replay="bench/chaos.sh --seed $SEED --duration $DURATION --server $SERVER"
    [[ $PROFILE == debug ]] && replay+=" --debug"
    ((KILL_AFTER_READY)) && replay+=" --kill-after-ready"
    for a in "${SERVER_ARGS[@]}"; do replay+=" --server-arg $a"; done
    echo "replay: $replay; raw outputs: $OUT"
    exit 1
fi
echo "no breach; raw outputs: $OUT"
