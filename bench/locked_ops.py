#!/usr/bin/env python3
"""Counts the locked read-modify-write instructions a server executes per request, from a
callgrind profile taken with per-instruction counts (docs/performance.md, item 27).

callgrind counts a `lock xadd` or an `xchg` with memory as one instruction, but on x86 each one
drains the store buffer and costs ~20 cycles: an `Arc` clone and its drop, a mutex's lock and
unlock, a SeqCst store. They are invisible in an instruction count and plain in this one.

    valgrind --tool=callgrind --dump-instr=yes --dump-line=no --callgrind-out-file=OUT \\
        target/release/autohealer run ...          # then load it, e.g. wrk -d10s, and stop it
    python3 bench/locked_ops.py OUT REQUESTS [--top N]

REQUESTS is how many requests the profiled run answered (wrk prints it). It prints the locked
instructions per request, then the busiest sites: the function the instruction was compiled
into and, for the project's own code, the chain of `src/` lines it was inlined from.
"""

import argparse
import collections
import re
import subprocess

LOCKED = re.compile(r"^(lock\s|xchg\s.*\()")


def self_counts(profile):
    """{(object, address): instructions executed there}, from a --dump-instr=yes profile."""
    names, counts = {}, collections.Counter()
    current, last, after_call = None, 0, False
    with open(profile) as lines:
        for line in lines:
            line = line.rstrip("\n")
            named = re.match(r"c?ob=\((\d+)\)(?: (.*))?$", line)
            if named:
                if named.group(2):
                    names[named.group(1)] = named.group(2)
                if line.startswith("ob="):
                    current = names.get(named.group(1))
                continue
            if line.startswith("calls="):
                # The next cost line is the call's inclusive cost, not this instruction's own.
                after_call = True
                continue
            if not line or line[0] not in "0123456789+-*":
                continue
            fields = line.split()
            position = fields[0]
            if position.startswith("0x"):
                address = int(position, 16)
            elif position[0] in "+-":
                step = int(position[1:], 0)
                address = last + step if position[0] == "+" else last - step
            elif position == "*":
                address = last
            else:
                continue
            last = address
            if after_call:
                after_call = False
                continue
            if len(fields) > 1:
                counts[(current, address)] += int(fields[1])
    return counts


def locked_sites(binary, executed):
    """(address, instruction, function) of each locked instruction of `binary` that ran."""
    listing = subprocess.run(
        ["objdump", "-d", "-C", "--no-show-raw-insn", binary],
        check=True, capture_output=True, text=True,
    ).stdout
    function = ""
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            continue
        instruction = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
        if instruction and LOCKED.match(instruction.group(2)):
            address = int(instruction.group(1), 16)
            if executed.get(address):
                yield address, instruction.group(2).split("#")[0].strip(), function


def project_lines(binary, address):
    """The `src/` lines `address` was inlined from, innermost first."""
    frames = subprocess.run(
        ["addr2line", "-i", "-e", binary, hex(address)],
        capture_output=True, text=True,
    ).stdout.split()
    return [frame.split("/src/", 1)[1] for frame in frames if "/src/" in frame and "/.cargo/" not in frame and "/rustc/" not in frame]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("requests", type=int)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    counts = self_counts(args.profile)
    by_object = collections.defaultdict(dict)
    for (obj, address), count in counts.items():
        by_object[obj][address] = count
    sites = []
    for obj, executed in by_object.items():
        if obj and obj.startswith("/"):
            for address, instruction, function in locked_sites(obj, executed):
                sites.append((executed[address] / args.requests, obj, address, instruction, function))
    sites.sort(reverse=True)
    print(f"locked instructions per request: {sum(site[0] for site in sites):.1f}")
    for per_request, obj, address, instruction, function in sites[: args.top]:
        where = " < ".join(project_lines(obj, address)[:4]) or function[:90]
        print(f"{per_request:6.2f}  {instruction[:28]:28}  {where}")


if __name__ == "__main__":
    main()
