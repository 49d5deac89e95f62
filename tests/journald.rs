//! journald priorities (SPEC §10): with stderr redirected into a file whose device and inode
//! `JOURNAL_STREAM` names, as systemd connects the journal, every line starts with `<N>`; with
//! any other value, lines are unchanged. The real binary, in both log formats.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::util::{
    activated_command, binary, request_bytes, send_raw, wait_until, write_private, KillOnDrop,
    MapDir,
};

const MAP: &str = "workflows:\n  page: {}\nreflexes:\n  disk.root.full: page\n";

/// `DEV:INO` of `path`, as systemd writes `JOURNAL_STREAM`.
fn stream_of(path: &Path) -> String {
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

/// Runs the daemon with stderr appended to `stderr_file` and `JOURNAL_STREAM=journal_stream`,
/// makes it write a record at each level (DEBG, INFO, WARN, CRIT, ERRO), stops it, and returns
/// its stderr lines.
fn run_through_every_level(map: &MapDir, format: &str, journal_stream: &str) -> Vec<String> {
    let stderr_file = map.file("stderr.log");
    let stderr = std::fs::File::create(&stderr_file).unwrap();
    let journal_stream = journal_stream.replace("STDERR", &stream_of(&stderr_file));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let audit = map.file("audit.jsonl").display().to_string();
    let mut command = activated_command(
        &map.path(),
        listener.as_raw_fd(),
        1,
        &[
            "--log-format",
            format,
            "--log-level",
            "debug",
            "--audit-log",
            &audit,
        ],
    );
    command.env("JOURNAL_STREAM", journal_stream).stderr(stderr);
    let mut daemon = KillOnDrop(command.spawn().unwrap());
    drop(listener);
    let request = |method: &str, path: &str, body: &str| {
        let headers = [("Content-Type", "application/json")];
        send_raw(
            addr,
            &request_bytes(method, path, &headers, body.as_bytes()),
        )
        .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
    };
    wait_until("the daemon to answer /healthz", || {
        send_raw(addr, &request_bytes("GET", "/healthz", &[], b"")).is_ok_and(|r| r.status == 200)
    });
    assert_eq!(request("POST", "/-/reload", "").status, 200); // DEBG reflex map unchanged
    assert_eq!(
        request("POST", "/anomaly", r#"{"name":"disk.root.full"}"#).status,
        202
    ); // CRIT
    assert_eq!(
        request("POST", "/anomaly", r#"{"name":"nope"}"#).status,
        200
    ); // WARN unmatched
    write_private(&map.path(), "reflexes: [\n");
    assert_eq!(request("POST", "/-/reload", "").status, 500); // ERRO reflex map rejected
    kill(Pid::from_raw(daemon.0.id() as i32), Signal::SIGTERM).unwrap();
    wait_until("the daemon to exit", || {
        daemon.0.try_wait().is_ok_and(|s| s.is_some())
    });
    let written = std::fs::read_to_string(&stderr_file).unwrap();
    // The audit file is no journal: its lines are plain JSON whatever stderr is.
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(!audit.is_empty());
    for line in audit.lines() {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "{line}");
    }
    written.lines().map(str::to_string).collect()
}

/// The priority journald reads for a record written at `level` (sd-daemon(3)).
fn priority(level: &str) -> &'static str {
    match level {
        "CRIT" => "<2>",
        "ERRO" => "<3>",
        "WARN" => "<4>",
        "INFO" => "<6>",
        "DEBG" | "TRCE" => "<7>",
        other => panic!("unknown level {other}"),
    }
}

/// Every line carries the priority of its level, and every level was seen.
fn assert_prioritized(lines: &[String], level_of: impl Fn(&str) -> String) {
    let mut seen = std::collections::BTreeSet::new();
    for line in lines {
        let (prefix, rest) = line.split_at(line.find('>').map_or(0, |at| at + 1));
        let level = level_of(rest);
        assert_eq!(prefix, priority(&level), "{line}");
        seen.insert(level);
    }
    let all: std::collections::BTreeSet<String> = ["CRIT", "ERRO", "WARN", "INFO", "DEBG"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(seen, all, "{lines:#?}");
}

fn json_level(line: &str) -> String {
    let record: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line:?}"));
    record["level"].as_str().unwrap().to_string()
}

/// slog-term's line: `Dec 03 09:27:28.023 INFO message, key: value`.
fn term_level(line: &str) -> String {
    line.split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn under_the_journal_every_json_line_starts_with_its_priority() {
    let map = MapDir::new(MAP);
    let lines = run_through_every_level(&map, "json", "STDERR");
    assert_prioritized(&lines, json_level);
}

#[test]
fn under_the_journal_every_term_line_starts_with_its_priority() {
    let map = MapDir::new(MAP);
    let lines = run_through_every_level(&map, "term", "STDERR");
    assert_prioritized(&lines, term_level);
}

#[test]
fn elsewhere_lines_are_unchanged() {
    // JOURNAL_STREAM inherited from a service, while stderr went elsewhere: another file's
    // device and inode, or garbage.
    let map = MapDir::new(MAP);
    let other = map.file("other");
    std::fs::write(&other, "").unwrap();
    for stream in [stream_of(&other), "garbage".to_string()] {
        write_private(&map.path(), MAP);
        let lines = run_through_every_level(&map, "json", &stream);
        assert!(lines.len() >= 5, "{lines:#?}");
        for line in &lines {
            assert!(line.starts_with('{'), "{line}");
            json_level(line);
        }
    }
}

#[test]
fn the_last_words_of_a_failed_start_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let stderr_file = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_file).unwrap();
    let status = std::process::Command::new(binary())
        .args(["--config", "/nonexistent/map.yml", "--log-format", "json"])
        .env("JOURNAL_STREAM", stream_of(&stderr_file))
        .stdin(Stdio::null())
        .stderr(stderr)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(78));
    let written = std::fs::read_to_string(&stderr_file).unwrap();
    assert!(
        written.lines().any(|l| l.starts_with(
            "<3>autohealer: cannot run: /nonexistent/map.yml: cannot read the reflex map"
        )),
        "{written}"
    );
    assert!(written.lines().all(|l| l.starts_with('<')), "{written}");
}
