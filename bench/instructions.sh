#!/usr/bin/env bash
# Instructions per request: where does endless' steady-state cost go?
#
# Runs `hello-hyper` (endless-hyper) and `plain-hyper` (the same handler on plain
# hyper-util) — with `--runtime smol`, `hello-smol` and `plain-hyper-smol`, the same on
# smol (plain hyper through smol-hyper's adapter) — under valgrind's callgrind, each twice in a fresh process: once for SMALL and
# once for LARGE requests from oha (16 keep-alive connections). The difference of the two
# totals divided by LARGE - SMALL is the user-space instructions per request, with start-up
# and shutdown cancelled out. Instruction counts do not depend on what else the machine is
# doing, so the ratio plain/endless is steady where throughput (bench/throughput.sh) is
# noisy; system calls are not counted (they are the same per request for both servers,
# `strace -c` shows). Counts do depend a little on how the client's requests fall into
# reads and wakes, which a busy machine changes (±1.5% seen between runs): each round
# measures both servers one after the other, and the ratio is taken per round; with
# --rounds N the median round is the figure. Prints a table, and the functions whose share
# per request differs the most in the last round (exclusive cost; inlining differs
# between the two binaries, so read it as a hint, not an account).
#
#   bench/instructions.sh [--runtime tokio|smol] [--rounds N] [--small N] [--large N] [--top N] [--out DIR] [--no-build]
#
# Installs valgrind (apt) and oha (cargo install) if missing. Loopback only; ends every
# process it starts.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init

RUNTIME=tokio
ROUNDS=1
SMALL=5000
LARGE=20000
TOP=15
OUT=""
BUILD=1
while (($#)); do
    case $1 in
        --no-build) BUILD=0; shift; continue ;;
        -h | --help) usage ;;
    esac
    (($# >= 2)) || die "$1 needs a value"
    case $1 in
        --runtime) RUNTIME=$2 ;;
        --rounds) ROUNDS=$2 ;;
        --small) SMALL=$2 ;;
        --large) LARGE=$2 ;;
        --top) TOP=$2 ;;
        --out) OUT=$2 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift 2
done
for v in ROUNDS SMALL LARGE TOP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v,,} takes a whole number"
done
((LARGE > SMALL)) || die "--large must be more than --small"
((ROUNDS >= 1)) || die "--rounds must be at least 1"
case $RUNTIME in
    tokio) PLAIN=plain-hyper ENDLESS=hello-hyper ;;
    smol) PLAIN=plain-hyper-smol ENDLESS=hello-smol ;;
    *) die "--runtime is tokio or smol" ;;
esac

command -v valgrind >/dev/null || { log "installing valgrind (apt)"; apt_install valgrind; }
need_oha
[[ -n $OUT ]] || OUT=$(mktemp -d /tmp/endless-instructions.XXXXXX)
mkdir -p "$OUT"

# shellcheck disable=SC2317 # run by the trap
cleanup() {
    trap - EXIT INT TERM
    cleanup_all
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $BUILD == 1 ]] && build_examples

# measure SERVER N: runs SERVER under callgrind for N requests; prints its total Ir.
measure() {
    local server=$1 n=$2 tag="$OUT/$1-$2"
    # start_server puts `--listen 127.0.0.1:0` right after the program: a wrapper makes the
    # program valgrind with its options.
    cat >"$tag.sh" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$tag.callgrind $BIN_DIR/$server "\$@"
WRAP
    chmod +x "$tag.sh"
    start_server "$server" "$tag.sh" "$tag"
    oha --no-tui -n "$n" -c 16 "http://$SERVER_ADDR/" >"$tag.oha" 2>&1
    grep -Eq 'Success rate:[[:space:]]*100' "$tag.oha" || die "$server: requests failed ($tag.oha)"
    stop_server "$SERVER_SID"
    awk '/^(summary|totals):/ { print $2; exit }' "$tag.callgrind"
}

declare -A PER_REQUEST
ROWS=()
for ((round = 1; round <= ROUNDS; round++)); do
    for server in "$PLAIN" "$ENDLESS"; do
        log "round $round/$ROUNDS, $server: $SMALL then $LARGE requests under callgrind"
        small=$(measure "$server" "$SMALL")
        large=$(measure "$server" "$LARGE")
        PER_REQUEST[$server]=$(((large - small) / (LARGE - SMALL)))
    done
    plain=${PER_REQUEST[$PLAIN]}
    endless=${PER_REQUEST[$ENDLESS]}
    ROWS+=("$(awk -v r="$round" -v p="$plain" -v e="$endless" \
        'BEGIN { printf "%-6s %16d %12d %8.3f %+9d", r, p, e, p / e, e - p }')")
done

printf '\ninstructions per request\n%-6s %16s %12s %8s %9s\n' round "$PLAIN" "$ENDLESS" ratio more
printf '%s\n' "${ROWS[@]}"
printf '%s\n' "${ROWS[@]}" | awk '{ print $4 }' | sort -g |
    awk '{ r[NR] = $1 } END { m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
          printf "ratio plain/endless: median %.3f of %d round(s), lowest %.3f, highest %.3f\n", m, NR, r[1], r[NR] }'

# The functions whose exclusive cost per request differs the most.
per_function() {
    callgrind_annotate --threshold=100 "$1" 2>/dev/null |
        awk '/^ *[0-9,]+ \(/ { n = $1; gsub(",", "", n); f = $0
             sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "", f); sub(/ \[[^]]*\]$/, "", f)
             print n "\t" f }'
}
for server in "$PLAIN" "$ENDLESS"; do
    for n in "$SMALL" "$LARGE"; do
        per_function "$OUT/$server-$n.callgrind" >"$OUT/$server-$n.functions"
    done
done
printf '\nper request (exclusive), %s minus %s, the %s largest:\n' "$ENDLESS" "$PLAIN" "$TOP"
awk -F'\t' -v small="$SMALL" -v large="$LARGE" '
    FNR == 1 { file++ }
    { v[$2, file] = $1; names[$2] = 1 }
    END {
        d = large - small
        for (f in names) {
            p = (v[f, 2] - v[f, 1]) / d; e = (v[f, 4] - v[f, 3]) / d
            if (f != "PROGRAM TOTALS") printf "%8.1f\t%s\n", e - p, substr(f, 1, 140)
        }
    }' "$OUT/$PLAIN-$SMALL.functions" "$OUT/$PLAIN-$LARGE.functions" \
    "$OUT/$ENDLESS-$SMALL.functions" "$OUT/$ENDLESS-$LARGE.functions" |
    sort -t$'\t' -k1,1 -gr | sed -n "1,${TOP}p" # reads all: no SIGPIPE for sort under pipefail
log "callgrind files in $OUT"
