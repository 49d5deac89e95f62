//! Test harness: starts the real binary on a loopback port, talks real HTTP to it, and reads its
//! JSON log lines. Every wait is a bounded poll; every child is killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any single condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The daemon binary cargo built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_autohealer"))
}

/// Polls `condition` every few milliseconds until it holds or `DEADLINE` passes.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A temp directory holding a reflex map, removed on drop.
pub struct MapDir {
    pub dir: tempfile::TempDir,
}

impl MapDir {
    /// A new directory with `map.yml` holding `content`.
    pub fn new(content: &str) -> MapDir {
        let map = MapDir {
            dir: tempfile::tempdir().expect("create temp dir"),
        };
        map.write_in_place(content);
        map
    }

    /// Path of `map.yml`.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("map.yml")
    }

    /// Path of any file in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Overwrites `map.yml` in place (truncate and write), as `echo > file` does.
    pub fn write_in_place(&self, content: &str) {
        write_private(&self.path(), content);
    }

    /// Writes a temp file and renames it over `map.yml`, as vim, `sed -i` and editors do.
    pub fn write_by_rename(&self, content: &str) {
        let tmp = self.file(".map.yml.tmp");
        write_private(&tmp, content);
        std::fs::rename(&tmp, self.path()).expect("rename map");
    }

    /// Writes a shell script into the directory and returns its path. Maps run it as
    /// `[sh, SCRIPT]`: exec'ing a file just written can fail with ETXTBSY while another test
    /// thread forks with the write descriptor still open.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.file(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        path
    }
}

/// Writes `content` with mode 0600 whatever the umask, as a map with exec workflows must be.
pub fn write_private(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod file");
}

/// A response read off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {:?}", self.body))
    }

    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The value of header `name` (any case) among `headers`.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Sends raw request bytes to `addr` and reads the whole response (the request must close).
pub fn send_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {text:?}")))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Builds an HTTP/1.1 request that closes the connection after the response.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A running daemon, stopped on drop.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    /// The thread reading stderr; it ends at EOF, once the daemon has exited.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// The daemon's stderr as it is read: the lines so far and the thread reading them.
struct Stderr {
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

/// Waits (bounded) until the stderr reader reached EOF, so every line the process wrote is in.
fn finish_reading(reader: std::thread::JoinHandle<()>) {
    wait_until("stderr to reach its end", || reader.is_finished());
    let _ = reader.join();
}

/// The daemon's command line: `config`, JSON logs, then `args`; stderr piped for `launch`.
pub fn daemon_command(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    add_daemon_args(&mut command, config, args);
    command
}

/// Appends the daemon's arguments to `command` (which may run the binary through a wrapper).
pub fn add_daemon_args(command: &mut Command, config: &Path, args: &[&str]) {
    command.arg("--config").arg(config);
    // JSON records, which the helpers read, unless the test asks for another format.
    if !args.contains(&"--log-format") {
        command.args(["--log-format", "json"]);
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
}

/// Spawns `command` (stderr piped) and a thread collecting its stderr lines.
fn spawn_command(mut command: Command) -> (Child, Stderr) {
    let mut child = command.spawn().expect("spawn autohealer");
    let stderr = child.stderr.take().expect("stderr is piped");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    (child, Stderr { lines, reader })
}

/// Runs the daemon as systemd would after socket activation: `listener` as fd 3 (and as the
/// following `fds - 1` descriptors too), `LISTEN_FDS` and `LISTEN_PID` naming the daemon's own
/// pid (`exec` keeps the shell's).
pub fn activated_command(config: &Path, listener: RawFd, fds: u32, args: &[&str]) -> Command {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(format!(
            "export LISTEN_PID=$$ LISTEN_FDS={fds}; exec \"$0\" \"$@\""
        ))
        .arg(binary());
    add_daemon_args(&mut command, config, args);
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) are made.
    unsafe {
        command.pre_exec(move || {
            for target in 3..3 + fds as RawFd {
                let result = if listener == target {
                    // dup2 onto itself would leave close-on-exec set.
                    libc::fcntl(target, libc::F_SETFD, 0)
                } else {
                    libc::dup2(listener, target)
                };
                if result < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command
}

/// How the daemon exited before it was ready, for startup-failure tests.
#[derive(Debug)]
pub struct StartFailure {
    pub status: ExitStatus,
    pub stderr: String,
}

impl StartFailure {
    /// Asserts the exit code, and that stderr says `says`.
    pub fn assert_exit(&self, code: i32, says: &str) {
        assert_eq!(self.status.code(), Some(code));
        assert!(self.stderr.contains(says), "{}", self.stderr);
    }

    fn panic(self) -> Daemon {
        panic!("daemon did not start: {:?}\n{}", self.status, self.stderr)
    }
}

impl Daemon {
    /// Starts the daemon on `config` with JSON logs on a free loopback port, plus `extra` args.
    pub fn start(config: &Path, extra: &[&str]) -> Daemon {
        Daemon::try_start(config, extra).unwrap_or_else(StartFailure::panic)
    }

    /// Like `start`, but returns how the daemon exited if it never became ready.
    pub fn try_start(config: &Path, extra: &[&str]) -> Result<Daemon, StartFailure> {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Daemon::try_launch(daemon_command(config, &args))
    }

    /// Spawns `command` (see `daemon_command`) and waits for its `listening` record.
    pub fn launch(command: Command) -> Daemon {
        Daemon::try_launch(command).unwrap_or_else(StartFailure::panic)
    }

    /// Like `launch`, but returns how the daemon exited if it never became ready.
    pub fn try_launch(command: Command) -> Result<Daemon, StartFailure> {
        let (mut child, Stderr { lines, reader }) = spawn_command(command);
        let start = Instant::now();
        loop {
            let listening = lines.lock().unwrap().iter().find_map(|line| {
                let record: Value = serde_json::from_str(line).ok()?;
                (record["msg"] == "listening").then(|| record["addr"].as_str()?.parse().ok())?
            });
            if let Some(addr) = listening {
                return Ok(Daemon {
                    child,
                    addr,
                    lines,
                    reader: Some(reader),
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                finish_reading(reader);
                let stderr = lines.lock().unwrap().join("\n");
                return Err(StartFailure { status, stderr });
            }
            assert!(
                start.elapsed() < DEADLINE,
                "daemon never reported `listening`"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts the daemon on a listener the test bound itself (passed as systemd would), and
    /// waits until it answers `/healthz`: for runs whose log level hides the `listening` record.
    /// The port is never released between the test choosing it and the daemon serving it.
    pub fn start_quiet(config: &Path, extra: &[&str]) -> Daemon {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let command = activated_command(config, listener.as_raw_fd(), 1, extra);
        let (child, Stderr { lines, reader }) = spawn_command(command);
        drop(listener); // the daemon holds its own copy as fd 3
        let daemon = Daemon {
            child,
            addr,
            lines,
            reader: Some(reader),
        };
        wait_until("the daemon to answer /healthz", || {
            send_raw(addr, &request_bytes("GET", "/healthz", &[], b""))
                .is_ok_and(|r| r.status == 200)
        });
        daemon
    }

    /// Every stderr line so far that parses as a JSON record.
    pub fn records(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Every stderr line so far, raw.
    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Records whose `msg` is `msg`.
    pub fn records_with(&self, msg: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["msg"] == msg)
            .collect()
    }

    /// Waits for a record with `msg` that satisfies `matches`, and returns it.
    pub fn wait_for_record(&self, msg: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_until(&format!("a `{msg}` record"), || {
            found = self.records_with(msg).into_iter().find(|r| matches(r));
            found.is_some()
        });
        found.unwrap()
    }

    /// Sends a request and reads the response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        send_raw(self.addr, &request_bytes(method, path, headers, body))
            .unwrap_or_else(|err| panic!("{method} {path} failed: {err}"))
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// `POST /anomaly` with a JSON body.
    pub fn post_anomaly(&self, body: &Value) -> Response {
        self.post_json("/anomaly", body)
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// Posts an anomaly by name and returns the workflow it was dispatched to, if any.
    pub fn workflow_for(&self, name: &str) -> Option<String> {
        let response = self.post_anomaly(&serde_json::json!({ "name": name }));
        let body = response.json();
        match body["status"].as_str() {
            Some("dispatched") => Some(body["workflow"].as_str()?.to_string()),
            _ => None,
        }
    }

    /// The `generation` of the map in force, from `GET /reflexes`.
    pub fn generation(&self) -> u64 {
        self.get("/reflexes").json()["generation"]
            .as_u64()
            .expect("generation")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a Unix signal to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("send signal");
    }

    /// Waits for the daemon to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut status = None;
        wait_until("the daemon to exit", || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        if let Some(reader) = self.reader.take() {
            finish_reading(reader);
        }
        status.unwrap()
    }
}

impl Drop for Daemon {
    /// SIGTERM first, so the daemon kills the process groups of any actions still running (tests
    /// with long actions pass a short `--shutdown-timeout`); SIGKILL if it has not exited soon.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `path` as a quoted YAML (JSON) string, for maps that name files in a temp dir.
pub fn yaml_str(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap()
}

/// Posts anomaly `name` with `details`, asserts it was dispatched, and returns its action id.
pub fn dispatch(daemon: &Daemon, name: &str, details: Value) -> String {
    let response = daemon.post_anomaly(&serde_json::json!({"name": name, "details": details}));
    assert_eq!(response.status, 202, "{}", response.body);
    response.json()["action_id"].as_str().unwrap().to_string()
}

/// Waits for the `healing action finished` record of `action_id`.
pub fn finished(daemon: &Daemon, action_id: &str) -> Value {
    daemon.wait_for_record("healing action finished", |r| r["action_id"] == action_id)
}

/// A child process killed when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `autohealer ARGS` to completion and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run autohealer");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A request the test receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// Read the request, then answer nothing until the receiver is dropped.
    Hang,
}

/// A real HTTP server on loopback standing in for n8n: records every request and answers from a
/// script of replies (then 200 once the script runs out).
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    /// Starts a receiver that answers with `replies` in order.
    pub fn start(replies: &[Reply]) -> Receiver {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(
            replies
                .iter()
                .copied()
                .collect::<std::collections::VecDeque<_>>(),
        ));
        {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let reply = replies
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or(Reply::Status(200));
                    let (received, stop) = (received.clone(), stop.clone());
                    std::thread::spawn(move || serve_one(stream, reply, &received, &stop));
                }
            });
        }
        Receiver {
            addr,
            received,
            stop,
        }
    }

    /// The receiver's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve_one(
    stream: TcpStream,
    reply: Reply,
    received: &Mutex<Vec<Received>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    received.lock().unwrap().push(Received {
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let mut stream = reader.into_inner();
    match reply {
        Reply::Status(status) => {
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
        Reply::Hang => {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(self.addr);
    }
}
