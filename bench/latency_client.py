#!/usr/bin/env python3
"""Paced HTTP/1.1 load with per-request latencies, for bench/handover-vs-memory.sh
(standard library only).

    latency_client.py load ADDR --connections C --rate R --out FILE
    latency_client.py analyze --records FILE --log FILE --restarts FILE [--tail-ms MS]

`load`: C keep-alive connections (one thread each, blocking sockets) send `GET /` at R
requests/s in all, each connection on a fixed schedule (every C/R s, the connections
staggered). A request's latency runs from the time it was due, not from the time it was
written: a connection still waiting for the previous answer sends late, and that wait
counts (no coordinated omission). A response with `Connection: close` (a draining
generation) closes the connection; the next request opens a new one. Runs until SIGTERM or
SIGINT, then writes one line per request to FILE: `due_us end_us pid status`
(microseconds since the epoch; pid is the one the body names, `pid=<n>`; status 0 for a
request that failed: connect, reset, timeout, bad answer) and prints a summary line.

`analyze`: reads those records, the server's log (tracing's RFC 3339 timestamps, to the
microsecond) and the script's restarts file (one line per restart:
`hup_us old_pid new_pid pidfile_us steady_from_us`), and prints key=value lines:

- handover (log): `signal received` in the old generation → `ready pid=NEW` in the new
  one; spawn (log): `signal received` → `spawned the new generation pid=NEW` (the spawn
  call returned in the old generation: fork and exec with the current code);
- spawn window: from the SIGHUP (the script's clock, just before `kill`) to the spawn
  call's return in the old generation (`spawned the new generation`); its requests are
  those answered by the old generation and in flight at some moment of the window (due
  before its end, answered after its start);
- handover window: the same, from the SIGHUP to the new generation's `ready` + TAIL ms
  (the spawn and the new generation's start-up, which competes for the CPUs);
- steady window: from steady_from_us (the previous handover is over: old generation
  gone, the ballast resident) to 50 ms before the SIGHUP; requests due in it and answered
  by the same (old) generation.

Percentiles are pooled over every restart of the run (nearest rank).
"""

import argparse
import datetime
import re
import signal
import socket
import sys
import threading
import time


def load(args):
    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    request = f"GET / HTTP/1.1\r\nHost: {args.addr}\r\n\r\n".encode()
    stop = threading.Event()
    interval_ns = int(args.connections * 1e9 / args.rate)
    # Wall clock of a perf_counter reading, for the records.
    offset_ns = time.time_ns() - time.perf_counter_ns()
    start_ns = time.perf_counter_ns() + 50_000_000
    results = [[] for _ in range(args.connections)]

    def read_response(sock, buf):
        """(status, close, pid, rest of buf) of one response; raises on a bad one."""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a response")
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "connection" and v.strip().lower() == "close":
                close = True
        while len(buf) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside a body")
            buf += chunk
        body, buf = buf[:length], buf[length:]
        pid = 0
        if body.startswith(b"pid="):
            pid = int(body[4:].strip() or 0)
        return status, close, pid, buf

    def worker(i):
        out = results[i]
        sock = None
        buf = b""
        due = start_ns + i * interval_ns // args.connections
        while not stop.is_set():
            now = time.perf_counter_ns()
            if now < due:
                time.sleep((due - now) / 1e9)
            status, pid = 0, 0
            try:
                if sock is None:
                    sock = socket.create_connection((host, port), timeout=5)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    buf = b""
                sock.sendall(request)
                status, close, pid, buf = read_response(sock, buf)
                if close:
                    sock.close()
                    sock = None
            except (OSError, ValueError, IndexError):
                if sock is not None:
                    sock.close()
                sock = None
            end = time.perf_counter_ns()
            out.append(((due + offset_ns) // 1000, (end + offset_ns) // 1000, pid, status))
            due += interval_ns
        if sock is not None:
            sock.close()

    def on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.connections)]
    for t in threads:
        t.start()
    print("started", flush=True)
    while not stop.is_set():
        stop.wait(0.5)
    for t in threads:
        t.join(10)
    records = sorted(r for out in results for r in out)
    with open(args.out, "w") as f:
        for r in records:
            f.write("%d %d %d %d\n" % r)
    failed = sum(1 for r in records if r[3] != 200)
    print(f"requests {len(records)} failed {failed}", flush=True)


ANSI = re.compile(r"\x1b\[[0-9;]*m")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z")


def log_events(path):
    """(time_us, line) of every timestamped line of the server's log."""
    events = []
    with open(path, errors="replace") as f:
        for line in f:
            line = ANSI.sub("", line).rstrip("\n")
            m = STAMP.match(line)
            if not m:
                continue
            t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc)
            us = int(t.timestamp()) * 1_000_000 + t.microsecond
            events.append((us, line))
    return events


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    rank = max(1, -(-len(values) * p // 100))
    return values[int(rank) - 1]


def fmt_ms(us):
    return "-" if us is None else "%.2f" % (us / 1000)


def analyze(args):
    records = []
    with open(args.records) as f:
        for line in f:
            due, end, pid, status = map(int, line.split())
            records.append((due, end, pid, status))
    events = log_events(args.log)
    restarts = []
    with open(args.restarts) as f:
        for line in f:
            if line.strip():
                restarts.append(tuple(map(int, line.split())))
    tail_us = int(args.tail_ms * 1000)

    handovers, spawns, pidfiles = [], [], []
    spawn_lat, window_lat, steady_lat = [], [], []
    spawn_failed = steady_failed = 0
    missing = 0
    for hup, old, new, pidfile_us, steady_from in restarts:
        pidfiles.append(pidfile_us)
        sig = next((t for t, line in events if t >= hup - 1000 and "signal received" in line), None)
        spawned = next(
            (t for t, line in events if t >= hup - 1000 and re.search(r"spawned the new generation pid=%d\b" % new, line)),
            None,
        )
        ready = next((t for t, line in events if re.search(r"\bready pid=%d\b" % new, line)), None)
        if sig is None or ready is None:
            missing += 1
            continue
        handovers.append(ready - sig)
        if spawned is not None:
            spawns.append(spawned - sig)
        w0, w1 = hup, ready + tail_us
        c1 = spawned if spawned is not None else w1
        s0, s1 = steady_from, hup - 50_000
        for due, end, pid, status in records:
            if due > w1 and due > s1:
                break
            if status != 200:
                # A failed request in a window counts against it (none is expected).
                if due <= w1 and end >= w0:
                    spawn_failed += 1
                elif s0 <= due <= s1:
                    steady_failed += 1
                continue
            if pid != old:
                continue
            if due <= w1 and end >= w0:
                window_lat.append(end - due)
                if due <= c1:
                    spawn_lat.append(end - due)
            elif s0 <= due <= s1:
                steady_lat.append(end - due)

    def summary(values):
        if not values:
            return "-"
        s = sorted(values)
        return "%.1f / %.1f / %.1f" % (s[0] / 1000, s[len(s) // 2] / 1000, s[-1] / 1000)

    total = len(records)
    failed = sum(1 for r in records if r[3] != 200)
    steady_p99 = percentile(steady_lat, 99)
    spawn_p99 = percentile(spawn_lat, 99)
    ratio = "-"
    if steady_p99 and spawn_p99 is not None:
        ratio = "%.2f" % (spawn_p99 / steady_p99)
    print(f"restarts={len(restarts)}")
    print(f"missing={missing}")
    print(f"handover={summary(handovers)}")
    print("handover_median_us=%s" % (sorted(handovers)[len(handovers) // 2] if handovers else ""))
    print(f"spawn={summary(spawns)}")
    print(f"pidfile={summary(pidfiles)}")
    print(f"requests={total}")
    print(f"failed={failed}")
    print(f"steady_n={len(steady_lat)}")
    print(f"steady_p50={fmt_ms(percentile(steady_lat, 50))}")
    print(f"steady_p99={fmt_ms(steady_p99)}")
    print(f"steady_failed={steady_failed}")
    print(f"spawn_n={len(spawn_lat)}")
    print(f"spawn_p50={fmt_ms(percentile(spawn_lat, 50))}")
    print(f"spawn_p99={fmt_ms(spawn_p99)}")
    print(f"spawn_max={fmt_ms(max(spawn_lat) if spawn_lat else None)}")
    print(f"spawn_failed={spawn_failed}")
    print(f"window_n={len(window_lat)}")
    print(f"window_p99={fmt_ms(percentile(window_lat, 99))}")
    print(f"window_max={fmt_ms(max(window_lat) if window_lat else None)}")
    print(f"p99_ratio={ratio}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("load")
    p.add_argument("addr")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--rate", type=float, default=4000)
    p.add_argument("--out", required=True)
    p = sub.add_parser("analyze")
    p.add_argument("--records", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--restarts", required=True)
    p.add_argument("--tail-ms", type=float, default=5)
    args = parser.parse_args()
    if args.cmd == "load":
        load(args)
    else:
        analyze(args)


if __name__ == "__main__":
    sys.exit(main())
