#!/usr/bin/env python3
"""Clients whose connections must survive a restart, for bench/takeover-scale.sh (standard
library only).

    takeover_clients.py --mode http|pingpong --addr HOST:PORT --connections N
        [--sources K] [--first I] --go-file FILE

Opens N connections to ADDR (from the loopback source addresses 127.0.0.I … 127.0.0.I+K-1
in turn, so that more connections than one source's ephemeral ports fit), and on each:

- http: sends `GET /` and reads the answer (`pid=<n>`), then leaves the connection idle
  (keep-alive);
- pingpong: sends the line `a` and reads `<pid> 1 a`.

Then prints `ready <n>` on standard output and waits for FILE to appear (the script writes
the new generation's pid there once the old one is gone). On each connection, the same
connection: http sends a second `GET /`, which must be answered 200 by the new pid;
pingpong sends `b`, which must be answered `<new pid> 2 b` (the session's counter moved
with it). Anything else (a close, a reset, another pid, a wrong counter) is a failure.
Prints one JSON object with the counts and exits 0, or 1 if anything failed.
"""

import argparse
import asyncio
import json
import os
import socket
import sys


class Stats:
    def __init__(self):
        self.opened = 0
        self.open_failed = 0
        self.first_ok = 0
        self.moved_ok = 0
        self.failed = 0
        self.errors = []

    def error(self, what):
        self.failed += 1
        if len(self.errors) < 10:
            self.errors.append(what)


async def http_get(reader, writer):
    """One `GET /` on a keep-alive connection: (status, pid)."""
    writer.write(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = (await reader.readexactly(length)).decode()
    pid = int(body.strip().split("=", 1)[1]) if body.startswith("pid=") else None
    return status, pid


async def ping(reader, writer, line):
    """One line of the pingpong protocol: (pid, count, echoed line)."""
    writer.write(line.encode() + b"\n")
    await writer.drain()
    answer = (await reader.readline()).decode().rstrip("\n")
    pid, count, echoed = answer.split(" ", 2)
    return int(pid), int(count), echoed


# Linux's IP_BIND_ADDRESS_NO_PORT (Python does not name it): a bind to (source, 0) then
# leaves the port to connect, which picks one for the whole 4-tuple in its own fast path. A
# bind that picks the port itself searches the source's bound ports, slower with each
# connection: 10,000 connections took 20-40 s to open, and hyper closes a keep-alive
# connection idle for 30 s (its default header read timeout), so the first ones opened
# were gone before the restart.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def connect(host, port, source):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if sys.platform.startswith("linux"):
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def client(i, args, stats, opened_all, go):
    host, port = args.addr.rsplit(":", 1)
    source = f"127.0.0.{args.first + i % args.sources}"
    try:
        reader, writer = await connect(host, int(port), source)
    except OSError as e:
        stats.open_failed += 1
        stats.error(f"open {i}: {e}")
        opened_all()
        return
    stats.opened += 1
    try:
        if args.mode == "http":
            status, first_pid = await http_get(reader, writer)
            ok = status == 200 and first_pid is not None
        else:
            first_pid, count, echoed = await ping(reader, writer, "a")
            ok = count == 1 and echoed == "a"
        if ok:
            stats.first_ok += 1
        else:
            stats.error(f"connection {i}: bad first answer")
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as e:
        stats.error(f"connection {i} first: {e!r}")
        opened_all()
        return
    opened_all()
    new_pid = await go
    try:
        if args.mode == "http":
            status, pid = await http_get(reader, writer)
            ok = status == 200 and pid == new_pid
            detail = f"status {status} pid {pid}"
        else:
            pid, count, echoed = await ping(reader, writer, "b")
            ok = pid == new_pid and count == 2 and echoed == "b"
            detail = f"pid {pid} count {count} line {echoed!r}"
        if ok:
            stats.moved_ok += 1
        else:
            stats.error(f"connection {i}: {detail} (new pid {new_pid})")
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as e:
        stats.error(f"connection {i} after the restart: {e!r}")
    finally:
        writer.close()


async def main(args):
    stats = Stats()
    loop = asyncio.get_running_loop()
    go = loop.create_future()
    remaining = [args.connections]
    all_open = asyncio.Event()

    def opened_all():
        remaining[0] -= 1
        if remaining[0] == 0:
            all_open.set()

    # Open in waves, so that the server's accept queue never overflows.
    tasks = []
    wave = 500
    for start in range(0, args.connections, wave):
        batch = [
            asyncio.create_task(client(i, args, stats, opened_all, go))
            for i in range(start, min(start + wave, args.connections))
        ]
        tasks += batch
        while remaining[0] > args.connections - start - len(batch) and not all_open.is_set():
            await asyncio.sleep(0.005)
    await all_open.wait()
    print(f"ready {stats.first_ok}", flush=True)
    while not os.path.exists(args.go_file):
        await asyncio.sleep(0.01)
    with open(args.go_file) as f:
        go.set_result(int(f.read().strip()))
    await asyncio.gather(*tasks)
    print(json.dumps(vars(stats)), flush=True)
    ok = stats.moved_ok == args.connections and stats.failed == 0
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["http", "pingpong"], required=True)
    p.add_argument("--addr", required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--sources", type=int, default=1)
    p.add_argument("--first", type=int, default=1)
    p.add_argument("--go-file", required=True)
    sys.exit(asyncio.run(main(p.parse_args())))
