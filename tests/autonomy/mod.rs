//! Safe autonomy (SPEC §9, and §8's bound on per-key rail state), on the real binary over
//! HTTP with real commands: cases and conditions, per-instance cooldowns, verification,
//! escalation, the global budget, and the bound on what a flood of names can make the daemon
//! remember.

mod bounds;
mod budget;
mod cases;
mod escalation;
mod verification;

use std::path::Path;

use serde_json::{json, Value};

use crate::util::{wait_until, Daemon};

/// Posts `name` with `details` and returns the answer's body, whatever it is.
fn answer(daemon: &Daemon, name: &str, details: Value) -> Value {
    let response = daemon.post_anomaly(&json!({"name": name, "details": details}));
    assert!(
        response.status == 202 || response.status == 200,
        "{}",
        response.body
    );
    response.json()
}

/// Posts `name` with `details`, expects it dispatched, and returns its action id.
fn dispatch(daemon: &Daemon, name: &str, details: Value) -> String {
    let response = daemon.post_anomaly(&json!({"name": name, "details": details}));
    assert_eq!(response.status, 202, "{}", response.body);
    response.json()["action_id"].as_str().unwrap().to_string()
}

/// Posts `name` and expects it held back for `reason`.
fn suppressed(daemon: &Daemon, name: &str, details: Value, reason: &str) {
    let body = answer(daemon, name, details);
    assert_eq!(body["status"], "suppressed", "{body}");
    assert_eq!(body["reason"], reason, "{body}");
}

/// Waits for the finished record of `action_id`.
fn finished(daemon: &Daemon, action_id: &str) -> Value {
    daemon.wait_for_record("healing action finished", |r| r["action_id"] == action_id)
}

/// The `/actions` entry of `action_id`.
fn entry(daemon: &Daemon, action_id: &str) -> Value {
    let actions = daemon.get("/actions?limit=1000").json();
    actions["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action_id"] == action_id)
        .cloned()
        .unwrap_or_else(|| panic!("{action_id} not in {actions}"))
}

/// Waits until the `/actions` entry of `action_id` has the verdict `verdict`.
fn wait_for_verdict(daemon: &Daemon, action_id: &str, verdict: &str) {
    wait_until(&format!("verdict {verdict} on {action_id}"), || {
        entry(daemon, action_id)["verdict"] == verdict
    });
}

/// The value of the sample written exactly as `series` in `GET /metrics`, if there is one.
fn metric(daemon: &Daemon, series: &str) -> Option<String> {
    let text = daemon.get("/metrics").body;
    text.lines()
        .find_map(|l| Some(l.strip_prefix(series)?.strip_prefix(' ')?.to_string()))
}

/// A path as a YAML string.
fn yaml_str(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap()
}
