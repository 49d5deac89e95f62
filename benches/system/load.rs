//! Drives a server with wrk and watches it meanwhile: its CPU time and resident memory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::procs::{self, ChildGuard, Server};

/// How often the server's memory is sampled during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// What wrk's `done()` prints (bench/wrk/summary.lua); times in microseconds.
#[derive(Debug, Clone, Deserialize)]
pub struct WrkSummary {
    pub requests: u64,
    pub duration_us: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Answers with a status of 400 or more.
    pub status: u64,
    pub timeout: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl WrkSummary {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    pub fn socket_errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

/// One wrk run against one server.
#[derive(Debug, Clone)]
pub struct LoadRun {
    pub wrk: WrkSummary,
    /// CPU seconds the server used during the run.
    pub server_cpu_s: f64,
    /// Largest VmRSS sampled during the run, KiB.
    pub max_rss_kib: u64,
}

impl LoadRun {
    /// Requests answered per CPU-second of the server: less disturbed by other load on the
    /// machine than requests per wall-clock second.
    pub fn requests_per_cpu_s(&self) -> f64 {
        self.wrk.requests as f64 / self.server_cpu_s.max(1e-9)
    }
}

/// How wrk is run.
#[derive(Debug, Clone)]
pub struct Wrk {
    pub binary: PathBuf,
    pub scripts: PathBuf,
    pub connections: usize,
    pub threads: usize,
    pub cpu: Option<usize>,
}

impl Wrk {
    pub fn find(
        scripts: PathBuf,
        connections: usize,
        threads: usize,
        cpu: Option<usize>,
    ) -> Result<Wrk> {
        let binary = procs::which("wrk").context(
            "wrk is not installed: run bench/run.sh, which installs it (apt-get install -y wrk)",
        )?;
        Ok(Wrk {
            binary,
            scripts,
            connections,
            threads,
            cpu,
        })
    }

    /// Starts wrk on `url` for `secs` with `script` (in bench/wrk) and its arguments.
    pub fn spawn(&self, url: &str, secs: f64, script: &str, args: &[&str]) -> Result<ChildGuard> {
        let mut command = procs::pinned_command(self.cpu, &self.binary);
        command
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections.max(self.threads)))
            // wrk takes whole seconds.
            .arg(format!("-d{}s", secs.round().max(1.0) as u64))
            .arg("--timeout")
            .arg("2s")
            .arg("-s")
            .arg(self.scripts.join(script))
            .arg(url)
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        ChildGuard::spawn(command, "wrk")
    }

    /// Runs wrk against `server` for `secs`, sampling the server meanwhile.
    pub fn run(
        &self,
        server: &Server,
        path: &str,
        secs: f64,
        script: &str,
        args: &[&str],
    ) -> Result<LoadRun> {
        let pid = server.pid();
        let cpu_before = procs::cpu_seconds(pid)?;
        let mut wrk = self.spawn(&server.url(path), secs, script, args)?;
        let mut max_rss_kib = 0;
        let start = Instant::now();
        let deadline = Duration::from_secs_f64(secs) + Duration::from_secs(30);
        while wrk.child.try_wait()?.is_none() {
            max_rss_kib = max_rss_kib.max(procs::memory(pid)?.rss_kib);
            if start.elapsed() > deadline {
                bail!("wrk did not finish within {deadline:?}");
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
        let server_cpu_s = procs::cpu_seconds(pid)? - cpu_before;
        max_rss_kib = max_rss_kib.max(procs::memory(pid)?.rss_kib);
        let wrk = finish(wrk)?;
        Ok(LoadRun {
            wrk,
            server_cpu_s,
            max_rss_kib,
        })
    }
}

/// Waits for wrk and parses its summary line.
pub fn finish(mut wrk: ChildGuard) -> Result<WrkSummary> {
    use std::io::Read;
    let status = wrk.wait_with_deadline(Duration::from_secs(60))?;
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = wrk.child.stdout.take() {
        out.read_to_string(&mut stdout)?;
    }
    if let Some(mut err) = wrk.child.stderr.take() {
        err.read_to_string(&mut stderr)?;
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_JSON "))
        .with_context(|| {
            format!("wrk ({status}) printed no summary line\nstdout:\n{stdout}\nstderr:\n{stderr}")
        })?;
    serde_json::from_str(line).with_context(|| format!("cannot parse wrk's summary {line:?}"))
}

/// The median of some values (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// A command's standard output, if it ran and succeeded.
pub fn command_output(program: &str, args: &[&str]) -> Option<String> {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A command's first line of output (stdout, else stderr), or `unknown`.
pub fn first_line_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string())
}
