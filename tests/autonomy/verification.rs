//! Did it heal? (SPEC §9 "Verification"): a quiet window, a recurrence inside it, one after
//! it, Alertmanager's `resolved`, the verdict in `/actions` and the metric, across a reload.

use serde_json::json;

use super::{dispatch, entry, finished, metric, wait_for_verdict};
use crate::util::{wait_until, Daemon, MapDir};

/// A restart that works (the command is `true`) with a verify window of `verify`, and a
/// breaker that opens on one failure.
fn restart_map(verify: &str) -> String {
    format!(
        "workflows:\n  restart:\n    exec: {{command: ['true']}}\n    breaker: {{failures: 1, within: 1h}}\nreflexes:\n  'nginx.*.down': {{workflow: restart, verify: {verify}}}\n  other: restart\n"
    )
}

#[test]
fn a_quiet_window_is_verified_with_no_request_arriving() {
    let map = MapDir::new(&restart_map("300ms"));
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "nginx.web1.down", json!({}));
    assert_eq!(finished(&daemon, &id)["outcome"], "ok");
    // Nothing else is sent: the sweeper judges the window when it ends.
    let verified =
        daemon.wait_for_record("healing action verified", |r| r["action_id"] == id.as_str());
    assert_eq!(verified["level"], "INFO");
    assert_eq!(verified["anomaly"], "nginx.web1.down");
    assert_eq!(verified["workflow"], "restart");
    assert_eq!(verified["verified_by"], "quiet_window");
    assert_eq!(entry(&daemon, &id)["verdict"], "healed");
    assert_eq!(
        metric(
            &daemon,
            r#"autohealer_actions_verified_total{workflow="restart",verdict="healed"}"#
        )
        .as_deref(),
        Some("1")
    );
}

#[test]
fn a_recurrence_inside_the_window_is_not_healed_and_opens_the_breaker() {
    let map = MapDir::new(&restart_map("1h"));
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "nginx.web1.down", json!({}));
    assert_eq!(finished(&daemon, &id)["outcome"], "ok");
    wait_for_verdict(&daemon, &id, "pending");
    // Another instance is another key: no verdict on the first.
    let other = dispatch(&daemon, "nginx.web2.down", json!({}));
    finished(&daemon, &other);
    assert_eq!(entry(&daemon, &id)["verdict"], "pending");
    // The same key again: the restart did not hold. The breaker counts it and opens, so the
    // new anomaly itself is held back.
    let response = daemon.post_anomaly(&json!({"name": "nginx.web1.down"}));
    assert_eq!(
        response.json(),
        json!({"status": "suppressed", "anomaly": "nginx.web1.down", "workflow": "restart", "reason": "circuit_open"})
    );
    let record = daemon.wait_for_record("healing action not healed", |r| {
        r["action_id"] == id.as_str()
    });
    assert_eq!(record["level"], "CRIT");
    assert_eq!(record["anomaly"], "nginx.web1.down");
    assert_eq!(record["workflow"], "restart");
    assert!(
        record["recurred_after_ms"].as_u64().unwrap() < 10_000,
        "{record}"
    );
    let opened = daemon.wait_for_record("circuit opened", |r| r["workflow"] == "restart");
    assert_eq!(opened["failures"], 1);
    assert_eq!(entry(&daemon, &id)["verdict"], "not_healed");
    assert_eq!(entry(&daemon, &other)["verdict"], "pending");
    assert_eq!(
        metric(
            &daemon,
            r#"autohealer_actions_verified_total{workflow="restart",verdict="not_healed"}"#
        )
        .as_deref(),
        Some("1")
    );
    // The open breaker holds back every reflex of the workflow.
    let plain = daemon.post_anomaly(&json!({"name": "other"}));
    assert_eq!(plain.json()["reason"], "circuit_open");
}

#[test]
fn a_recurrence_after_the_window_is_a_new_problem() {
    let map = MapDir::new(&restart_map("300ms"));
    let daemon = Daemon::start(&map.path(), &[]);
    let first = dispatch(&daemon, "nginx.web1.down", json!({}));
    finished(&daemon, &first);
    wait_for_verdict(&daemon, &first, "healed");
    // At or after the end, the same key opens a new action and window; nothing was not healed.
    let second = dispatch(&daemon, "nginx.web1.down", json!({}));
    finished(&daemon, &second);
    daemon.wait_for_record("healing action verified", |r| {
        r["action_id"] == second.as_str()
    });
    assert!(daemon.records_with("healing action not healed").is_empty());
    assert_eq!(daemon.records_with("healing action verified").len(), 2);
}

#[test]
fn an_alertmanager_resolved_heals_the_waiting_action() {
    let map = MapDir::new(&restart_map("1h"));
    let daemon = Daemon::start(&map.path(), &[]);
    let alert = |status: &str| {
        json!({"version": "4", "alerts": [{
            "status": status,
            "labels": {"alertname": "NginxDown", "anomaly": "nginx.web1.down"},
            "startsAt": "2024-05-01T10:00:00Z",
            "fingerprint": "4f6cb5ae4e6d3a8f",
        }]})
    };
    let response = daemon.post_json("/alertmanager", &alert("firing"));
    let id = response.json()["results"][0]["action_id"]
        .as_str()
        .unwrap()
        .to_string();
    finished(&daemon, &id);
    wait_for_verdict(&daemon, &id, "pending");
    let response = daemon.post_json("/alertmanager", &alert("resolved"));
    assert_eq!(response.json()["results"][0]["status"], "resolved");
    let verified =
        daemon.wait_for_record("healing action verified", |r| r["action_id"] == id.as_str());
    assert_eq!(verified["verified_by"], "resolved");
    assert_eq!(entry(&daemon, &id)["verdict"], "healed");
}

#[test]
fn an_open_window_survives_a_reload() {
    let map = MapDir::new(&restart_map("1h"));
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "nginx.web1.down", json!({}));
    finished(&daemon, &id);
    wait_for_verdict(&daemon, &id, "pending");
    map.write_by_rename(&format!("{}  added: restart\n", restart_map("1h")));
    wait_until("the edit to load", || daemon.generation() == 2);
    daemon.post_anomaly(&json!({"name": "nginx.web1.down"}));
    daemon.wait_for_record("healing action not healed", |r| {
        r["action_id"] == id.as_str()
    });
}
