//! Operator brakes and memory (SPEC §9 "Silences", "Memory across restarts"), on the real binary
//! over HTTP with real commands: silences from the API and the CLI, and every kind of state the
//! daemon keeps in `--state-dir`, across clean stops, SIGKILL, bad files and unwritable
//! directories.

mod silences;
mod state;
mod state_faults;

use std::path::Path;

use serde_json::{json, Value};

use crate::util::{wait_until, Daemon};

/// Posts `name` and returns the answer's body (200 or 202).
fn answer(daemon: &Daemon, name: &str) -> Value {
    let response = daemon.post_anomaly(&json!({ "name": name }));
    assert!(
        response.status == 202 || response.status == 200,
        "{}",
        response.body
    );
    response.json()
}

/// Posts `name`, expects it dispatched, and returns its action id.
fn dispatch(daemon: &Daemon, name: &str) -> String {
    let body = answer(daemon, name);
    assert_eq!(body["status"], "dispatched", "{body}");
    body["action_id"].as_str().unwrap().to_string()
}

/// Posts `name` and expects it held back for `reason`; returns the answer.
fn held_back(daemon: &Daemon, name: &str, reason: &str) -> Value {
    let body = answer(daemon, name);
    assert_eq!(body["status"], "suppressed", "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    body
}

/// Waits for the finished record of `action_id` and returns its outcome.
fn outcome(daemon: &Daemon, action_id: &str) -> String {
    let record = daemon.wait_for_record("healing action finished", |r| r["action_id"] == action_id);
    record["outcome"].as_str().unwrap().to_string()
}

/// `POST /silences` with `body`: the status and the answer.
fn add_silence(daemon: &Daemon, body: Value) -> (u16, Value) {
    let response = daemon.post_json("/silences", &body);
    (response.status, response.json())
}

/// The value of the sample written exactly as `series` in `GET /metrics`, if there is one.
fn metric(daemon: &Daemon, series: &str) -> Option<String> {
    let text = daemon.get("/metrics").body;
    text.lines()
        .find_map(|l| Some(l.strip_prefix(series)?.strip_prefix(' ')?.to_string()))
}

/// An Alertmanager webhook payload with one alert.
fn alert_payload(status: &str, alertname: &str, fingerprint: &str) -> Value {
    json!({
        "version": "4",
        "status": status,
        "receiver": "autohealer",
        "alerts": [{
            "status": status,
            "labels": {"alertname": alertname},
            "annotations": {},
            "startsAt": "2026-12-03T10:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": fingerprint,
        }],
    })
}

/// The one result of posting an Alertmanager payload with one alert.
fn alert_result(daemon: &Daemon, payload: &Value) -> Value {
    let response = daemon.post_json("/alertmanager", payload);
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()["results"][0].clone()
}

/// The state file in `dir`, parsed, once it holds what `holds` looks for.
fn wait_for_state_file(dir: &Path, what: &str, holds: impl Fn(&Value) -> bool) -> Value {
    let path = dir.join("state.json");
    let mut found = Value::Null;
    wait_until(&format!("the state file to hold {what}"), || {
        let Ok(text) = std::fs::read_to_string(&path) else {
            return false;
        };
        found = serde_json::from_str(&text).unwrap_or(Value::Null);
        holds(&found)
    });
    found
}
