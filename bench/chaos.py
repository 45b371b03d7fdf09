#!/usr/bin/env python3
"""Helpers of bench/chaos.sh (Python 3.11, standard library only). Three subcommands:

reap -- CMD...
    Runs CMD as a child of a process that is the subreaper of everything CMD starts
    (prctl PR_SET_CHILD_SUBREAPER): a generation orphaned by the death of its parent is
    reparented here and reaped when it exits, instead of by pid 1, which in a container
    may reap nothing. A zombie the server leaves is then the server's own (a child it did
    not wait for), which is what chaos.sh checks. Exits once it has no child left.

load --addr HOST:PORT --kills FILE --stop FILE --result FILE [--conns N] [--slow N]
        [--moves --server-log FILE]
    Keeps HTTP/1.1 keep-alive load on the server until the file --stop appears: --conns
    connections sending `GET /` back to back, --slow connections sending `GET /?sleep=MS`
    (so that a drain has requests in flight), and a probe that opens a fresh connection
    every 50 ms and sends one `GET /` (1 s to connect, 1 s for the answer). Each answer
    (`pid=N`) tells which process holds the connection. Every failed request is recorded
    with the pid of the connection (unknown before its first answer) and its time. At the
    end it reads the kills chaos.sh made (FILE: `TIME_US PID KIND` lines) and attributes
    each failure: to a killed pid if the connection was held by one, else (pid unknown) to
    a kill within the window before it; the others are unattributed. Writes a JSON result.
    With --moves (the server hands idle connections to its successor), the pid of a
    connection's last answer need not hold it any more: a failure on it is also attributed
    to a kill of a later generation of that pid (the lineage read from --server-log's
    "spawned the new generation" lines).

catch --log FILE --offset N --pid-file FILE --old PID --target new|old
    Sends SIGHUP to PID, follows the server's log from byte N for "spawned the new
    generation pid=M", and sends SIGKILL to M (`new`: the new generation before it is
    ready) or to PID (`old`: the predecessor while its successor starts) — only if the pid
    file still names PID, i.e. M is not ready yet. Prints `killed TIME_US PID KIND` or
    `missed REASON`.
"""

import argparse
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time


def now_us():
    return time.time_ns() // 1000


# ---- reap ---------------------------------------------------------------------------------


def reap(cmd):
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("chaos.py reap: prctl failed", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    subprocess.Popen(cmd, close_fds=False)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


# ---- load ---------------------------------------------------------------------------------

ANSWER = re.compile(rb"pid=(\d+)")


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, path):
        """Returns (pid, close); raises on any failure."""
        self.sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: chaos\r\n\r\n")
        while b"\r\n\r\n" not in self.buf:
            self._read()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ")
        if len(status) < 2 or status[1] != b"200":
            raise IOError("status " + lines[0].decode(errors="replace"))
        length = None
        close = False
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v.strip())
            elif k == b"connection" and v.strip().lower() == b"close":
                close = True
        if length is None:
            raise IOError("no content-length")
        while len(self.buf) < length:
            self._read()
        body, self.buf = self.buf[:length], self.buf[length:]
        m = ANSWER.search(body)
        if not m:
            raise IOError("unexpected body %r" % body[:40])
        return int(m.group(1)), close

    def _read(self):
        data = self.sock.recv(65536)
        if not data:
            raise IOError("closed by the server")
        self.buf += data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Load:
    def __init__(self, args):
        host, _, port = args.addr.rpartition(":")
        self.host, self.port = host, int(port)
        self.args = args
        self.lock = threading.Lock()
        self.requests = 0
        self.failures = []  # (time_us, pid or None, kind, error)
        self.stop = threading.Event()
        self.probe = {"sent": 0, "connect_failed": 0, "unanswered": 0}
        self.gap_refused_us = 0
        self.gap_unanswered_us = 0
        self.gap_refused_at = 0
        self.gap_unanswered_at = 0

    def worker(self, path, timeout, kind):
        conn, pid = None, None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn, pid = Conn(self.host, self.port, timeout), None
                pid, close = conn.request(path)
                with self.lock:
                    self.requests += 1
                if close:
                    conn.close()
                    conn = None
            except (OSError, ValueError) as e:
                with self.lock:
                    self.requests += 1
                    self.failures.append((now_us(), pid, kind, str(e)[:80]))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

    def prober(self):
        last_connect = last_answer = now_us()
        while not self.stop.is_set():
            t0 = now_us()
            self.probe["sent"] += 1
            conn = None
            try:
                conn = Conn(self.host, self.port, 1.0)
                last_connect = max(last_connect, now_us())
                conn.request(b"/")
                last_answer = now_us()
            except (OSError, ValueError) as e:
                key = "unanswered" if conn is not None else "connect_failed"
                self.probe[key] += 1
            finally:
                if conn is not None:
                    conn.close()
            # The longest time without a successful connect (answer), seen so far.
            t = now_us()
            if t - last_connect > self.gap_refused_us:
                self.gap_refused_us, self.gap_refused_at = t - last_connect, t
            if t - last_answer > self.gap_unanswered_us:
                self.gap_unanswered_us, self.gap_unanswered_at = t - last_answer, t
            delay = 0.05 - (now_us() - t0) / 1e6
            if delay > 0:
                self.stop.wait(delay)

    def run(self):
        threads = [threading.Thread(target=self.prober, daemon=True)]
        for _ in range(self.args.conns):
            threads.append(threading.Thread(target=self.worker, args=(b"/", 5.0, "fast"), daemon=True))
        slow = ("/?sleep=%d" % self.args.slow_ms).encode()
        for _ in range(self.args.slow):
            threads.append(threading.Thread(target=self.worker, args=(slow, 10.0, "slow"), daemon=True))
        for t in threads:
            t.start()
        with open(self.args.ready, "w") as f:
            f.write("ready\n")
        while not os.path.exists(self.args.stop):
            time.sleep(0.05)
        self.stop.set()
        for t in threads:
            t.join(15)
        return self.report()

    def report(self):
        kills = []
        try:
            with open(self.args.kills) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3:
                        kills.append((int(parts[0]), int(parts[1]), parts[2]))
        except FileNotFoundError:
            pass
        killed = {}
        for t, pid, kind in kills:
            killed.setdefault(pid, t)
        children = lineage(self.args.server_log) if self.args.moves else {}
        window = int(self.args.window * 1e6)
        attributed, unattributed = 0, []
        for t, pid, kind, err in self.failures:
            if pid is not None:
                ok = any(q in killed and killed[q] <= t + 100_000 for q in descendants(children, pid))
            else:
                ok = any(kt - 100_000 <= t <= kt + window for kt, _, _ in kills)
            if ok:
                attributed += 1
            else:
                unattributed.append({"time_us": t, "pid": pid, "conn": kind, "error": err})
        result = {
            "requests": self.requests,
            "failures": len(self.failures),
            "attributed": attributed,
            "unattributed": len(unattributed),
            "unattributed_list": unattributed[:20],
            "probes": self.probe,
            "gap_refused_ms": round(self.gap_refused_us / 1000, 1),
            "gap_refused_at_us": self.gap_refused_at,
            "gap_unanswered_ms": round(self.gap_unanswered_us / 1000, 1),
            "gap_unanswered_at_us": self.gap_unanswered_at,
        }
        with open(self.args.result, "w") as f:
            json.dump(result, f)
            f.write("\n")
        return 0


# ---- catch --------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def lineage(path):
    """The generations each process of the server's log spawned: {pid: [pid, ...]}."""
    children = {}
    with open(path, errors="replace") as f:
        for line in f:
            line = ANSI.sub("", line)
            m = re.search(r"pid=(\d+)\}.*spawned the new generation pid=(\d+)", line)
            if m:
                children.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    return children


def descendants(children, pid):
    """`pid` and every generation descended from it."""
    seen, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(children.get(p, []))
    return seen


def read_pid(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def catch(args):
    deadline = time.monotonic() + args.deadline
    os.kill(args.old, signal.SIGHUP)
    offset, pending, new = args.offset, "", None
    while new is None:
        with open(args.log, "rb") as f:
            f.seek(offset)
            data = f.read()
        offset += len(data)
        pending += data.decode(errors="replace")
        *lines, pending = pending.split("\n")
        for line in lines:
            line = ANSI.sub("", line)
            if "spawned the new generation" in line and "pid=%d" % args.old in line.split("spawned")[0]:
                m = re.search(r"spawned the new generation pid=(\d+)", line)
                if m:
                    new = int(m.group(1))
                    break
        if new is None:
            if time.monotonic() > deadline:
                print("missed no spawned line")
                return 0
            time.sleep(0.0003)
    if read_pid(args.pid_file) != str(args.old):
        print("missed pid %d was ready first" % new)
        return 0
    victim = new if args.target == "new" else args.old
    t = now_us()
    try:
        os.kill(victim, signal.SIGKILL)
    except ProcessLookupError:
        print("missed pid %d already gone" % victim)
        return 0
    kind = "kill-new" if args.target == "new" else "kill-old"
    print("killed %d %d %d %s" % (t, victim, new, kind))
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reap")
    r.add_argument("command", nargs=argparse.REMAINDER)
    lo = sub.add_parser("load")
    lo.add_argument("--addr", required=True)
    lo.add_argument("--kills", required=True)
    lo.add_argument("--stop", required=True)
    lo.add_argument("--ready", required=True)
    lo.add_argument("--result", required=True)
    lo.add_argument("--conns", type=int, default=4)
    lo.add_argument("--slow", type=int, default=2)
    lo.add_argument("--slow-ms", type=int, default=1000)
    lo.add_argument("--window", type=float, default=3.0)
    lo.add_argument("--moves", action="store_true")
    lo.add_argument("--server-log")
    c = sub.add_parser("catch")
    c.add_argument("--log", required=True)
    c.add_argument("--offset", type=int, required=True)
    c.add_argument("--pid-file", required=True)
    c.add_argument("--old", type=int, required=True)
    c.add_argument("--target", choices=["new", "old"], required=True)
    c.add_argument("--deadline", type=float, default=10.0)
    a = p.parse_args()
    if a.cmd == "reap":
        cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
        return reap(cmd)
    if a.cmd == "load":
        return Load(a).run()
    return catch(a)


if __name__ == "__main__":
    sys.exit(main())
