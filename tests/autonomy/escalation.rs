//! Escalation (SPEC §9): once, when an action fails, times out or is not healed; through the
//! escalation workflow's own rails but never the cooldown of the anomaly behind it.

use serde_json::{json, Value};

use super::{dispatch, entry, finished, suppressed, wait_for_verdict, yaml_str};
use crate::util::{Daemon, MapDir};

/// Waits for the `healing action escalated` record of action `id`.
fn escalated_record(daemon: &Daemon, id: &str) -> Value {
    daemon.wait_for_record("healing action escalated", |r| r["action_id"] == id)
}

/// The triggered record of the escalation that `escalated` names, once it is written.
fn escalation_of(daemon: &Daemon, escalated: &Value) -> Value {
    let id = id_of(escalated, "escalation_action_id");
    daemon.wait_for_record("healing action triggered", |r| {
        r["action_id"] == id.as_str()
    })
}

/// The action id in `record`'s `key`.
fn id_of(record: &Value, key: &str) -> String {
    record[key].as_str().unwrap().to_string()
}

/// A map whose `fix` runs `fix` (a shell body) and escalates to `page`, which runs `page`.
fn map_with(map: &MapDir, fix: &str, page: &str, extra: &str) -> String {
    let fix = map.script("fix.sh", fix);
    let page = map.script("page.sh", page);
    format!(
        "workflows:\n  fix: {{exec: {{command: [sh, {}], timeout: 300ms}}, max_concurrent: 5}}\n  page: {{exec: {{command: [sh, {}]}}, max_concurrent: 5{extra}}}\nreflexes:\n  'svc.*.down': {{workflow: fix, cooldown: 1h, escalate: page}}\n  'pager.test': {{workflow: page, cooldown: 1h}}\n",
        yaml_str(&fix),
        yaml_str(&page),
    )
}

#[test]
fn a_failed_action_escalates_once_with_its_details() {
    let map = MapDir::new("reflexes: {}\n");
    let paged = map.file("paged");
    map.write_in_place(&map_with(
        &map,
        "exit 3",
        &format!(
            "echo \"$AUTOHEALER_ANOMALY $AUTOHEALER_DETAILS\" >> {}",
            paged.display()
        ),
        "",
    ));
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "svc.web.down", json!({"host": "web1"}));
    assert_eq!(finished(&daemon, &id)["outcome"], "failed");
    let escalated = escalated_record(&daemon, &id);
    assert_eq!(escalated["level"], "CRIT");
    assert_eq!(escalated["anomaly"], "svc.web.down");
    assert_eq!(escalated["workflow"], "fix");
    assert_eq!(escalated["reason"], "failed");
    let triggered = escalation_of(&daemon, &escalated);
    assert_eq!(triggered["source"], "escalation");
    assert_eq!(triggered["escalated_from"], id.as_str());
    assert_eq!(triggered["workflow"], "page");
    assert_eq!(triggered["details"], json!({"host": "web1"}));
    let page_id = triggered["action_id"].as_str().unwrap();
    assert_eq!(finished(&daemon, page_id)["outcome"], "ok");
    assert_eq!(
        std::fs::read_to_string(&paged).unwrap(),
        "svc.web.down {\"host\":\"web1\"}\n"
    );
    assert_eq!(entry(&daemon, page_id)["workflow"], "page");
    // Once: the escalation escalates no further, and the anomaly is still cooling down.
    assert_eq!(daemon.records_with("healing action escalated").len(), 1);
    suppressed(&daemon, "svc.web.down", json!({}), "cooldown");
}

#[test]
fn a_timeout_escalates_too() {
    let map = MapDir::new("reflexes: {}\n");
    map.write_in_place(&map_with(&map, "exec sleep 5", "true", ""));
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "svc.web.down", json!({}));
    assert_eq!(finished(&daemon, &id)["outcome"], "timeout");
    let escalated = escalated_record(&daemon, &id);
    assert_eq!(escalated["reason"], "timeout");
    let page_id = id_of(&escalation_of(&daemon, &escalated), "action_id");
    assert_eq!(finished(&daemon, &page_id)["outcome"], "ok");
}

#[test]
fn an_action_not_healed_escalates_with_the_recurrence_details() {
    let map = MapDir::new(
        "workflows:\n  restart: {exec: {command: ['true']}}\n  page_oncall: {}\nreflexes:\n  'nginx.*.down': {workflow: restart, verify: 1h, escalate: page_oncall}\n",
    );
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "nginx.web1.down", json!({"try": 1}));
    assert_eq!(finished(&daemon, &id)["outcome"], "ok");
    wait_for_verdict(&daemon, &id, "pending");
    // The restart is not in cooldown and not in flight: the recurrence runs it again too.
    let again = dispatch(&daemon, "nginx.web1.down", json!({"try": 2}));
    let escalated = escalated_record(&daemon, &id);
    assert_eq!(escalated["reason"], "not_healed");
    assert_eq!(escalated["workflow"], "restart");
    let triggered = escalation_of(&daemon, &escalated);
    assert_eq!(triggered["workflow"], "page_oncall");
    assert_eq!(triggered["escalated_from"], id.as_str());
    assert_eq!(triggered["details"], json!({"try": 2}));
    assert_ne!(triggered["action_id"], again.as_str());
}

#[test]
fn an_escalation_passes_the_cooldowns_that_hold_its_anomaly_and_workflow() {
    let map = MapDir::new("reflexes: {}\n");
    map.write_in_place(&map_with(&map, "exit 1", "true", ""));
    let daemon = Daemon::start(&map.path(), &[]);
    // `page` is cooling down for `pager.test`...
    let test_page = dispatch(&daemon, "pager.test", json!({}));
    finished(&daemon, &test_page);
    suppressed(&daemon, "pager.test", json!({}), "cooldown");
    // ...and `svc.web.down` for itself: the escalation of its failure runs all the same.
    let id = dispatch(&daemon, "svc.web.down", json!({}));
    suppressed(&daemon, "svc.web.down", json!({}), "cooldown");
    let escalated = escalated_record(&daemon, &id);
    let page_id = id_of(&escalation_of(&daemon, &escalated), "action_id");
    assert_eq!(finished(&daemon, &page_id)["outcome"], "ok");
}

#[test]
fn an_escalation_is_held_back_by_its_own_breaker() {
    let map = MapDir::new("reflexes: {}\n");
    map.write_in_place(&map_with(
        &map,
        "exit 1",
        "exit 1",
        ", breaker: {failures: 1, within: 1h}",
    ));
    let daemon = Daemon::start(&map.path(), &[]);
    let first = dispatch(&daemon, "svc.a.down", json!({}));
    let escalated = escalated_record(&daemon, &first);
    let page_id = id_of(&escalation_of(&daemon, &escalated), "action_id");
    assert_eq!(finished(&daemon, &page_id)["outcome"], "failed");
    daemon.wait_for_record("circuit opened", |r| r["workflow"] == "page");
    // The paging workflow's circuit is open: the next escalation is held back, and says so.
    let second = dispatch(&daemon, "svc.b.down", json!({}));
    assert_eq!(finished(&daemon, &second)["outcome"], "failed");
    let held = daemon.wait_for_record("healing action suppressed", |r| {
        r["escalated_from"] == second.as_str()
    });
    assert_eq!(held["workflow"], "page");
    assert_eq!(held["reason"], "circuit_open");
    assert_eq!(held["anomaly"], "svc.b.down");
    assert_eq!(daemon.records_with("healing action escalated").len(), 1);
    // It is no anomaly: the received counter saw only the two that were posted.
    let body = daemon.get("/metrics").body;
    assert!(
        body.contains(
            "autohealer_anomalies_received_total{source=\"http\",result=\"dispatched\"} 2"
        ),
        "{body}"
    );
}
