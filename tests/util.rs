//! Test harness: starts the real binary on a loopback port, talks real HTTP to it, and reads its
//! JSON log lines. Every wait is a bounded poll; every child is killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
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
        std::fs::write(self.path(), content).expect("write map");
    }

    /// Writes a temp file and renames it over `map.yml`, as vim, `sed -i` and editors do.
    pub fn write_by_rename(&self, content: &str) {
        let tmp = self.file(".map.yml.tmp");
        std::fs::write(&tmp, content).expect("write temp map");
        std::fs::rename(&tmp, self.path()).expect("rename map");
    }
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
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
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

/// A running daemon, killed on drop.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

/// Spawns the daemon with JSON logs and a thread collecting its stderr lines.
fn spawn(config: &Path, args: &[&str]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(["--log-format", "json"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autohealer");
    let stderr = child.stderr.take().expect("stderr is piped");
    let lines = Arc::new(Mutex::new(Vec::new()));
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    (child, lines)
}

/// A loopback address with a port that was free a moment ago.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr")
}

/// How the daemon exited before it was ready, for startup-failure tests.
#[derive(Debug)]
pub struct StartFailure {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Daemon {
    /// Starts the daemon on `config` with JSON logs on a free loopback port, plus `extra` args.
    pub fn start(config: &Path, extra: &[&str]) -> Daemon {
        Daemon::try_start(config, extra).unwrap_or_else(|failure| {
            panic!(
                "daemon did not start: {:?}\n{}",
                failure.status, failure.stderr
            )
        })
    }

    /// Like `start`, but returns how the daemon exited if it never became ready.
    pub fn try_start(config: &Path, extra: &[&str]) -> Result<Daemon, StartFailure> {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let (mut child, lines) = spawn(config, &args);
        let start = Instant::now();
        loop {
            let listening = lines.lock().unwrap().iter().find_map(|line| {
                let record: Value = serde_json::from_str(line).ok()?;
                (record["msg"] == "listening").then(|| record["addr"].as_str()?.parse().ok())?
            });
            if let Some(addr) = listening {
                return Ok(Daemon { child, addr, lines });
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Let the reader thread collect the last lines.
                std::thread::sleep(Duration::from_millis(50));
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

    /// Starts the daemon on a given loopback address and waits until it answers `/healthz`;
    /// for runs whose log level hides the `listening` record.
    pub fn start_at(config: &Path, addr: SocketAddr, extra: &[&str]) -> Daemon {
        let addr_arg = addr.to_string();
        let mut args = vec!["--listen", addr_arg.as_str()];
        args.extend_from_slice(extra);
        let (child, lines) = spawn(config, &args);
        let daemon = Daemon { child, addr, lines };
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
        self.request(
            "POST",
            "/anomaly",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
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
        // Let the reader thread drain the last lines.
        let lines = self.lines.clone();
        let mut last_len = usize::MAX;
        wait_until("stderr to settle", || {
            std::thread::sleep(Duration::from_millis(20));
            let len = lines.lock().unwrap().len();
            let settled = len == last_len;
            last_len = len;
            settled
        });
        status.unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// A one-request HTTP server that records what it was sent and answers with a fixed response;
/// it stands in for the daemon where the test must see the raw request.
pub struct OneShotServer {
    pub addr: SocketAddr,
    request: Arc<Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OneShotServer {
    /// Listens on a free loopback port and answers the first request with `status` and `body`.
    pub fn start(status: &str, body: &str) -> OneShotServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let request = Arc::new(Mutex::new(None));
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let thread = {
            let request = request.clone();
            std::thread::spawn(move || {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                let _ = stream.set_read_timeout(Some(DEADLINE));
                let text = read_request(&mut stream);
                let _ = stream.write_all(response.as_bytes());
                *request.lock().unwrap() = Some(text);
            })
        };
        OneShotServer {
            addr,
            request,
            thread: Some(thread),
        }
    }

    /// The request received, once it has been answered.
    pub fn request(&self) -> String {
        wait_until("the one-shot server to be sent a request", || {
            self.request.lock().unwrap().is_some()
        });
        self.request.lock().unwrap().clone().unwrap()
    }
}

/// Reads one request: the head, then as many body bytes as `Content-Length` says.
fn read_request(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return text,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

impl Drop for OneShotServer {
    fn drop(&mut self) {
        // Unblock the accept if nobody ever connected, so the thread ends with the test.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
