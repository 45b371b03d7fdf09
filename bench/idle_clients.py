#!/usr/bin/env python3
"""Idle keep-alive HTTP/1.1 clients for bench/drain-idle.sh (standard library only).

Opens N connections to ADDR, sends one `GET /` on each and reads the answer (`pid=<n>`),
then leaves them idle and reports `ready <n>` on standard output. Once the file HUP_FILE
appears (the script writes the time of its SIGHUP there, microseconds since the epoch):

- every connection but the sample just waits: the server must close it cleanly (EOF, no
  reset, no bytes) — a draining endless server does so once it has stayed idle for the
  grace period (2 s by default);
- the sample (every connection whose index is a multiple of N / SAMPLE) sends a second
  request DELAY seconds after the SIGHUP, within the grace: it must be answered (200, by the
  old pid) with `Connection: close`, and then closed cleanly.

Anything else is a failure. Prints one JSON object with the counts and the close times
(microseconds since the epoch) and exits 0, or 1 if anything failed.
"""

import argparse
import asyncio
import json
import os
import sys
import time


def now_us():
    return time.time_ns() // 1000


class Stats:
    def __init__(self):
        self.opened = 0
        self.open_failed = 0
        self.closed_clean = 0
        self.reset = 0
        self.unexpected_data = 0
        self.sample_ok = 0
        self.sample_failed = 0
        self.still_open = 0
        self.close_times = []
        self.errors = []
        self.first_pid = None

    def error(self, msg):
        if len(self.errors) < 5:
            self.errors.append(msg)


async def request(reader, writer, host):
    """One GET /: (status, headers dict, body)."""
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def pid_of(body):
    text = body.decode("latin-1")
    if text.startswith("pid=") and text.endswith("\n"):
        return int(text[4:-1])
    return None


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--sample", type=int, default=100)
    p.add_argument("--delay", type=float, default=0.3)
    p.add_argument("--hup-file", required=True)
    p.add_argument("--timeout", type=float, default=120)
    a = p.parse_args()
    host, port = a.addr.rsplit(":", 1)
    stats = Stats()
    every = max(1, a.connections // a.sample) if a.sample else 0
    hup = asyncio.Event()
    hup_at = [None]
    opening = asyncio.Semaphore(256)
    conns = [None] * a.connections

    async def open_one(i):
        async with opening:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                status, _, body = await request(reader, writer, a.addr)
                pid = pid_of(body)
                if status != 200 or pid is None:
                    raise RuntimeError(f"status {status}, body {body!r}")
                stats.first_pid = stats.first_pid or pid
                stats.opened += 1
                conns[i] = (reader, writer, pid)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                stats.open_failed += 1
                stats.error(f"open {i}: {e!r}")

    await asyncio.gather(*(open_one(i) for i in range(a.connections)))
    print(f"ready {stats.opened}", flush=True)

    async def watch_hup():
        while not os.path.exists(a.hup_file):
            await asyncio.sleep(0.005)
        with open(a.hup_file) as f:
            hup_at[0] = int(f.read().strip() or "0")
        hup.set()

    async def idle(i, reader, writer, pid):
        try:
            if every and i % every == 0:
                await hup.wait()
                await asyncio.sleep(max(0.0, hup_at[0] / 1e6 + a.delay - time.time()))
                try:
                    status, headers, body = await request(reader, writer, a.addr)
                except Exception as e:  # noqa: BLE001
                    stats.sample_failed += 1
                    stats.error(f"sample {i}: request during the drain failed: {e!r}")
                    return
                if status != 200 or pid_of(body) != pid or headers.get("connection", "").lower() != "close":
                    stats.sample_failed += 1
                    stats.error(f"sample {i}: status {status}, body {body!r}, headers {headers}")
                    return
                stats.sample_ok += 1
            data = await reader.read(1)
            if data:
                stats.unexpected_data += 1
                stats.error(f"conn {i}: unexpected bytes {data!r}")
            else:
                stats.closed_clean += 1
                stats.close_times.append(now_us())
        except ConnectionResetError:
            stats.reset += 1
            stats.error(f"conn {i}: reset")
        finally:
            writer.close()

    watcher = asyncio.create_task(watch_hup())
    tasks = [asyncio.create_task(idle(i, *c)) for i, c in enumerate(conns) if c]
    done, pending = await asyncio.wait(tasks, timeout=a.timeout) if tasks else (set(), set())
    stats.still_open = len(pending)
    for t in pending:
        t.cancel()
    watcher.cancel()
    times = sorted(stats.close_times)
    result = {
        "connections": a.connections,
        "opened": stats.opened,
        "open_failed": stats.open_failed,
        "closed_clean": stats.closed_clean,
        "reset": stats.reset,
        "unexpected_data": stats.unexpected_data,
        "still_open": stats.still_open,
        "sample": stats.sample_ok + stats.sample_failed,
        "sample_ok": stats.sample_ok,
        "sample_failed": stats.sample_failed,
        "hup_at": hup_at[0],
        "first_close": times[0] if times else None,
        "last_close": times[-1] if times else None,
        "first_pid": stats.first_pid,
        "errors": stats.errors,
    }
    print(json.dumps(result), flush=True)
    failed = (stats.open_failed or stats.reset or stats.unexpected_data or stats.still_open
              or stats.sample_failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
