#!/usr/bin/env python3
"""The newcomer check: the README's quickstarts, exactly as written, build and restart.

1. Every quickstart in README.md, and the example each crate's README opens with, is,
   verbatim, a binary of this crate (src/bin/*.rs): no README can drift from code that
   compiles and restarts.
2. The crate builds (`--locked`) against the workspace's crates by path, as a user's crate
   does against crates.io.
3. Each server is started, answers, is restarted once with SIGHUP while a client holds an
   idle connection to it, and the new generation answers; the old generation must be gone
   within 10 s (the drain deadline is 60 s: a quickstart that does not close idle
   connections fails here), and the idle client must see its connection closed.

The quickstarts listen on the fixed port 8080 and write /run/myserver.pid, as the README
says; so the servers run in fresh network, mount and pid namespaces (a private loopback,
a private /run, and this script as their init, which reaps every generation). Run as root,
or as a user allowed user namespaces: `python3 examples/adopt/check.py`.
"""

import difflib
import os
import re
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
PORT = 8080
# Quickstart section of the README -> binary; and how to talk to it.
QUICKSTARTS = [
    ("tokio", "quickstart-tokio", "echo"),
    ("hyper", "quickstart-hyper", "http"),
    ("axum", "quickstart-axum", "http"),
    ("smol", "quickstart-smol", "echo"),
    ("axum on smol", "quickstart-axum-smol", "http"),
    ("async-std", "quickstart-async-std", "echo"),
]
OLD_GONE_WITHIN = 10.0


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


# Each crate's README opens with the quickstart of its runtime.
CRATE_READMES = [
    ("endless-tokio/README.md", "quickstart-tokio"),
    ("endless-smol/README.md", "quickstart-smol"),
    ("endless-hyper/README.md", "quickstart-hyper"),
]


def same_or_fail(block, where, binary):
    path = os.path.join(HERE, "src", "bin", binary + ".rs")
    ours = open(path).read()
    if block != ours:
        diff = difflib.unified_diff(
            block.splitlines(True), ours.splitlines(True), where, os.path.relpath(path, ROOT)
        )
        fail(f"{where} drifted from the quickstart {binary}:\n" + "".join(diff))
    return ours


def check_verbatim():
    for readme, binary in CRATE_READMES:
        text = open(os.path.join(ROOT, readme)).read()
        found = re.search(r"^```rust[^\n]*\n(.*?)^```", text, re.S | re.M)
        if not found:
            fail(f"{readme} has no rust block")
        same_or_fail(found.group(1), readme, binary)
    readme = open(os.path.join(ROOT, "README.md")).read()
    for section, binary, _ in QUICKSTARTS:
        found = re.search(
            r"^## Quickstart \(%s\)\n.*?^```rust[^\n]*\n(.*?)^```" % re.escape(section),
            readme,
            re.S | re.M,
        )
        if not found:
            fail(f"README.md has no rust block under '## Quickstart ({section})'")
        ours = same_or_fail(found.group(1), f"README.md ({section})", binary)
        lines = [
            l for l in ours.splitlines() if l.strip() and not l.strip().startswith("//")
        ]
        print(f"quickstart ({section}): {len(lines)} lines of code, as in README.md")


def build():
    manifest = os.path.join(HERE, "Cargo.toml")
    subprocess.run(["cargo", "fmt", "--check", "--manifest-path", manifest], check=True)
    built = subprocess.run(
        ["cargo", "build", "--locked", "--manifest-path", manifest, "--target-dir", TARGET],
        stderr=subprocess.PIPE,
        text=True,
    )
    sys.stderr.write(built.stderr)
    if built.returncode != 0:
        fail("the quickstarts do not build")
    # A newcomer who copies a quickstart gets no warning either.
    if re.search(r"^warning", built.stderr, re.M):
        fail("the quickstarts build with warnings")


def deadline_loop(seconds, what):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield
        time.sleep(0.01)
    fail(f"timed out after {seconds} s: {what}")


def connect():
    for _ in deadline_loop(30, f"the server to listen on port {PORT}"):
        try:
            return socket.create_connection(("127.0.0.1", PORT), timeout=10)
        except OSError:
            pass


def echo(conn, text):
    conn.sendall(text.encode() + b"\n")
    line = conn.makefile("rb").readline().decode()
    pid, _, echoed = line.rstrip("\n").partition(" ")
    if echoed != text:
        fail(f"echo answered {line!r} to {text!r}")
    return int(pid)


def http_get(conn):
    conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            fail(f"the connection closed before a response: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        fail(f"unexpected response {head!r}")
    return head


def closed_by_server(conn, seconds):
    """Whether the server closes `conn` within `seconds`."""
    conn.settimeout(seconds)
    try:
        while True:
            data = conn.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def pids_of(exe):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/exe") == exe:
                found.append(int(entry))
        except OSError:
            pass
    return found


def reap(pid, seconds, what):
    """Waits for `pid` (a child, or an orphan re-parented to this init) to exit."""
    for _ in deadline_loop(seconds, what):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done == pid:
            return os.waitstatus_to_exitcode(status)


def run_one(section, binary, protocol):
    exe = os.path.join(TARGET, "debug", binary)
    log = open(os.path.join(TARGET, f"adopt-{binary}.log"), "wb")
    server = subprocess.Popen([exe], stdout=log, stderr=subprocess.STDOUT)
    try:
        idle = connect()
        if protocol == "echo":
            if echo(idle, "hello") != server.pid:
                fail(f"{binary}: answered by another pid")
        else:
            http_get(idle)

        # Restart; the idle connection stays open on the old generation.
        sent = time.monotonic()
        os.kill(server.pid, signal.SIGHUP)
        code = reap(server.pid, OLD_GONE_WITHIN, f"{binary}: the old generation to exit")
        took = time.monotonic() - sent
        if code != 0:
            fail(f"{binary}: the old generation exited with {code}")
        if not closed_by_server(idle, 5):
            fail(f"{binary}: the idle connection is still open after the old generation left")

        # The new generation serves.
        successors = [p for p in pids_of(exe) if p != server.pid]
        if len(successors) != 1:
            fail(f"{binary}: expected one new generation, found {successors}")
        new = successors[0]
        fresh = connect()
        if protocol == "echo":
            if echo(fresh, "again") != new:
                fail(f"{binary}: the new connection was not answered by pid {new}")
        else:
            http_get(fresh)
        fresh.close()
        os.kill(new, signal.SIGTERM)
        code = reap(new, 30, f"{binary}: the new generation to stop")
        if code not in (0, None):
            fail(f"{binary}: the new generation exited with {code}")
        print(
            f"quickstart ({section}): pid {server.pid} -> {new}, "
            f"old generation gone {took * 1000:.0f} ms after SIGHUP with an idle client"
        )
    except SystemExit:
        log.flush()
        sys.stderr.write(open(log.name, errors="replace").read())
        raise
    finally:
        for pid in pids_of(exe):
            os.kill(pid, signal.SIGKILL)


def in_namespaces():
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for section, binary, protocol in QUICKSTARTS:
        run_one(section, binary, protocol)
    print("PASS: every quickstart builds as written and restarts without waiting for its idle clients")


def main():
    if os.environ.get("ENDLESS_ADOPT_INSIDE") == "1":
        in_namespaces()
        return
    check_verbatim()
    build()
    unshare = ["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc"]
    if os.geteuid() != 0:
        unshare.append("--map-root-user")
    env = dict(os.environ, ENDLESS_ADOPT_INSIDE="1", CARGO_TARGET_DIR=TARGET)
    sys.exit(subprocess.run(unshare + [sys.executable, os.path.abspath(__file__)], env=env).returncode)


if __name__ == "__main__":
    main()
