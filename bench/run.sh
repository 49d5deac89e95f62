#!/usr/bin/env bash
# AutoHealer's benchmarks in one command (see docs/performance.md):
#   1. installs wrk (Debian package) when it is missing;
#   2. runs the criterion micro-benchmarks (`cargo bench --bench micro`) with short timings;
#   3. builds the daemon (`cargo build --release`) and runs the system benchmark
#      (`cargo bench --bench system`) on that build, which
#      prints a table and writes bench/results/<date>.md, micro figures included.
# It never fails because a goal was missed; it fails only if the harness itself cannot run.
# The soak (minutes of mixed load, memory sampled, every answer checked against the audit log)
# runs only when named: BENCH_ONLY=soak bench/run.sh (BENCH_SOAK_SECS=20 for a quick check).
# Environment (all optional): BENCH_SECS, BENCH_ROUNDS, BENCH_ONLY, BENCH_NOTE, ... (listed in
# docs/performance.md); BENCH_MICRO_SECS and BENCH_MICRO_WARMUP_SECS for criterion.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
    echo "== installing wrk"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq wrk
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get update -qq && sudo apt-get install -y -qq wrk
    else
        echo "bench/run.sh: wrk is missing and cannot be installed without root: apt-get install wrk" >&2
        exit 1
    fi
fi

# Only criterion results written from now on go into this run's results file.
BENCH_SINCE=$(date +%s)
export BENCH_SINCE

only=",${BENCH_ONLY:-micro},"
if [[ "$only" == *,micro,* ]]; then
    echo "== cargo bench --bench micro"
    cargo bench --bench micro
fi
# The daemon measured is the one users run: `cargo bench` builds the binary with the
# dev-dependencies' features too (tokio's test-util clock, ~3% slower per request), and writes
# it where `cargo build --release` writes its own, so the release build is copied aside first.
if [ -z "${BENCH_ONLY:-}" ] || [[ "$only" == *,throughput,* || "$only" == *,reload,* || "$only" == *,scale,* || "$only" == *,soak,* || "$only" == *,state,* ]]; then
    echo "== cargo build --release (the daemon measured)"
    cargo build --release
    target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
    mkdir -p "$target_dir/bench-daemon"
    cp "$target_dir/release/autohealer" "$target_dir/bench-daemon/autohealer"
    export BENCH_DAEMON="${BENCH_DAEMON:-$target_dir/bench-daemon/autohealer}"
fi
echo "== cargo bench --bench system"
cargo bench --bench system
