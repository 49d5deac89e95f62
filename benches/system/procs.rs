//! The processes the system benchmark starts (the daemon, the reference server, wrk), what it
//! reads about them from /proc, and CPU pinning.
//!
//! Every child is held by a `ChildGuard`, which kills and reaps it on drop, so an error or a
//! panic anywhere in the harness leaves nothing running.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a server may take to start listening (the scale map is large).
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// The CPUs the harness was allowed before it pinned itself (`Pinning::pin_self`), as a
/// `taskset` list: a child started unpinned gets them all back instead of inheriting the
/// harness's one CPU.
static UNPINNED_CPUS: OnceLock<String> = OnceLock::new();

/// A child process killed and reaped when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub what: String,
}

impl ChildGuard {
    pub fn spawn(mut command: Command, what: impl Into<String>) -> Result<ChildGuard> {
        let what = what.into();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {what} ({command:?})"))?;
        Ok(ChildGuard { child, what })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the child to exit by itself, killing it after `deadline`.
    pub fn wait_with_deadline(&mut self, deadline: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{} did not finish within {deadline:?}; killed it",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which CPUs the servers and the client run on, when the machine has two or more.
#[derive(Debug, Clone)]
pub struct Pinning {
    pub server_cpu: usize,
    pub client_cpu: usize,
    /// Every CPU the harness may use, for children started unpinned (`pin_self`).
    all_cpus: Vec<usize>,
}

impl Pinning {
    /// Server on the first allowed CPU, client on the second; `None` with fewer than two CPUs,
    /// when `taskset` is missing, or when `BENCH_PIN=0`.
    pub fn detect(enabled: bool) -> Result<Option<Pinning>> {
        if !enabled {
            return Ok(None);
        }
        let cpus = allowed_cpus()?;
        if cpus.len() < 2 || which("taskset").is_none() {
            return Ok(None);
        }
        Ok(Some(Pinning {
            server_cpu: cpus[0],
            client_cpu: cpus[1],
            all_cpus: cpus,
        }))
    }

    /// Pins this process (and the threads it starts later) to the client CPU, so its own
    /// polling never competes with the server under test.
    pub fn pin_self(&self) -> Result<()> {
        let all = self
            .all_cpus
            .iter()
            .map(|cpu| cpu.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let _ = UNPINNED_CPUS.set(all);
        let status = Command::new("taskset")
            .args(["-p", "-c", &self.client_cpu.to_string()])
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .status()
            .context("cannot run taskset")?;
        if !status.success() {
            bail!(
                "taskset could not pin the benchmark to CPU {}",
                self.client_cpu
            );
        }
        Ok(())
    }
}

/// `program args…`, prefixed with `taskset -c CPU` when `cpu` is given; without one, on every
/// CPU the harness had before it pinned itself (if it did).
pub fn pinned_command(cpu: Option<usize>, program: &Path) -> Command {
    let cpus = match cpu {
        Some(cpu) => cpu.to_string(),
        None => match UNPINNED_CPUS.get() {
            Some(all) => all.clone(),
            None => return Command::new(program),
        },
    };
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpus).arg(program);
    command
}

/// The CPUs this process may run on, from `Cpus_allowed_list` (e.g. `0-1` or `0,2-3`).
pub fn allowed_cpus() -> Result<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").context("cannot read /proc")?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list in /proc/self/status")?;
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (usize, usize) = (
            first.parse().context("bad CPU list")?,
            last.parse().context("bad CPU list")?,
        );
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

/// The full path of `program` on `PATH`, if it is there.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the most ever resident.
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (did the process exit?)"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// CPU time the process has used (user + system, all threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    // Linux reports these in clock ticks of USER_HZ, which is 100 on every mainstream build.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces, are after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .context("malformed /proc stat")
    };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// A server under test: the daemon or the reference.
pub struct Server {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    /// From spawn to the moment it announced its address.
    pub startup: Duration,
    /// The daemon's stderr (its JSON log), kept on disk.
    pub log: Option<PathBuf>,
    /// The daemon's `--state-dir`, when it has one.
    pub state_dir: Option<PathBuf>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Empties the daemon's log, as copytruncate rotation would, and returns the records it
    /// held; nothing for the reference. The daemon appends (O_APPEND), so its next record
    /// starts the file again.
    ///
    /// Between measured runs, so that a run measures writing records, not the machine's first
    /// touch of fresh memory: on the VM these figures come from, once a log grew past about
    /// 1 GB each new page-cache page cost ~14 times as much to fill, and the same daemon
    /// answered 20% fewer requests with a p99 six times as long (docs/performance.md).
    pub fn rotate_log(&self) -> Result<u64> {
        let Some(log) = &self.log else {
            return Ok(0);
        };
        // The daemon writes its batch up to one window (10 ms) after the last request: wait
        // until the file stops growing, so no record is written between the count and the cut.
        let size = || std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut last = size();
        loop {
            std::thread::sleep(Duration::from_millis(25));
            let now = size();
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let records = count_lines(log)?;
        OpenOptions::new()
            .write(true)
            .open(log)
            .and_then(|file| file.set_len(0))
            .with_context(|| format!("cannot empty the daemon log {}", log.display()))?;
        Ok(records)
    }

    /// Starts the daemon on `map` with JSON logs appended to `log` (a file, so that writing the
    /// log costs what it costs in production and nothing here has to drain a pipe), and
    /// `extra` arguments.
    pub fn daemon(
        binary: &Path,
        map: &Path,
        log: &Path,
        cpu: Option<usize>,
        what: &str,
        extra: &[String],
    ) -> Result<Server> {
        // A new file, appended to: `rotate_log` can then empty it under the running daemon.
        let stderr = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(log)
            .with_context(|| format!("cannot create the daemon log {}", log.display()))?;
        let mut command = pinned_command(cpu, binary);
        command
            .args(["run", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--log-level", "info", "--config"])
            .arg(map)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let start = Instant::now();
        let mut guard = ChildGuard::spawn(command, what)?;
        let addr = loop {
            if let Some(addr) = listening_addr(log)? {
                break addr;
            }
            if let Some(status) = guard.child.try_wait()? {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{what} exited with {status} before listening; its log:\n{tail}");
            }
            if start.elapsed() > STARTUP_DEADLINE {
                bail!("{what} did not start listening within {STARTUP_DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        Ok(Server {
            startup: start.elapsed(),
            guard,
            addr,
            log: Some(log.to_path_buf()),
            state_dir: extra
                .iter()
                .position(|arg| arg == "--state-dir")
                .and_then(|at| extra.get(at + 1))
                .map(PathBuf::from),
        })
    }

    /// Starts the reference server by running this benchmark binary again with `flag`.
    pub fn reference(flag: &str, cpu: Option<usize>) -> Result<Server> {
        let exe = std::env::current_exe().context("cannot find the benchmark's own binary")?;
        let mut command = pinned_command(cpu, &exe);
        command
            .arg(flag)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let start = Instant::now();
        let mut guard = ChildGuard::spawn(command, "the reference server")?;
        let stdout = guard
            .child
            .stdout
            .take()
            .context("no stdout from the reference server")?;
        // It prints one line, `listening ADDR`, and nothing after it.
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("cannot read the reference server's address")?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("the reference server said {line:?}, not its address"))?;
        Ok(Server {
            startup: start.elapsed(),
            guard,
            addr,
            log: None,
            state_dir: None,
        })
    }
}

/// The address in the daemon's `listening` record, once it has been written.
fn listening_addr(log: &Path) -> Result<Option<SocketAddr>> {
    let text = std::fs::read_to_string(log)
        .with_context(|| format!("cannot read the daemon log {}", log.display()))?;
    for line in text.lines().filter(|l| l.contains("\"listening\"")) {
        let record: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("the daemon wrote a log line that is not JSON: {line}"))?;
        if record["msg"] == "listening" {
            let addr = record["addr"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("no address in the listening record: {line}"))?;
            return Ok(Some(addr));
        }
    }
    Ok(None)
}

/// Lines in a file (log records, for the daemon's log), counted without holding it in memory.
pub fn count_lines(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}
