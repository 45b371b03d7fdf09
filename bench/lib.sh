# Shared by the benchmark scripts in bench/: sourced, not run.
#
# - bench_init: cd to the repository root, C locale, PATH with cargo's bin directory.
# - build_examples: the example servers in release, as a fresh clone builds them.
# - need_wrk / need_oha / need_jq: install a tool if it is missing (apt for wrk and jq,
#   `cargo install oha --locked` for oha, kept in cargo's bin directory between runs).
# - start_server / stop_server / stop_all_servers: run an example server in a session of its
#   own (every later generation stays in it; each leads its own process group) on a loopback
#   port chosen by the kernel, and end every process of the session.
# - parse_wrk: wrk's text output as key=value lines.
# - usage / die / log: the script's usage lines (from its header) and exit 2; an error and
#   exit 2; a timestamped line on stderr.
#
# Everything a script starts is registered and ended by cleanup_all, which the scripts
# run from an EXIT trap.

# shellcheck shell=bash
# The globals set here (BIN_DIR, SERVER_ADDR, …) are read by the scripts that source it.
# shellcheck disable=SC2034

bench_init() {
    ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    cd "$ROOT" || exit 2
    export LC_ALL=C
    CARGO_BIN_DIR="${CARGO_HOME:-$HOME/.cargo}/bin"
    case ":$PATH:" in
        *":$CARGO_BIN_DIR:"*) ;;
        *) PATH="$CARGO_BIN_DIR:$PATH" ;;
    esac
    # CARGO_TARGET_DIR as cargo reads it: relative to the directory cargo runs in, which
    # is the repository root.
    local target="${CARGO_TARGET_DIR:-target}"
    [[ $target == /* ]] || target="$ROOT/$target"
    BIN_DIR="$target/release"
    SERVER_SIDS=()
    BG_PIDS=()
    SUDO=()
    if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null; then
        SUDO=(sudo)
    fi
    if [[ $(uname -s) != Linux ]]; then
        echo "warning: written for Linux; $(uname -s) may not work" >&2
    fi
}

log() {
    printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

# usage: the calling script's usage lines (its header comment's `#   bench/…` line and the
# `#       …` lines that continue it) on stderr; exits 2.
usage() {
    echo "usage:" >&2
    awk '/^#   bench\// { on = 1; print; next } on && /^#       / { print; next } { on = 0 }' "$0" |
        sed 's/^# \{0,3\}//' >&2
    exit 2
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 2
}

build_examples() {
    log "building the examples (release)"
    cargo build --release -p endless-examples --locked >&2
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "$1 is missing and there is no apt-get: install $1"
    if [[ $APT_UPDATED == 0 ]]; then
        "${SUDO[@]}" apt-get update -qq >&2
        APT_UPDATED=1
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >&2
}

need_wrk() {
    command -v wrk >/dev/null && return
    log "installing wrk (apt)"
    apt_install wrk
}

need_jq() {
    command -v jq >/dev/null && return
    log "installing jq (apt)"
    apt_install jq
}

need_oha() {
    command -v oha >/dev/null && return
    log "installing oha (cargo install oha --locked; a few minutes, once)"
    cargo install oha --locked >&2
}

# Microseconds since the epoch, without a fork.
now_us() {
    local t=$EPOCHREALTIME
    echo $((10#${t/./}))
}

# start_server NAME BIN OUT_PREFIX [ARGS...]: starts BIN in a new session (which later
# generations share: each leads a process group of its own, inside it) with
# `--listen 127.0.0.1:0` and ARGS; stdout goes to OUT_PREFIX.out, stderr to
# OUT_PREFIX.err. Waits for the `listening` line and sets SERVER_ADDR, SERVER_PID and
# SERVER_SID. TASKSET, if set, is a `taskset -c CPUS` prefix; LAUNCH, if set, another prefix
# that runs the rest as its child (chaos.sh: a subreaper that reaps orphaned generations).
start_server() {
    local name=$1 bin=$2 prefix=$3
    shift 3
    [[ -x $bin ]] || die "$bin not found; build the examples first"
    : >"$prefix.out"
    # setsid: a new session; its id is the server's pid. (No fork: a background job of a
    # non-interactive shell is not a group leader.)
    ${TASKSET:-} ${LAUNCH:-} setsid "$bin" --listen 127.0.0.1:0 "$@" >"$prefix.out" 2>"$prefix.err" </dev/null &
    local launched=$!
    local deadline=$(($(now_us) + 15000000)) line=""
    while :; do
        line=$(grep -m1 '^listening ' "$prefix.out" || true)
        [[ -n $line ]] && break
        if ! kill -0 "$launched" 2>/dev/null; then
            cat "$prefix.err" >&2
            die "$name exited before listening"
        fi
        (($(now_us) < deadline)) || die "$name did not print a listening line in 15 s"
        sleep 0.02
    done
    # listening <name> <addr> pid=<pid>
    read -r _ _ SERVER_ADDR SERVER_PID <<<"$line"
    SERVER_PID=${SERVER_PID#pid=}
    SERVER_SID=$(ps -o sid= -p "$SERVER_PID" | tr -d ' ')
    [[ -n $SERVER_SID && $SERVER_SID != 0 ]] || die "cannot find the session of $name"
    [[ $SERVER_SID == "$SERVER_PID" ]] || die "$name is not a session leader"
    SERVER_SIDS+=("$SERVER_SID")
}

# Live (non-zombie) members of session $1: every generation of a server, and whatever
# they started.
session_members() {
    ps -eo sid=,pid=,stat= | awk -v s="$1" '$1 == s && $3 !~ /^Z/ { print $2 }'
}

# stop_server SID: SIGTERM to every process of the session (every generation), SIGKILL to
# what is left after 5 s.
stop_server() {
    local sid=$1 i pid
    [[ -n $(session_members "$sid") ]] || return 0
    for pid in $(session_members "$sid"); do kill -TERM "$pid" 2>/dev/null || true; done
    for ((i = 0; i < 250; i++)); do
        [[ -n $(session_members "$sid") ]] || return 0
        sleep 0.02
    done
    log "session $sid still alive 5 s after SIGTERM: SIGKILL"
    for pid in $(session_members "$sid"); do kill -KILL "$pid" 2>/dev/null || true; done
}

cleanup_all() {
    local pid sid
    for pid in "${BG_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for sid in "${SERVER_SIDS[@]}"; do
        stop_server "$sid"
    done
    # Reap what this shell started.
    wait 2>/dev/null || true
}

# parse_wrk FILE: prints requests, the error counters, requests/s and latencies (ms) of a
# wrk run as key=value lines. wrk prints the error lines only when they are not zero.
parse_wrk() {
    awk '
        function ms(v,    n, u) {
            n = v + 0
            u = v
            sub(/^[0-9.]+/, "", u)
            if (u == "us") return n / 1000
            if (u == "ms") return n
            if (u == "s") return n * 1000
            if (u == "m") return n * 60000
            if (u == "h") return n * 3600000
            return n
        }
        BEGIN { req = ""; c = 0; r = 0; w = 0; t = 0; non2xx = 0; rps = ""; p50 = ""; p99 = ""; max = "" }
        /^ +Latency +[0-9]/ { max = ms($4) }
        /^ +50% / { p50 = ms($2) }
        /^ +99% / { p99 = ms($2) }
        / requests in / { req = $1 }
        /^ +Socket errors:/ {
            gsub(",", "")
            for (i = 1; i <= NF; i++) {
                if ($i == "connect") c = $(i + 1)
                if ($i == "read") r = $(i + 1)
                if ($i == "write") w = $(i + 1)
                if ($i == "timeout") t = $(i + 1)
            }
        }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /^Requests\/sec:/ { rps = $2 }
        END {
            printf "requests=%s\nconnect=%d\nread=%d\nwrite=%d\ntimeout=%d\nnon2xx=%d\n", req, c, r, w, t, non2xx
            printf "failures=%d\nrps=%s\np50=%s\np99=%s\nmax=%s\n", c + r + w + t + non2xx, rps, p50, p99, max
        }
    ' "$1"
}

# The 1-minute load average (how busy the machine was: the figures are only as good as that).
loadavg() {
    local a _
    read -r a _ </proc/loadavg 2>/dev/null || a="?"
    echo "$a"
}

# median of the arguments (numbers).
# rss_mib PID: the resident memory of PID (VmRSS) in MiB, one decimal; empty if it is gone.
rss_mib() {
    awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || true
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2
    }'
}

# ---- shared by drain-idle.sh, many-listeners.sh and restarts-rss.sh ------------------------

need_python3() {
    command -v python3 >/dev/null && return
    log "installing python3 (apt)"
    apt_install python3
}

# raise_nofile N: raises this shell's open-file limit (inherited by everything it starts) to
# at least N, up to the hard limit; dies if the hard limit is lower.
raise_nofile() {
    local want=$1 hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < want)); then
        die "need $want open files, the hard limit is $hard (raise it: ulimit -Hn as root, or limits.conf)"
    fi
    (($(ulimit -n) >= want)) || ulimit -n "$want"
}

# nap_init DIR: sets up nap_1ms, a 1 ms sleep without a fork (a read that times out on a
# FIFO nobody writes to) for polling loops that must not cost a fork per turn.
NAP_FD=""
nap_init() {
    rm -f "$1/.nap"
    mkfifo "$1/.nap"
    exec {NAP_FD}<>"$1/.nap"
    rm -f "$1/.nap"
}
nap_1ms() {
    read -r -t 0.001 -u "$NAP_FD" _ || true
}

# pid_in FILE: the pid a pid file names, or nothing.
pid_in() {
    local pid=""
    { read -r pid <"$1"; } 2>/dev/null || true
    echo "$pid"
}

# wait_pid_file PIDFILE SECS WHAT: waits until the pid file names $SERVER_PID (the server
# writes it once ready); dies after SECS, saying that WHAT did not write it. Polls every
# millisecond after nap_init (for the scripts that time the start), every 10 ms otherwise.
wait_pid_file() {
    local pidfile=$1 secs=$2 what=$3
    local deadline=$(($(now_us) + secs * 1000000))
    until [[ $(pid_in "$pidfile") == "$SERVER_PID" ]]; do
        (($(now_us) < deadline)) || die "$what did not write its pid file in $secs s"
        if [[ -n $NAP_FD ]]; then nap_1ms; else sleep 0.01; fi
    done
}

# wait_clients_ready FILE PID DEADLINE_US WHAT: waits until the client process PID
# (bench/takeover_clients.py or idle_clients.py) writes its `ready` line into FILE, every
# connection open; dies, with its FILE.err, if it exits first, or at DEADLINE_US (µs since
# the epoch, now_us).
wait_clients_ready() {
    local file=$1 pid=$2 deadline=$3 what=$4
    until grep -q '^ready ' "$file"; do
        kill -0 "$pid" 2>/dev/null || { cat "$file.err" >&2; die "$what exited"; }
        (($(now_us) < deadline)) || die "$what did not open their connections in time"
        sleep 0.05
    done
}

# proc_alive PID: the process exists and is not a zombie (no fork).
proc_alive() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# hup_and_wait PIDFILE TIMEOUT_S: SIGHUP to the pid the pid file names, then polls it every
# millisecond until it names another one (the new generation writes it once it is ready).
# Sets OLD_PID, NEW_PID, HUP_AT (µs since the epoch) and HANDOVER_US (empty if no new pid
# within TIMEOUT_S). Needs nap_init.
hup_and_wait() {
    local pidfile=$1 timeout_s=$2 cur="" now deadline
    OLD_PID=$(pid_in "$pidfile")
    NEW_PID=""
    HANDOVER_US=""
    [[ -n $OLD_PID ]] || die "the pid file $pidfile names no process"
    HUP_AT=${EPOCHREALTIME/./}
    deadline=$((HUP_AT + timeout_s * 1000000))
    kill -HUP "$OLD_PID" 2>/dev/null || die "cannot signal pid $OLD_PID"
    while :; do
        { read -r cur <"$pidfile"; } 2>/dev/null || cur=""
        now=${EPOCHREALTIME/./}
        if [[ -n $cur && $cur != "$OLD_PID" ]]; then
            NEW_PID=$cur
            HANDOVER_US=$((now - HUP_AT))
            return 0
        fi
        ((now < deadline)) || return 0
        nap_1ms
    done
}

# watch_exit PID TIMEOUT_S: call it before whatever ends PID. Starts a waiter that sleeps on
# PID's pidfd (python3's os.pidfd_open, Linux 5.3 and later) and notes when PID exits; the
# next wait_gone for PID then waits for that waiter instead of polling. A poll every
# millisecond is a bash loop on one of this machine's two CPUs: during a takeover of 10,000
# connections it took about 5 % of the samples, from the two processes being measured. The
# waiter's start-up happens here, before the event. Where there is no pidfd, wait_gone polls.
EXIT_WATCH_FOR=""
EXIT_WATCH_JOB=""
EXIT_WATCH_FILE=""
watch_exit() {
    EXIT_WATCH_FOR=$1
    EXIT_WATCH_FILE=$(mktemp "${TMPDIR:-/tmp}/endless-exit-watch.XXXXXX")
    python3 -c '
import os, select, sys, time
pid, timeout = int(sys.argv[1]), float(sys.argv[2])
try:
    fd = os.pidfd_open(pid)
except (AttributeError, OSError) as e:
    print("unsupported", e, flush=True)
    sys.exit()
print("watching", flush=True)
poll = select.poll()
poll.register(fd, select.POLLIN)
print(time.time_ns() // 1000 if poll.poll(timeout * 1000) else "timeout", flush=True)
' "$1" "$2" >"$EXIT_WATCH_FILE" 2>&1 &
    EXIT_WATCH_JOB=$!
    BG_PIDS+=("$EXIT_WATCH_JOB")
    local line="" deadline=$((${EPOCHREALTIME/./} + 10000000))
    until [[ -n $line ]]; do
        { read -r line <"$EXIT_WATCH_FILE"; } 2>/dev/null || line=""
        ((${EPOCHREALTIME/./} < deadline)) || die "the exit watcher for pid $1 did not start in 10 s"
        [[ -n $line ]] || nap_1ms
    done
    [[ $line == watching ]] || { log "no pidfd here ($line): waiting for pid $1 by polling"; EXIT_WATCH_FOR=""; }
}

# wait_gone PID TIMEOUT_S: waits until PID has exited (a zombie counts as gone): through the
# waiter of watch_exit PID if there is one, otherwise polling every millisecond. Sets
# GONE_AT (µs since the epoch, empty on a timeout). Needs nap_init.
wait_gone() {
    local pid=$1 deadline now
    if [[ -n $EXIT_WATCH_FOR && $EXIT_WATCH_FOR == "$pid" ]]; then
        EXIT_WATCH_FOR=""
        wait "$EXIT_WATCH_JOB" 2>/dev/null || true
        GONE_AT=$(tail -n 1 "$EXIT_WATCH_FILE")
        rm -f "$EXIT_WATCH_FILE"
        [[ $GONE_AT =~ ^[0-9]+$ ]] || GONE_AT=""
        return 0
    fi
    deadline=$((${EPOCHREALTIME/./} + $2 * 1000000))
    GONE_AT=""
    while proc_alive "$pid"; do
        now=${EPOCHREALTIME/./}
        ((now < deadline)) || return 0
        nap_1ms
    done
    GONE_AT=${EPOCHREALTIME/./}
}

# ms_or_dash US: microseconds as milliseconds with one decimal; "-" if empty.
ms_or_dash() {
    if [[ -n ${1:-} ]]; then awk -v v="$1" 'BEGIN { printf "%.1f", v / 1000 }'; else echo -; fi
}

# min / median / max of the arguments, as "min / median / max" (µs → ms, one decimal).
ms_summary() {
    (($#)) || { echo "-"; return; }
    local min max med
    min=$(printf '%s\n' "$@" | sort -g | head -1)
    max=$(printf '%s\n' "$@" | sort -g | tail -1)
    med=$(median "$@")
    awk -v a="$min" -v b="$med" -v c="$max" 'BEGIN { printf "%.1f / %.1f / %.1f", a / 1000, b / 1000, c / 1000 }'
}

# log_time FILE REGEX AFTER_US: when (µs since the epoch, tracing's timestamp) the first line
# of a server's log that matches REGEX, at or after AFTER_US, was written; nothing if none.
log_time() {
    python3 - "$ROOT/bench" "$@" <<'PY'
import re, sys
sys.path.insert(0, sys.argv[1])
from latency_client import log_events
path, pattern, after = sys.argv[2], re.compile(sys.argv[3]), int(sys.argv[4])
print(next((t for t, line in log_events(path) if t >= after and pattern.search(line)), ""))
PY
}
