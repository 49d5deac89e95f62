//! The log under faults (SPEC §8): caller text cannot forge a term line, the audit log's disk
//! fills and recovers, and stderr's reader goes away.

use serde_json::json;

use crate::util::{Daemon, MapDir};

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
    crate::util::wait_until("the finished and resolved lines", || {
        let text = daemon.stderr();
        text.contains("healing action finished") && text.contains("alert resolved")
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
