//! The soak (issue 13, SPEC §8): minutes of mixed load on the daemon, with an audit log, while
//! its resident memory is sampled:
//! - random names under pattern reflexes (`nginx.<random>.down`, a 5-minute cooldown, as the
//!   shipped map has), and random names no reflex matches;
//! - webhooks to a target that answers 500 (retried) and to one that never answers (timed out),
//!   both served by a tiny HTTP server in this harness;
//! - the map replaced (by rename, changed each time) every 100 ms, and a SIGHUP every second.
//!
//! Then the daemon is stopped with SIGTERM and the audit log read: every anomaly answered
//! `dispatched` must have both of its records (`healing action triggered` and `finished`), and
//! no request may have failed (an error, or an answer other than the one its name calls for).
//!
//! It runs only when asked (`BENCH_ONLY=soak bench/run.sh`): `BENCH_SOAK_SECS` (default 180;
//! 20 for a quick check), `BENCH_SOAK_RATE` (requests per second, default 1000) and
//! `BENCH_SOAK_CLIENTS` (keep-alive connections, default 8).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::Client;
use crate::procs;
use crate::reload::replace_by_rename;
use crate::report::{mib, Report, Verdict};
use crate::Bench;

/// How often the map is replaced (issue 13: "reloads every 100 ms").
const REPLACE_EVERY: Duration = Duration::from_millis(100);

/// How often the daemon gets a SIGHUP.
const SIGHUP_EVERY: Duration = Duration::from_secs(1);

/// How often the daemon's resident memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// How long the daemon may take to stop on SIGTERM (its actions time out well before).
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// Error messages kept for the report; the rest are only counted.
const ERRORS_KEPT: usize = 5;

/// The section's name in the report.
const SECTION: &str = "soak";

/// The soak's map; `version` changes on every replacement, so each one is a real reload.
fn soak_map(target: SocketAddr, version: u64) -> String {
    format!(
        "defaults: {{cooldown: 0s}}\n\
         workflows:\n  \
           restart: {{max_concurrent: 10000}}\n  \
           notify_failing:\n    \
             webhook: {{url: 'http://{target}/fail', timeout: 1s, retries: 1}}\n    \
             max_concurrent: 10000\n  \
           notify_hanging:\n    \
             webhook: {{url: 'http://{target}/hang', timeout: 200ms, retries: 0}}\n    \
             max_concurrent: 10000\n\
         reflexes:\n  \
           'nginx.*.down': {{workflow: restart, params: {{version: {version}}}, cooldown: 5m}}\n  \
           'failing.*': notify_failing\n  \
           'hanging.*': notify_hanging\n"
    )
}

/// What a name sent to the daemon is, and so which answers are right for it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Under `nginx.*.down`: dispatched, or suppressed when a rail holds it back.
    Pattern,
    Failing,
    Hanging,
    /// Matches nothing: unmatched.
    Unmatched,
}

impl Kind {
    /// Seven in ten requests are random pattern names, one in ten each of the others.
    fn pick(rng: &mut fastrand::Rng) -> Kind {
        match rng.u8(0..10) {
            0..7 => Kind::Pattern,
            7 => Kind::Failing,
            8 => Kind::Hanging,
            _ => Kind::Unmatched,
        }
    }

    fn name(self, rng: &mut fastrand::Rng) -> String {
        let random: String = std::iter::repeat_with(|| rng.alphanumeric())
            .take(12)
            .collect();
        match self {
            Kind::Pattern => format!("nginx.{random}.down"),
            Kind::Failing => format!("failing.{random}"),
            Kind::Hanging => format!("hanging.{random}"),
            Kind::Unmatched => format!("unmatched.{random}.x"),
        }
    }
}

/// What one client saw.
#[derive(Debug, Default)]
struct Tally {
    /// Action ids of the anomalies answered `dispatched`.
    dispatched: Vec<String>,
    suppressed: u64,
    unmatched: u64,
    failed: u64,
    errors: Vec<String>,
}

impl Tally {
    fn fail(&mut self, error: String) {
        self.failed += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(error);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.dispatched.extend(other.dispatched);
        self.suppressed += other.suppressed;
        self.unmatched += other.unmatched;
        self.failed += other.failed;
        for error in other.errors {
            if self.errors.len() < ERRORS_KEPT {
                self.errors.push(error);
            }
        }
    }

    fn answered(&self) -> u64 {
        self.dispatched.len() as u64 + self.suppressed + self.unmatched
    }
}

/// Sends anomalies at `rate` per second on one keep-alive connection until `until`.
fn drive(addr: SocketAddr, rate: f64, until: Instant, seed: u64) -> Tally {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut client = Client::new(addr);
    let mut tally = Tally::default();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    while Instant::now() < until {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            // Far behind (the machine is busy): pace from now rather than burst to catch up.
            next = now;
        }
        next += interval;
        let kind = Kind::pick(&mut rng);
        let name = kind.name(&mut rng);
        let body = format!(r#"{{"name":"{name}","details":{{"soak":true}}}}"#);
        let answer = match client.post_json("/anomaly", &body) {
            Ok(answer) => answer,
            Err(err) => {
                tally.fail(format!("{name}: {err:#}"));
                continue;
            }
        };
        let json = answer.json().unwrap_or_default();
        let dispatchable = !matches!(kind, Kind::Unmatched);
        match (
            answer.status,
            json["status"].as_str(),
            json["action_id"].as_str(),
        ) {
            (200, Some("unmatched"), _) if !dispatchable => tally.unmatched += 1,
            (202, Some("dispatched"), Some(id)) if dispatchable => {
                tally.dispatched.push(id.to_string())
            }
            (200, Some("suppressed"), _) if dispatchable => tally.suppressed += 1,
            _ => tally.fail(format!("{name}: {} {}", answer.status, answer.body)),
        }
    }
    tally
}

/// A tiny HTTP server standing in for a workflow engine: `/fail` answers 500, `/hang` reads the
/// request and never answers (the daemon's timeout ends the exchange).
struct WebhookTarget {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    failing: Arc<AtomicU64>,
    hanging: Arc<AtomicU64>,
    accept: Option<JoinHandle<()>>,
}

impl WebhookTarget {
    fn start() -> Result<WebhookTarget> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the target")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (failing, hanging) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let accept = {
            let (stop, failing, hanging) = (stop.clone(), failing.clone(), hanging.clone());
            std::thread::Builder::new()
                .name("soak-target".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        let (stop, failing, hanging) =
                            (stop.clone(), failing.clone(), hanging.clone());
                        std::thread::spawn(move || {
                            let _ = serve_target(stream, &stop, &failing, &hanging);
                        });
                    }
                })
                .context("cannot start the target")?
        };
        Ok(WebhookTarget {
            addr,
            stop,
            failing,
            hanging,
            accept: Some(accept),
        })
    }
}

impl Drop for WebhookTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Serves the requests of one connection (reqwest keeps it alive between them).
fn serve_target(
    stream: TcpStream,
    stop: &AtomicBool,
    failing: &AtomicU64,
    hanging: &AtomicU64,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(path) = read_request(&mut reader, stop)? else {
            return Ok(());
        };
        if path.starts_with("/fail") {
            failing.fetch_add(1, Ordering::Relaxed);
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        hanging.fetch_add(1, Ordering::Relaxed);
        // Never answer: wait until the daemon gives up and closes, or the soak ends.
        let mut buf = [0; 512];
        while !stop.load(Ordering::Relaxed) {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(err) if is_timeout(&err) => {}
                Err(err) => return Err(err),
            }
        }
        return Ok(());
    }
}

fn is_timeout(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Reads one request (header and body); its path, or none when the connection ended.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    stop: &AtomicBool,
) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> std::io::Result<usize> {
        line.clear();
        loop {
            match reader.read_line(line) {
                Err(err) if is_timeout(&err) && !stop.load(Ordering::Relaxed) => {}
                other => return other,
            }
        }
    };
    if read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut length = 0;
    loop {
        if read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    let mut filled = 0;
    while filled < length {
        match reader.read(&mut body[filled..]) {
            Ok(0) => return Ok(None),
            Ok(n) => filled += n,
            Err(err) if is_timeout(&err) && !stop.load(Ordering::Relaxed) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(Some(path))
}

/// Runs `step` every `every` on a thread of its own until `stop` is set; returns the count.
fn every(
    name: &str,
    every: Duration,
    stop: &Arc<AtomicBool>,
    mut step: impl FnMut(u64) -> Result<()> + Send + 'static,
) -> Result<JoinHandle<Result<u64>>> {
    let stop = stop.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut done = 0;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                step(done)?;
                done += 1;
                next += every;
                let now = Instant::now();
                std::thread::sleep(next.saturating_duration_since(now));
            }
            Ok(done)
        })
        .with_context(|| format!("cannot start the {name} thread"))
}

/// Which of its two records each dispatched anomaly has in the audit log.
#[derive(Debug, Default)]
struct Audited {
    /// Dispatched anomalies with both records.
    complete: u64,
    /// Dispatched anomalies missing one record or both, and a few of their ids.
    incomplete: u64,
    incomplete_ids: Vec<String>,
    suppressed_records: u64,
    /// Lines that are not a JSON record.
    unreadable: u64,
}

fn read_audit_log(path: &Path, dispatched: &[String]) -> Result<Audited> {
    const TRIGGERED: u8 = 1;
    const FINISHED: u8 = 2;
    let mut seen: HashMap<&str, u8> = dispatched.iter().map(|id| (id.as_str(), 0)).collect();
    let mut audited = Audited::default();
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    for line in BufReader::new(file).lines() {
        let line = line?;
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
            audited.unreadable += 1;
            continue;
        };
        let bit = match record["msg"].as_str() {
            Some("healing action triggered") => TRIGGERED,
            Some("healing action finished") => FINISHED,
            Some("healing action suppressed") => {
                audited.suppressed_records += 1;
                continue;
            }
            _ => continue,
        };
        if let Some(flags) = record["action_id"].as_str().and_then(|id| seen.get_mut(id)) {
            *flags |= bit;
        }
    }
    for (id, flags) in seen {
        if flags == TRIGGERED | FINISHED {
            audited.complete += 1;
        } else {
            audited.incomplete += 1;
            if audited.incomplete_ids.len() < ERRORS_KEPT {
                audited.incomplete_ids.push(id.to_string());
            }
        }
    }
    Ok(audited)
}

/// Counts of the daemon's own records of interest in its stderr log.
#[derive(Debug, Default)]
struct LogCounts {
    loaded_watch: u64,
    loaded_signal: u64,
    rejected: u64,
    audit_failures: u64,
    not_json: u64,
}

fn read_daemon_log(path: &Path) -> Result<LogCounts> {
    let mut counts = LogCounts::default();
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    for line in BufReader::new(file).lines() {
        let line = line?;
        // Parsing every record of a long run takes a while; only those that matter are parsed.
        if !line.starts_with('{') {
            counts.not_json += 1;
            continue;
        }
        if !line.contains("\"reflex map") && !line.contains("\"audit log") {
            continue;
        }
        let record: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("the daemon wrote a line that is not JSON: {line}"))?;
        match (record["msg"].as_str(), record["trigger"].as_str()) {
            (Some("reflex map loaded"), Some("watch")) => counts.loaded_watch += 1,
            (Some("reflex map loaded"), Some("signal")) => counts.loaded_signal += 1,
            (Some("reflex map rejected"), _) => counts.rejected += 1,
            (Some("audit log write failed"), _) => counts.audit_failures += 1,
            _ => {}
        }
    }
    Ok(counts)
}

/// Resident memory over the run: the first sample, the peak, the last, and the one halfway.
struct Rss {
    start_kib: u64,
    peak_kib: u64,
    middle_kib: u64,
    end_kib: u64,
    samples: usize,
}

impl Rss {
    fn of(samples: &[u64], hwm_kib: u64) -> Rss {
        Rss {
            start_kib: samples.first().copied().unwrap_or(0),
            peak_kib: samples.iter().copied().max().unwrap_or(0).max(hwm_kib),
            middle_kib: samples.get(samples.len() / 2).copied().unwrap_or(0),
            end_kib: samples.last().copied().unwrap_or(0),
            samples: samples.len(),
        }
    }

    /// Flat: the second half of the run grew it by at most a tenth, or 4 MiB (allocator noise).
    fn is_flat(&self) -> bool {
        self.end_kib <= self.middle_kib + (self.middle_kib / 10).max(4 * 1024)
    }
}

pub fn soak(bench: &Bench, report: &mut Report) -> Result<()> {
    let settings = &bench.settings;
    let target = WebhookTarget::start()?;
    let map = bench.write_map("soak.yml", &soak_map(target.addr, 0))?;
    let audit_log = bench.scratch.join("logs/soak-audit.log");
    std::fs::create_dir_all(bench.scratch.join("logs"))?;
    let mut daemon = bench.daemon_with(
        &map,
        "soak",
        &[
            "--audit-log".to_string(),
            audit_log.to_string_lossy().into_owned(),
        ],
    )?;
    let pid = daemon.pid();
    println!(
        "  {} s at {} requests/s on {} connections",
        settings.soak_secs, settings.soak_rate, settings.soak_clients
    );

    let start = Instant::now();
    let until = start + Duration::from_secs_f64(settings.soak_secs);
    let mut samples = vec![procs::memory(pid)?.rss_kib];
    let stop = Arc::new(AtomicBool::new(false));
    let replacer = {
        let (map, target) = (map.clone(), target.addr);
        every("soak-replace", REPLACE_EVERY, &stop, move |done| {
            replace_by_rename(&map, &soak_map(target, done + 1)).map(|_| ())
        })?
    };
    let hangups = every("soak-sighup", SIGHUP_EVERY, &stop, move |_| {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)
            .context("cannot send SIGHUP to the daemon")
    })?;
    let per_client = settings.soak_rate / settings.soak_clients as f64;
    let clients: Vec<JoinHandle<Tally>> = (0..settings.soak_clients)
        .map(|i| {
            let addr = daemon.addr;
            std::thread::Builder::new()
                .name(format!("soak-client-{i}"))
                .spawn(move || drive(addr, per_client, until, 0x50a6 + i as u64))
                .context("cannot start a client thread")
        })
        .collect::<Result<_>>()?;
    while Instant::now() < until {
        std::thread::sleep(SAMPLE_EVERY);
        samples.push(procs::memory(pid)?.rss_kib);
    }
    let mut tally = Tally::default();
    for client in clients {
        tally.merge(
            client
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?,
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let replaced = replacer
        .join()
        .map_err(|_| anyhow::anyhow!("the replacing thread panicked"))??;
    let sighups = hangups
        .join()
        .map_err(|_| anyhow::anyhow!("the SIGHUP thread panicked"))??;
    let memory = procs::memory(pid)?;
    samples.push(memory.rss_kib);
    let rss = Rss::of(&samples, memory.hwm_kib);

    // Stop it as systemd would: SIGTERM flushes the log and syncs the audit log.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .context("cannot send SIGTERM to the daemon")?;
    let status = daemon.guard.wait_with_deadline(STOP_DEADLINE)?;
    let audited = read_audit_log(&audit_log, &tally.dispatched)?;
    let log = daemon
        .log
        .as_deref()
        .context("the daemon has no log file")?;
    let counts = read_daemon_log(log)?;
    let webhooks = [&target.failing, &target.hanging].map(|count| count.load(Ordering::Relaxed));
    drop(target);

    let row = |report: &mut Report, figure: &str, value: String, goal: &str, verdict| {
        report.row(SECTION, figure, value, "", "", goal, verdict);
    };
    row(
        report,
        "requests answered (dispatched/suppressed/unmatched)",
        format!(
            "{} ({}/{}/{})",
            tally.answered(),
            tally.dispatched.len(),
            tally.suppressed,
            tally.unmatched
        ),
        "",
        Verdict::Info,
    );
    row(
        report,
        "requests/s achieved",
        format!("{:.0}", (tally.answered() + tally.failed) as f64 / elapsed),
        &format!("{:.0} asked", settings.soak_rate),
        Verdict::Info,
    );
    row(
        report,
        "failed requests (errors, wrong answers)",
        tally.failed.to_string(),
        "0",
        Verdict::of(tally.failed == 0),
    );
    row(
        report,
        "dispatched with both records in the audit log",
        format!("{} of {}", audited.complete, tally.dispatched.len()),
        "all",
        Verdict::of(audited.incomplete == 0 && audited.unreadable == 0),
    );
    row(
        report,
        "suppressed answers / audit records",
        format!("{} / {}", tally.suppressed, audited.suppressed_records),
        "equal",
        Verdict::of(tally.suppressed == audited.suppressed_records),
    );
    row(
        report,
        "maps replaced / loads seen by the watcher",
        format!("{replaced} / {}", counts.loaded_watch),
        "",
        Verdict::Info,
    );
    row(
        report,
        "SIGHUPs sent / of them loading a new map",
        format!("{sighups} / {}", counts.loaded_signal),
        "",
        Verdict::Info,
    );
    row(
        report,
        "rejected reloads, audit write failures",
        format!("{}, {}", counts.rejected, counts.audit_failures),
        "0, 0",
        Verdict::of(counts.rejected == 0 && counts.audit_failures == 0),
    );
    row(
        report,
        "webhook requests: failing (500) / hanging",
        format!("{} / {}", webhooks[0], webhooks[1]),
        "",
        Verdict::Info,
    );
    row(
        report,
        "RSS at start (VmRSS)",
        mib(rss.start_kib),
        "",
        Verdict::Info,
    );
    row(
        report,
        "RSS peak (VmHWM)",
        mib(rss.peak_kib),
        "",
        Verdict::Info,
    );
    row(
        report,
        "RSS halfway / at the end",
        format!("{} / {}", mib(rss.middle_kib), mib(rss.end_kib)),
        "flat (≤ +10% or 4 MiB)",
        Verdict::of(rss.is_flat()),
    );
    row(
        report,
        "exit on SIGTERM",
        status.to_string(),
        "0",
        Verdict::of(status.success()),
    );
    report.note(format!(
        "soak: {elapsed:.0} s, {} RSS samples every {} ms; {} stderr lines were not JSON",
        rss.samples,
        SAMPLE_EVERY.as_millis(),
        counts.not_json
    ));
    for error in &tally.errors {
        report.note(format!("soak: a failed request: {error}"));
    }
    for id in &audited.incomplete_ids {
        report.note(format!("soak: dispatched without both records: {id}"));
    }
    if audited.unreadable > 0 {
        report.note(format!(
            "soak: {} audit log lines were not JSON records",
            audited.unreadable
        ));
    }
    if !status.success() && status.code().is_none() {
        bail!("the daemon was killed by a signal: {status}");
    }
    Ok(())
}
