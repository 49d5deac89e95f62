#!/usr/bin/env python3
"""Writes link/startup.order: the daemon's functions and data in the order its first second
touches them (startup on the shipped map with JSON logs and a state directory, as the systemd
unit runs it; one log-only anomaly; a health check).

build.rs hands the file to the linker (lld's --symbol-ordering-file), which lays those symbols
out first and together. The kernel maps a binary's pages into a process 64 KiB at a time around
each page it touches ("fault-around"), so code touched at startup but scattered over the whole
text keeps most of the binary resident; gathered in one place it keeps only itself (see
docs/performance.md, "Idle memory").

Regenerate it after a dependency upgrade or a large change to startup, from the release build:

    cargo build --release && python3 link/startup_order.py && cargo build --release

It runs the binary under valgrind's lackey tool (apt-get install valgrind), which records every
instruction and data address. Names that no longer exist are skipped by the linker, so a stale
file costs idle memory, never correctness.
"""

import argparse
import bisect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEADLINE_SECS = 180


def symbols(binary):
    """(address, size, nm's type letter, name) of every sized symbol the binary defines, sorted by address."""
    out = subprocess.run(
        ["nm", "--defined-only", "--print-size", binary],
        check=True, capture_output=True, text=True,
    ).stdout
    table = []
    for line in out.splitlines():
        fields = line.split()
        # Thread-local symbols' values are offsets into the TLS block, not addresses.
        if len(fields) == 4 and fields[2] in "tTwWrRdDbBvV" and int(fields[0], 16) >= 0x1000:
            table.append((int(fields[0], 16), int(fields[1], 16), fields[2], fields[3]))
    table.sort()
    return table


def listening_addr(log_path):
    try:
        with open(log_path) as log:
            for line in log:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("msg") == "listening":
                    return record["addr"]
    except FileNotFoundError:
        pass
    return None


def mapped_base(pid, binary):
    """The address the binary's first page is mapped at in process `pid`."""
    real = os.path.realpath(binary)
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == real and int(fields[2], 16) == 0:
                return int(fields[0].split("-")[0], 16)
    sys.exit(f"startup_order: {binary} is not mapped in process {pid}")


def trace(binary, config, scratch):
    """Runs the daemon under lackey; returns (trace file, load base)."""
    trace_path = os.path.join(scratch, "trace")
    log_path = os.path.join(scratch, "daemon.log")
    # As the systemd unit runs it: JSON logs, a state directory.
    state_dir = os.path.join(scratch, "state")
    os.mkdir(state_dir, 0o700)
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            ["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-file={trace_path}",
             binary, "run", "--listen", "127.0.0.1:0", "--log-format", "json",
             "--config", config, "--state-dir", state_dir],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        start = time.monotonic()
        addr = None
        while addr is None:
            if daemon.poll() is not None:
                sys.exit(f"startup_order: the daemon exited early; its log is {log_path}")
            if time.monotonic() - start > DEADLINE_SECS:
                sys.exit("startup_order: the daemon did not start listening in time")
            time.sleep(0.2)
            addr = listening_addr(log_path)
        base = mapped_base(daemon.pid, binary)
        body = json.dumps({"name": "nginx.web1.down"}).encode()
        request = urllib.request.Request(
            f"http://{addr}/anomaly", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=DEADLINE_SECS) as answer:
            answer.read()
        with urllib.request.urlopen(f"http://{addr}/health", timeout=DEADLINE_SECS) as answer:
            answer.read()
        time.sleep(1)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=DEADLINE_SECS)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    return trace_path, base


def touched_in_order(trace_path, base, table):
    """Names of the symbols the trace touched, each once, in the order first touched."""
    starts = [address for address, _, _, _ in table]
    seen = set()
    order = []
    with open(trace_path) as lines:
        for line in lines:
            fields = line.split()
            # Code run (I) and read-only data read (L); the dynamic loader's writes into
            # the relocated data are left out: it writes all of them, in any order.
            if len(fields) != 2 or fields[0] not in ("I", "L"):
                continue
            address = int(fields[1].split(",")[0], 16) - base
            at = bisect.bisect_right(starts, address) - 1
            if at < 0:
                continue
            start, size, kind, name = table[at]
            if fields[0] == "L" and kind not in "rR":
                continue
            if address < start + max(size, 1) and name not in seen:
                seen.add(name)
                order.append(name)
    return order


def check(order_path, binary, table):
    """Fails when the order file has gone stale against `binary` (renamed functions, upgraded
    dependencies): the names it holds that the binary no longer has are laid out nowhere."""
    with open(order_path) as order:
        names = [line.strip() for line in order if line.strip()]
    present = {name for _, _, _, name in table}
    found = sum(name in present for name in names)
    share = found / len(names) if names else 0.0
    print(f"startup_order: {found} of {len(names)} names in {binary} ({share:.0%})")
    if share < 0.9:
        sys.exit(
            "startup_order: link/startup.order is stale; regenerate it: cargo build --release "
            "&& python3 link/startup_order.py && cargo build --release")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/autohealer"))
    parser.add_argument("--config", default=os.path.join(ROOT, "reflex_map.yml"))
    parser.add_argument("--out", default=os.path.join(HERE, "startup.order"))
    parser.add_argument(
        "--check", action="store_true",
        help="do not trace: fail if fewer than 90%% of the file's names are in the binary")
    args = parser.parse_args()
    table = symbols(args.binary)
    if args.check:
        check(args.out, args.binary, table)
        return
    with tempfile.TemporaryDirectory(prefix="autohealer-order-") as scratch:
        trace_path, base = trace(args.binary, args.config, scratch)
        order = touched_in_order(trace_path, base, table)
    with open(args.out, "w") as out:
        out.write("".join(name + "\n" for name in order))
    print(f"startup_order: {len(order)} symbols written to {args.out}")


if __name__ == "__main__":
    main()
