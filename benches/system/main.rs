//! The system benchmark of SPEC §7: the release daemon, driven over loopback by wrk, against a
//! reference measured in the same run. Run it with `bench/run.sh` (which installs wrk and also
//! runs the micro-benchmarks) or `cargo bench --bench system`.
//!
//! Sections (`BENCH_ONLY=throughput,reload,scale,state,flood,micro` picks some):
//! - throughput and memory: `POST /anomaly` to a log-only workflow with JSON logs written to a
//!   file, against a bare hyper server (`reference.rs`), pinned and then unpinned; resident
//!   memory idle and under load.
//! - reload (`reload.rs`): save → first request that sees the new map, in place, by rename and
//!   by a ConfigMap's symlink swap, each against an in-process notify watcher's save → the
//!   event that ends it; in-place saves paused mid-file; then the map replaced every 10 ms
//!   under load.
//! - scale: a map of 100,000 exact names and 1,000 patterns, its load time against a plain
//!   YAML parse of the same file, and its dispatch rate against a one-reflex map.
//! - state: `--state-dir` and the other brakes of SPEC §9 (verify, a budget, silences) against
//!   the same daemon without them (`state.rs`).
//! - flood: peak resident memory under 30 s of names never sent before (`flood.rs`).
//! - micro: criterion's latest results, if `cargo bench --bench micro` ran first.
//! - soak, only when `BENCH_ONLY` names it: minutes of mixed load with memory sampled and every
//!   answer checked against the audit log (`soak.rs`).
//!
//! It never fails on a missed goal: it prints a table and writes `bench/results/<date>.md`.
//! Every knob is an environment variable (see `Settings`), so a trial run can be short.

mod client;
mod flood;
mod load;
mod procs;
mod reference;
mod reload;
mod report;
mod soak;
mod state;

#[path = "../support/mapgen.rs"]
mod mapgen;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};

use client::Client;
use load::{median, LoadRun, Wrk};
use procs::{Pinning, Server};
use report::{ms, ratio, Machine, Report, Verdict};

/// Run this binary with this flag to get the reference server instead of the benchmark.
const REFERENCE_FLAG: &str = "--reference-server";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(REFERENCE_FLAG) {
        return reference::main();
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and must not spend
    // minutes driving load.
    if !args.iter().any(|a| a == "--bench") {
        println!("system benchmark: run it with `cargo bench --bench system` or bench/run.sh");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("system benchmark failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the environment asks for; every duration is short by default so a run takes minutes.
#[derive(Debug, Clone)]
struct Settings {
    /// `BENCH_SECS`: length of each measured wrk run.
    secs: f64,
    /// `BENCH_WARMUP_SECS`: one unmeasured run per server first.
    warmup_secs: f64,
    /// `BENCH_ROUNDS`: measured runs per server, alternating daemon and reference.
    rounds: usize,
    /// `BENCH_CONNECTIONS` and `BENCH_WRK_THREADS`.
    connections: usize,
    wrk_threads: usize,
    /// `BENCH_RELOADS`: timed saves of each style (in place, rename, symlink swap).
    reloads: usize,
    /// `BENCH_RELOAD_LOAD_SECS`: length of the run with the map replaced every 10 ms.
    reload_load_secs: f64,
    /// `BENCH_SCALE_EXACT`, `BENCH_SCALE_PATTERNS`: size of the scale map.
    scale_exact: usize,
    scale_patterns: usize,
    /// `BENCH_LOAD_REPS`: in-process loads of the scale map.
    load_reps: usize,
    /// `BENCH_IDLE_SETTLE_MS`: wait before reading idle memory.
    idle_settle: Duration,
    /// `BENCH_PIN` (default 1): pin server and client to different CPUs.
    pin: bool,
    /// `BENCH_ONLY`: comma-separated sections to run.
    only: Option<HashSet<String>>,
    /// `BENCH_RESULTS`: where to write the results file.
    results: Option<PathBuf>,
    /// `BENCH_NOTE`: a line put at the top of the results file (e.g. "busy machine").
    note: Option<String>,
    /// `BENCH_SINCE`: Unix time; criterion results older than this are left out.
    since: Option<SystemTime>,
    /// `BENCH_KEEP=1`: keep the scratch directory (maps, daemon logs) for inspection.
    keep: bool,
    /// `BENCH_SOAK_SECS`, `BENCH_SOAK_RATE` (requests/s), `BENCH_SOAK_CLIENTS`: the soak's
    /// length, pace and connections (`soak.rs`).
    soak_secs: f64,
    soak_rate: f64,
    soak_clients: usize,
    /// `BENCH_FLOOD_SECS`: length of the flood of distinct names (SPEC §11: 30 s).
    flood_secs: f64,
    /// `BENCH_DAEMON`: the daemon binary to measure. bench/run.sh sets it to a copy of
    /// `cargo build --release`'s; without it, the harness runs cargo bench's own build, which
    /// carries the dev-dependencies' features (tokio's `test-util` clock among them).
    daemon: Option<PathBuf>,
}

fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={value:?} is not a valid value")),
        _ => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let non_empty = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Ok(Settings {
            secs: env_parse("BENCH_SECS", 5.0)?,
            warmup_secs: env_parse("BENCH_WARMUP_SECS", 1.0)?,
            rounds: env_parse("BENCH_ROUNDS", 3usize)?.max(1),
            connections: env_parse("BENCH_CONNECTIONS", 16usize)?.max(1),
            wrk_threads: env_parse("BENCH_WRK_THREADS", 1usize)?.max(1),
            reloads: env_parse("BENCH_RELOADS", 60usize)?.max(1),
            reload_load_secs: env_parse("BENCH_RELOAD_LOAD_SECS", 5.0)?,
            scale_exact: env_parse("BENCH_SCALE_EXACT", 100_000usize)?,
            scale_patterns: env_parse("BENCH_SCALE_PATTERNS", 1_000usize)?,
            load_reps: env_parse("BENCH_LOAD_REPS", 5usize)?.max(1),
            idle_settle: Duration::from_millis(env_parse("BENCH_IDLE_SETTLE_MS", 1000u64)?),
            pin: env_parse("BENCH_PIN", 1u8)? != 0,
            only: non_empty("BENCH_ONLY")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
            results: non_empty("BENCH_RESULTS").map(PathBuf::from),
            note: non_empty("BENCH_NOTE"),
            since: match non_empty("BENCH_SINCE") {
                Some(v) => Some(
                    SystemTime::UNIX_EPOCH
                        + Duration::from_secs(
                            v.parse()
                                .map_err(|_| anyhow!("BENCH_SINCE={v:?} is not a Unix time"))?,
                        ),
                ),
                None => None,
            },
            keep: env_parse("BENCH_KEEP", 0u8)? != 0,
            soak_secs: env_parse("BENCH_SOAK_SECS", 180.0)?,
            flood_secs: env_parse("BENCH_FLOOD_SECS", 30.0)?,
            soak_rate: env_parse("BENCH_SOAK_RATE", 1000.0f64)?.max(1.0),
            soak_clients: env_parse("BENCH_SOAK_CLIENTS", 8usize)?.max(1),
            daemon: non_empty("BENCH_DAEMON").map(PathBuf::from),
        })
    }

    fn wants(&self, section: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(section))
    }

    /// Whether `BENCH_ONLY` names `section`: for the soak, which takes minutes and so is never
    /// part of a default run.
    fn names(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_some_and(|only| only.contains(section))
    }

    fn describe(&self, pinning: &Option<Pinning>) -> String {
        let pin = match pinning {
            Some(p) => format!(
                "server on CPU {}, wrk and harness on CPU {}",
                p.server_cpu, p.client_cpu
            ),
            None => "no pinning".to_string(),
        };
        let daemon = match &self.daemon {
            Some(daemon) => format!(" BENCH_DAEMON={}", daemon.display()),
            None => String::new(),
        };
        let soak = if self.names("soak") {
            format!(
                " BENCH_SOAK_SECS={} BENCH_SOAK_RATE={} BENCH_SOAK_CLIENTS={}",
                self.soak_secs, self.soak_rate, self.soak_clients
            )
        } else {
            String::new()
        };
        format!(
            "BENCH_SECS={} BENCH_WARMUP_SECS={} BENCH_ROUNDS={} BENCH_CONNECTIONS={} \
             BENCH_WRK_THREADS={} BENCH_RELOADS={} BENCH_RELOAD_LOAD_SECS={} \
             BENCH_SCALE_EXACT={} BENCH_SCALE_PATTERNS={} BENCH_FLOOD_SECS={}{soak}{daemon}; \
             {pin}",
            self.secs,
            self.warmup_secs,
            self.rounds,
            self.connections,
            self.wrk_threads,
            self.reloads,
            self.reload_load_secs,
            self.scale_exact,
            self.scale_patterns,
            self.flood_secs
        )
    }
}

/// What every section needs.
struct Bench {
    settings: Settings,
    pinning: Option<Pinning>,
    wrk: Wrk,
    nproc: usize,
    daemon_binary: PathBuf,
    scratch: PathBuf,
}

impl Bench {
    /// CPUs a server can keep busy: its one CPU when pinned; unpinned, the CPUs wrk leaves it
    /// (wrk's one thread takes about as much CPU as the server answering it).
    fn server_cores(&self) -> f64 {
        if self.pinning.is_some() {
            1.0
        } else {
            (self.nproc as f64 - 1.0).max(1.0)
        }
    }

    /// The same bench with nothing pinned: servers and wrk on every CPU, for SPEC §11's
    /// unpinned figure (the daemon's log thread then competes with the client).
    fn unpinned(&self) -> Bench {
        Bench {
            settings: self.settings.clone(),
            pinning: None,
            wrk: Wrk {
                cpu: None,
                ..self.wrk.clone()
            },
            nproc: self.nproc,
            daemon_binary: self.daemon_binary.clone(),
            scratch: self.scratch.clone(),
        }
    }

    fn server_cpu(&self) -> Option<usize> {
        self.pinning.as_ref().map(|p| p.server_cpu)
    }

    /// Starts the daemon on `map`, its log in `logs/`. Maps and logs live in different
    /// directories: the daemon watches its map's directory, and every log write into it would
    /// wake the watcher (about 10% of the daemon's CPU in a trial), which production does not pay.
    fn daemon(&self, map: &Path, name: &str) -> Result<Server> {
        self.daemon_with(map, name, &[])
    }

    /// `daemon`, with `extra` arguments on its command line.
    fn daemon_with(&self, map: &Path, name: &str, extra: &[String]) -> Result<Server> {
        let logs = self.scratch.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let log = logs.join(format!("{name}.log"));
        Server::daemon(
            &self.daemon_binary,
            map,
            &log,
            self.server_cpu(),
            &format!("the daemon ({name})"),
            extra,
        )
    }

    /// Writes a map file the daemon accepts (owner-only, as a map with exec workflows must be).
    fn write_map(&self, name: &str, content: &str) -> Result<PathBuf> {
        let dir = self.scratch.join("maps");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(name);
        write_private(&path, content)?;
        Ok(path)
    }
}

fn write_private(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

fn run() -> Result<()> {
    let started = Instant::now();
    let load_at_start = report::load_average();
    let settings = Settings::from_env()?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinning = Pinning::detect(settings.pin)?;
    if let Some(pinning) = &pinning {
        pinning.pin_self()?;
    }
    let wrk = Wrk::find(
        manifest.join("bench/wrk"),
        settings.connections,
        settings.wrk_threads,
        pinning.as_ref().map(|p| p.client_cpu),
    );
    let needs_wrk = ["throughput", "reload", "scale", "state", "flood"]
        .iter()
        .any(|s| settings.wants(s));
    let wrk = match wrk {
        Ok(wrk) => wrk,
        Err(err) if needs_wrk => return Err(err),
        Err(_) => Wrk {
            binary: PathBuf::from("wrk"),
            scripts: manifest.join("bench/wrk"),
            connections: 1,
            threads: 1,
            cpu: None,
        },
    };
    let scratch_dir = tempfile::Builder::new()
        .prefix("autohealer-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .context("cannot create a scratch directory")?;
    let bench = Bench {
        settings: settings.clone(),
        pinning: pinning.clone(),
        wrk,
        nproc,
        daemon_binary: settings
            .daemon
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_autohealer"))),
        scratch: scratch_dir.path().to_path_buf(),
    };
    println!("AutoHealer system benchmark");
    println!("  {}", settings.describe(&pinning));
    println!("  load average at start: {load_at_start}");
    println!(
        "  {:<44} {:>14} {:>14} {:>8}  {:<12}",
        "figure", "daemon", "reference", "ratio", "goal"
    );

    let mut report = Report::default();
    if cfg!(debug_assertions) {
        report.note("built with debug assertions: these figures are not the release build's");
    }
    if settings.daemon.is_none() {
        report.note(
            "the daemon measured is cargo bench's build, with the dev-dependencies' features \
             (tokio test-util): bench/run.sh measures `cargo build --release`'s (BENCH_DAEMON)",
        );
    }
    if pinning.is_none() {
        report.note("server and client were not pinned (one CPU, no taskset, or BENCH_PIN=0)");
    }
    if settings.wants("throughput") {
        println!("throughput and memory");
        throughput(&bench, &mut report)?;
    }
    if settings.wants("reload") {
        println!("reload");
        reload::latency(&bench, &mut report)?;
        reload::under_load(&bench, &mut report)?;
    }
    if settings.wants("scale") {
        println!("scale");
        scale(&bench, &mut report)?;
    }
    if settings.names("soak") {
        println!("soak");
        soak::soak(&bench, &mut report)?;
    }
    if settings.wants("state") {
        println!("state");
        state::state(&bench, &mut report)?;
    }
    if settings.wants("flood") {
        println!("flood");
        flood::flood(&bench, &mut report)?;
    }
    if settings.wants("micro") {
        let criterion_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .map(|target| target.join("criterion"))
            .context("no target directory")?;
        report.micro = report::criterion_results(&criterion_dir, settings.since)?;
        if report.micro.is_empty() {
            report.note(
                "no criterion results: run `cargo bench --bench micro` first (bench/run.sh does)",
            );
        }
    }

    let machine = Machine::describe(nproc, &load_at_start);
    // A soak run alone writes a file of its own, so it never replaces the day's full run.
    let soak_only = settings
        .only
        .as_ref()
        .is_some_and(|only| only.len() == 1 && only.contains("soak"));
    let suffix = if soak_only { "-soak" } else { "" };
    let path = settings
        .results
        .clone()
        .unwrap_or_else(|| manifest.join(format!("bench/results/{}{suffix}.md", machine.day())));
    let markdown = report.markdown(
        &machine,
        &settings.describe(&pinning),
        settings.note.as_deref(),
    );
    report::write(&path, &markdown)?;
    if settings.keep {
        let kept = scratch_dir.keep();
        println!("scratch directory kept: {}", kept.display());
    }
    println!(
        "done in {:.0} s; results written to {}",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}

/// What `rounds` measured: each server's runs, and the requests its warm-up sent.
struct Rounds {
    runs: [Vec<LoadRun>; 2],
    warmup: [u64; 2],
    /// Records a daemon's log held when it was emptied before each run (`Server::rotate_log`).
    rotated_records: [u64; 2],
}

/// Runs one wrk pass per server per round, alternating which goes first, after one warm-up
/// each; a daemon's log is emptied before each of its passes (`Server::rotate_log`).
fn rounds(
    bench: &Bench,
    servers: [&Server; 2],
    script: &str,
    args: [&[&str]; 2],
) -> Result<Rounds> {
    let settings = &bench.settings;
    let mut warmup = [0; 2];
    if settings.warmup_secs > 0.0 {
        for i in 0..2 {
            let run = bench.wrk.run(
                servers[i],
                "/anomaly",
                settings.warmup_secs,
                script,
                args[i],
            )?;
            warmup[i] = run.wrk.requests;
        }
    }
    let mut runs: [Vec<LoadRun>; 2] = [Vec::new(), Vec::new()];
    let mut rotated_records = [0; 2];
    for round in 0..settings.rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            rotated_records[i] += servers[i].rotate_log()?;
            let run = bench
                .wrk
                .run(servers[i], "/anomaly", settings.secs, script, args[i])?;
            runs[i].push(run);
        }
    }
    Ok(Rounds {
        runs,
        warmup,
        rotated_records,
    })
}

/// Medians over the rounds of one server.
struct Summary {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    per_cpu_s: f64,
    cores: f64,
    max_rss_kib: u64,
    requests: u64,
    failed: u64,
}

fn summarize(runs: &[LoadRun]) -> Summary {
    let pick = |f: &dyn Fn(&LoadRun) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    Summary {
        rps: pick(&|r| r.wrk.rps()),
        p50_ms: pick(&|r| r.wrk.p50_us as f64 / 1e3),
        p99_ms: pick(&|r| r.wrk.p99_us as f64 / 1e3),
        per_cpu_s: pick(&|r| r.requests_per_cpu_s()),
        cores: pick(&|r| r.server_cpu_s / (r.wrk.duration_us as f64 / 1e6)),
        max_rss_kib: runs.iter().map(|r| r.max_rss_kib).max().unwrap_or(0),
        requests: runs.iter().map(|r| r.wrk.requests).sum(),
        failed: runs
            .iter()
            .map(|r| r.wrk.socket_errors() + r.wrk.status)
            .sum(),
    }
}

/// The verdict of a requests-per-second ratio: only meaningful when the reference kept its
/// CPU busy; otherwise the client (starved by other load on the machine) set the pace.
fn rps_verdict(bench: &Bench, reference: &Summary, ratio: f64, goal: f64) -> Verdict {
    if reference.cores < 0.85 * bench.server_cores() {
        Verdict::ClientBound
    } else {
        Verdict::of(ratio >= goal)
    }
}

/// What a load comparison is judged on: the daemon's requests/s as a share of the
/// reference's, and, where the contract sets one, its p99 latency as a multiple of the
/// reference's.
#[derive(Debug, Clone, Copy)]
struct Goals {
    rps: f64,
    p99: Option<f64>,
}

/// Load rows shared by the throughput, scale and state sections.
/// Summarizes the daemon's and the reference's runs and reports the requests/s row (the goal
/// as a ratio) and the load rows under it.
fn rps_rows(
    bench: &Bench,
    report: &mut Report,
    section: &'static str,
    label: String,
    runs: &[Vec<LoadRun>; 2],
    goals: Goals,
) -> (Summary, Summary) {
    let goal = goals.rps;
    let (d, r) = (summarize(&runs[0]), summarize(&runs[1]));
    report.row(
        section,
        label,
        format!("{:.0}", d.rps),
        format!("{:.0}", r.rps),
        ratio(d.rps, r.rps),
        format!("ratio ≥ {goal:.2}"),
        rps_verdict(bench, &r, d.rps / r.rps, goal),
    );
    // Each round as well as the median: a round the machine disturbed shows here.
    let per_round = |runs: &[LoadRun]| {
        runs.iter()
            .map(|run| {
                format!(
                    "{:.0}k/{}",
                    run.wrk.rps() / 1e3,
                    ms(run.wrk.p99_us as f64 / 1e3)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    report.row(
        section,
        "each round: requests/s / p99",
        per_round(&runs[0]),
        per_round(&runs[1]),
        "",
        "",
        Verdict::Info,
    );
    load_rows(report, section, &d, &r, goals);
    (d, r)
}

fn load_rows(
    report: &mut Report,
    section: &'static str,
    daemon: &Summary,
    reference: &Summary,
    goals: Goals,
) {
    let goal = goals.rps;
    let p99_ratio = daemon.p99_ms / reference.p99_ms;
    report.row(
        section,
        "latency p50 (median of rounds)",
        ms(daemon.p50_ms),
        ms(reference.p50_ms),
        ratio(daemon.p50_ms, reference.p50_ms),
        "",
        Verdict::Info,
    );
    report.row(
        section,
        "latency p99 (median of rounds)",
        ms(daemon.p99_ms),
        ms(reference.p99_ms),
        ratio(daemon.p99_ms, reference.p99_ms),
        goals
            .p99
            .map_or(String::new(), |most| format!("ratio ≤ {most:.1}")),
        goals
            .p99
            .map_or(Verdict::Info, |most| Verdict::of(p99_ratio <= most)),
    );
    report.row(
        section,
        "requests per server CPU-second",
        format!("{:.0}", daemon.per_cpu_s),
        format!("{:.0}", reference.per_cpu_s),
        ratio(daemon.per_cpu_s, reference.per_cpu_s),
        format!("cross-check ≥ {goal:.2}"),
        Verdict::of(daemon.per_cpu_s / reference.per_cpu_s >= goal),
    );
    report.row(
        section,
        "server CPU in use during load (cores)",
        format!("{:.2}", daemon.cores),
        format!("{:.2}", reference.cores),
        ratio(daemon.cores, reference.cores),
        "",
        Verdict::Info,
    );
    failed_row(report, section, daemon, reference);
}

/// The row every load section ends with: failed requests, none allowed.
fn failed_row(report: &mut Report, section: &'static str, daemon: &Summary, reference: &Summary) {
    report.row(
        section,
        "failed requests (socket errors + status >= 400)",
        format!("{} of {}", daemon.failed, daemon.requests),
        format!("{} of {}", reference.failed, reference.requests),
        "",
        "0",
        Verdict::of(daemon.failed == 0),
    );
}

/// Checks one answer before loading a server with the same request.
fn expect_answer(
    server: &Server,
    body: &str,
    status: u16,
    what: &str,
) -> Result<serde_json::Value> {
    let answer = Client::new(server.addr).post_json("/anomaly", body)?;
    if answer.status != status {
        bail!(
            "{what}: expected {status} for {body}, got {} {}",
            answer.status,
            answer.body
        );
    }
    answer.json()
}

/// SPEC §11: `POST /anomaly` at this share of the bare hyper server's requests/s, server and
/// client pinned to a CPU each.
const PINNED_GOAL: f64 = 0.80;

/// SPEC §11: the same unpinned, where the daemon's log thread competes with the client.
const UNPINNED_GOAL: f64 = 0.75;

/// SPEC §11: the daemon's p99 latency at most this many times the reference's.
const P99_GOAL: f64 = 2.0;

/// SPEC §11: idle resident memory after startup.
const IDLE_RSS_GOAL_KIB: u64 = 6 * 1024;

/// The throughput section: pinned (with memory), then unpinned in the same run when the
/// machine can pin at all; with `BENCH_PIN=0`, only unpinned.
fn throughput(bench: &Bench, report: &mut Report) -> Result<()> {
    if bench.pinning.is_none() {
        return throughput_pass(bench, report, "throughput (unpinned)", UNPINNED_GOAL, true);
    }
    throughput_pass(bench, report, "throughput", PINNED_GOAL, true)?;
    throughput_pass(
        &bench.unpinned(),
        report,
        "throughput (unpinned)",
        UNPINNED_GOAL,
        false,
    )
}

/// One daemon and one reference, alternated over the rounds; with `memory`, their resident
/// memory idle, under load and idle again.
fn throughput_pass(
    bench: &Bench,
    report: &mut Report,
    section: &'static str,
    goal: f64,
    memory: bool,
) -> Result<()> {
    let settings = &bench.settings;
    let map = bench.write_map("throughput.yml", &mapgen::throughput_map())?;
    let reference = Server::reference(REFERENCE_FLAG, bench.server_cpu())?;
    let name = if bench.pinning.is_some() {
        "throughput"
    } else {
        "throughput-unpinned"
    };
    let daemon = bench.daemon(&map, name)?;
    let body = mapgen::anomaly_body(mapgen::THROUGHPUT_NAME);
    let answer = expect_answer(&daemon, &body, 202, "the daemon")?;
    if answer["status"] != "dispatched" {
        bail!("the daemon did not dispatch the benchmark anomaly: {answer}");
    }
    expect_answer(&reference, &body, 202, "the reference server")?;

    std::thread::sleep(settings.idle_settle);
    let idle = [
        procs::memory(daemon.pid())?,
        procs::memory(reference.pid())?,
    ];

    let Rounds {
        runs,
        warmup,
        rotated_records,
    } = rounds(
        bench,
        [&daemon, &reference],
        "post.lua",
        [&[body.as_str()], &[body.as_str()]],
    )?;
    let label = format!("POST /anomaly requests/s (median of {})", runs[0].len());
    let goals = Goals {
        rps: goal,
        p99: Some(P99_GOAL),
    };
    let (d, r) = rps_rows(bench, report, section, label, &runs, goals);

    if memory {
        let under_load = [
            procs::memory(daemon.pid())?,
            procs::memory(reference.pid())?,
        ];
        std::thread::sleep(settings.idle_settle);
        let after = [
            procs::memory(daemon.pid())?,
            procs::memory(reference.pid())?,
        ];
        let section = "memory";
        report.memory_row(
            section,
            "idle RSS after startup (VmRSS)",
            idle[0].rss_kib,
            idle[1].rss_kib,
            "≤ 6 MiB",
            Verdict::of(idle[0].rss_kib <= IDLE_RSS_GOAL_KIB),
        );
        let peak = |m: &procs::Memory, sampled: u64| m.hwm_kib.max(sampled);
        let (peak_d, peak_r) = (
            peak(&under_load[0], d.max_rss_kib),
            peak(&under_load[1], r.max_rss_kib),
        );
        report.memory_row(
            section,
            "RSS under load (VmHWM, peak)",
            peak_d,
            peak_r,
            "< 40 MiB",
            Verdict::of(peak_d < 40 * 1024),
        );
        report.memory_row(
            section,
            "RSS idle again after load (VmRSS)",
            after[0].rss_kib,
            after[1].rss_kib,
            "",
            Verdict::Info,
        );
    }

    // The log is part of what was measured: check the daemon really wrote its records.
    if let Some(log) = &daemon.log {
        let lines = procs::count_lines(log)? + rotated_records[0];
        let last_run_bytes = std::fs::metadata(log)?.len();
        let total_requests = d.requests + warmup[0] + 1;
        report.note(format!(
            "{section}: the daemon wrote {lines} JSON log records to a file while answering \
             {total_requests} requests (warm-up included): {:.2} records per request (a \
             triggered and a finished record each); the file was emptied before each measured \
             run and held {:.0} MiB after the last",
            lines as f64 / total_requests.max(1) as f64,
            last_run_bytes as f64 / (1024.0 * 1024.0),
        ));
    }
    Ok(())
}

/// Times `f` `reps` times; returns the durations in milliseconds.
fn time_reps<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        std::hint::black_box(f()?);
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

fn scale(bench: &Bench, report: &mut Report) -> Result<()> {
    let settings = &bench.settings;
    let (exact, patterns) = (settings.scale_exact, settings.scale_patterns);
    let text = mapgen::scale_map(exact, patterns);
    let big = bench.write_map("scale.yml", &text)?;
    let small = bench.write_map("one-reflex.yml", &mapgen::one_reflex_map())?;
    let section = "scale";

    // Load time in this process, as the daemon's reloader does it.
    let load = |path: &Path| {
        time_reps(settings.load_reps, || {
            autohealer::map::load(path, 1)
                .map_err(|err| anyhow!("the generated map does not load: {err}"))
        })
    };
    let mut load_big = load(&big)?;
    let mut parse_only = time_reps(settings.load_reps, || {
        serde_yaml::from_str::<serde_yaml::Value>(&text).context("the generated map is not YAML")
    })?;
    let mut load_small = load(&small)?;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let label = format!("{exact} exact + {patterns} patterns");
    report.row(
        section,
        format!("load {label}: reload::load, median of {}", load_big.len()),
        ms(median(&mut load_big)),
        ms(median(&mut parse_only)),
        ratio(median(&mut load_big), median(&mut parse_only)),
        "< 300 ms",
        Verdict::of(median(&mut load_big) < 300.0),
    );
    report.row(
        section,
        "load, max",
        ms(max(&load_big)),
        ms(max(&parse_only)),
        ratio(max(&load_big), max(&parse_only)),
        "",
        Verdict::Info,
    );
    report.row(
        section,
        "load of the one-reflex map (median)",
        ms(median(&mut load_small)),
        "",
        "",
        "",
        Verdict::Info,
    );
    report.note(format!(
        "scale: the load reference is serde_yaml parsing the same {:.1} MiB file into a \
         generic Value, the floor under any YAML map",
        text.len() as f64 / (1024.0 * 1024.0)
    ));
    drop(text);

    let baseline = bench.daemon(&small, "one-reflex")?;
    let daemon = bench.daemon(&big, "scale")?;
    report.row(
        section,
        "daemon startup, spawn → listening",
        ms(daemon.startup.as_secs_f64() * 1e3),
        ms(baseline.startup.as_secs_f64() * 1e3),
        ratio(daemon.startup.as_secs_f64(), baseline.startup.as_secs_f64()),
        "",
        Verdict::Info,
    );
    std::thread::sleep(settings.idle_settle);
    let (mem_big, mem_small) = (procs::memory(daemon.pid())?, procs::memory(baseline.pid())?);
    report.memory_row(
        section,
        "daemon idle RSS with the map (VmRSS)",
        mem_big.rss_kib,
        mem_small.rss_kib,
        "",
        Verdict::Info,
    );

    // The same mix of requests gets the same answers from both maps (see mapgen).
    let names = mapgen::mixed_names(exact, patterns, 3000);
    for name in names.iter().take(3) {
        let body = mapgen::anomaly_body(name);
        let a = Client::new(daemon.addr).post_json("/anomaly", &body)?;
        let b = Client::new(baseline.addr).post_json("/anomaly", &body)?;
        if a.status != b.status || a.json()?["status"] != b.json()?["status"] {
            bail!(
                "the scale map and its baseline answer {name} differently: {} {} vs {} {}",
                a.status,
                a.body,
                b.status,
                b.body
            );
        }
    }
    let bodies = bench.scratch.join("scale-bodies.txt");
    let lines: Vec<String> = names.iter().map(|n| mapgen::anomaly_body(n)).collect();
    std::fs::write(&bodies, lines.join("\n") + "\n")?;
    let bodies = bodies.to_string_lossy().into_owned();
    let Rounds { runs, .. } = rounds(
        bench,
        [&daemon, &baseline],
        "cycle.lua",
        [&[bodies.as_str()], &[bodies.as_str()]],
    )?;
    let label = format!("dispatch requests/s, {label} vs one reflex");
    let goals = Goals {
        rps: 0.90,
        p99: None,
    };
    rps_rows(bench, report, section, label, &runs, goals);
    report.note(
        "scale: requests cycle through 3000 bodies, a third exact names, a third pattern hits, \
         a third misses; the one-reflex map (`hit.**`) gives each the same answer",
    );
    Ok(())
}
