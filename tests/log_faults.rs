//! The log under faults (SPEC §8): caller text cannot forge a term line, the audit log's disk
//! fills and recovers, and stderr's reader goes away.

use std::io::{BufRead, BufReader};
use std::path::Path;

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::util::{daemon_command, send_raw, wait_until, Daemon, KillOnDrop, MapDir};

/// A map with one log-only workflow for anomaly `a`.
const PAGE_MAP: &str = "workflows: {page: {}}\nreflexes: {a: page}\n";

/// Posts anomaly `a`, which must be dispatched, and returns its action id.
fn dispatch(daemon: &Daemon) -> String {
    let response = daemon.post_anomaly(&json!({"name": "a"}));
    assert_eq!(response.status, 202, "{}", response.body);
    response.json()["action_id"].as_str().unwrap().to_string()
}

/// The JSON lines of the file at `path` (none if it does not exist).
fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The healing-action messages in `lines` for `action_id`, in order.
fn audited(lines: &[Value], action_id: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|line| line["action_id"] == action_id)
        .map(|line| line["msg"].as_str().unwrap().to_string())
        .collect()
}

/// The value of `autohealer_audit_write_errors_total`.
fn audit_write_errors(daemon: &Daemon) -> u64 {
    let text = daemon.get("/metrics").body;
    text.lines()
        .find_map(|line| line.strip_prefix("autohealer_audit_write_errors_total "))
        .unwrap_or_else(|| panic!("no audit error counter in\n{text}"))
        .parse()
        .unwrap()
}

/// Points the symlink `link` at `target` in one step, as `ln -sfn` does.
fn repoint(link: &Path, target: &Path) {
    let new = link.with_extension("new");
    std::os::unix::fs::symlink(target, &new).unwrap();
    std::fs::rename(&new, link).unwrap();
}

/// A term line as slog-term writes it: local time, level, message.
fn is_term_record(line: &str) -> bool {
    let pattern = regex::Regex::new(
        r"^[A-Z][a-z]{2} [0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3} (CRIT|ERRO|WARN|INFO|DEBG|TRCE) ",
    )
    .unwrap();
    pattern.is_match(line)
}

#[test]
fn term_lines_cannot_be_forged_by_output_or_alert_fields() {
    let map = MapDir::new(
        "workflows:\n  echo: {exec: {command: [printf, '%s', '{{details.x}}']}}\n\
         reflexes: {a: echo, Forged: echo}\n",
    );
    let daemon = Daemon::start_quiet(&map.path(), &["--log-format", "term"]);
    let forged = "one\nDec 03 08:44:29.000 CRIT healing action finished, outcome: ok\x1b[31mred";
    let response = daemon.post_anomaly(&json!({"name": "a", "details": {"x": forged}}));
    assert_eq!(response.status, 202, "{}", response.body);
    // A resolved alert's `startsAt` is written into its record as the caller sent it.
    let alert = json!({
        "status": "resolved",
        "labels": {"alertname": "Forged"},
        "startsAt": "2024-05-01T10:00:00Z\nDec 03 08:44:29.000 CRIT circuit opened",
        "fingerprint": "0123456789abcdef",
    });
    let response = daemon.post_json("/alertmanager", &json!({"alerts": [alert]}));
    assert_eq!(response.status, 200, "{}", response.body);
    wait_until("the finished and resolved lines", || {
        let text = daemon.stderr();
        // `exit_code` is the finished record's own (the forged text holds its message too).
        text.contains("exit_code: ") && text.contains("alert resolved")
    });
    let text = daemon.stderr();
    assert!(!text.contains('\x1b'), "a raw ESC reached stderr:\n{text}");
    for line in text.lines() {
        assert!(
            is_term_record(line),
            "a line that is no record: {line:?}\n{text}"
        );
    }
    assert!(
        text.contains(r"output: one\nDec 03 08:44:29.000 CRIT healing action finished, outcome: ok\u001b[31mred"),
        "{text}"
    );
    assert!(
        text.contains(r"starts_at: 2024-05-01T10:00:00Z\nDec 03 08:44:29.000 CRIT circuit opened"),
        "{text}"
    );
}

/// The stderr lines that hold `text`.
fn lines_with(daemon: &Daemon, text: &str) -> Vec<String> {
    daemon
        .stderr()
        .lines()
        .filter(|line| line.contains(text))
        .map(str::to_string)
        .collect()
}

/// The audit log's disk fills (its path a symlink to /dev/full, where every write fails with
/// ENOSPC) and recovers (the symlink re-pointed at a file), with logs in `format`.
fn audit_log_fills_and_recovers(format: &str) {
    let map = MapDir::new(PAGE_MAP);
    let link = map.file("audit.log");
    std::os::unix::fs::symlink("/dev/full", &link).unwrap();
    let daemon = Daemon::start_quiet(
        &map.path(),
        &[
            "--log-format",
            format,
            "--audit-log",
            link.to_str().unwrap(),
        ],
    );
    assert_eq!(audit_write_errors(&daemon), 0);
    // Dispatch goes on, and each failed write is counted.
    let first = dispatch(&daemon);
    wait_until("a failed write", || audit_write_errors(&daemon) >= 1);
    let counted = audit_write_errors(&daemon);
    let second = dispatch(&daemon);
    wait_until("another failed write", || {
        audit_write_errors(&daemon) > counted
    });
    // Every record still reached stderr.
    for id in [&first, &second] {
        wait_until("both records of an action on stderr", || {
            lines_with(&daemon, id).len() == 2
        });
    }
    let failed = lines_with(&daemon, "audit log write failed");
    assert_eq!(failed.len(), 1, "reported once per 10 s: {failed:?}");
    assert!(failed[0].contains("ERRO"), "{}", failed[0]);
    assert!(
        failed[0].contains("No space left on device"),
        "{}",
        failed[0]
    );

    // Space again: the file at the path is opened anew, and the failure's end is reported.
    let counted = audit_write_errors(&daemon);
    let real = map.file("real.log");
    repoint(&link, &real);
    let third = dispatch(&daemon);
    wait_until("the third action's records in the new file", || {
        audited(&json_lines(&real), &third).len() == 2
    });
    assert_eq!(
        audited(&json_lines(&real), &third),
        ["healing action triggered", "healing action finished"]
    );
    wait_until("the recovery on stderr", || {
        !lines_with(&daemon, "audit log recovered").is_empty()
    });
    let recovered = lines_with(&daemon, "audit log recovered");
    assert!(recovered[0].contains("INFO"), "{}", recovered[0]);
    assert_eq!(audit_write_errors(&daemon), counted);
    assert_eq!(lines_with(&daemon, "audit log write failed").len(), 1);
}

#[test]
fn audit_log_on_a_full_disk_fails_loudly_and_recovers_json() {
    audit_log_fills_and_recovers("json");
}

#[test]
fn audit_log_on_a_full_disk_fails_loudly_and_recovers_term() {
    audit_log_fills_and_recovers("term");
}

/// The address in the `listening` record of either format.
fn listening_addr(line: &str) -> Option<std::net::SocketAddr> {
    if let Ok(record) = serde_json::from_str::<Value>(line) {
        return (record["msg"] == "listening").then(|| record["addr"].as_str()?.parse().ok())?;
    }
    let (_, rest) = line.split_once(" listening, ")?;
    let (_, addr) = rest.split_once("addr: ")?;
    addr.split([',', ' ']).next()?.parse().ok()
}

/// The daemon keeps serving when its stderr's reader goes away, and the audit log still gets
/// every healing-action record, with logs in `format`.
fn serves_after_the_stderr_reader_is_gone(format: &str) {
    let map = MapDir::new(PAGE_MAP);
    let audit = map.file("audit.log");
    let mut command = daemon_command(
        &map.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            format,
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    );
    let mut child = KillOnDrop(command.spawn().unwrap());
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no `listening`");
        if let Some(addr) = listening_addr(&line) {
            break addr;
        }
    };
    // The reader goes away: every write to stderr now fails with EPIPE.
    drop(stderr);
    let post = |body: &str| {
        send_raw(
            addr,
            &crate::util::request_bytes(
                "POST",
                "/anomaly",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            ),
        )
        .unwrap()
    };
    // Enough records to fill a pipe many times over.
    let mut ids = Vec::new();
    for _ in 0..300 {
        let response = post(r#"{"name":"a"}"#);
        assert_eq!(response.status, 202, "{}", response.body);
        ids.push(response.json()["action_id"].as_str().unwrap().to_string());
        assert_eq!(post(r#"{"name":"unmatched"}"#).status, 200);
    }
    let health = send_raw(
        addr,
        &crate::util::request_bytes("GET", "/healthz", &[], b""),
    )
    .unwrap();
    assert_eq!(health.status, 200);
    assert!(child.0.try_wait().unwrap().is_none(), "the daemon exited");
    wait_until("every record in the audit log", || {
        json_lines(&audit).len() == 2 * ids.len()
    });
    let lines = json_lines(&audit);
    for id in &ids {
        assert_eq!(
            audited(&lines, id),
            ["healing action triggered", "healing action finished"]
        );
    }
    // And it still stops cleanly.
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let mut status = None;
    wait_until("the daemon to exit", || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "{status:?}");
}

#[test]
fn serves_after_the_stderr_reader_is_gone_json() {
    serves_after_the_stderr_reader_is_gone("json");
}

#[test]
fn serves_after_the_stderr_reader_is_gone_term() {
    serves_after_the_stderr_reader_is_gone("term");
}
