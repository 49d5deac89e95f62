//! `POST /alertmanager` (SPEC §2) with hand-made webhook payloads shaped as Alertmanager 0.25
//! sends them: firing, resolved, re-sent, the `anomaly` label, and bodies that are not payloads.

use serde_json::{json, Value};

use crate::util::{Daemon, MapDir};

const MAP: &str = "
workflows:
  restart: {}
  page: {}
reflexes:
  'nginx.*.down': restart
  DiskFull: page
";

const STARTS_AT: &str = "2024-05-01T10:00:00.000Z";

/// One alert as Alertmanager writes it into a webhook payload.
fn alert(status: &str, labels: Value, fingerprint: &str) -> Value {
    json!({
        "status": status,
        "labels": labels,
        "annotations": {"summary": "it broke", "runbook_url": "http://wiki/runbook"},
        "startsAt": STARTS_AT,
        "endsAt": if status == "firing" { "0001-01-01T00:00:00Z" } else { "2024-05-01T10:05:00.000Z" },
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0",
        "fingerprint": fingerprint,
    })
}

/// A version-4 webhook payload around `alerts`.
fn payload(alerts: Vec<Value>) -> Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"NginxDown\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "autohealer",
        "groupLabels": {"alertname": "NginxDown"},
        "commonLabels": {"alertname": "NginxDown"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    })
}

fn post(daemon: &Daemon, alerts: Vec<Value>) -> Vec<Value> {
    let response = daemon.post_json("/alertmanager", &payload(alerts));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    response.json()["results"]
        .as_array()
        .expect("results is a list")
        .clone()
}

#[test]
fn firing_alerts_are_dispatched_with_source_alertmanager() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let labels =
        json!({"alertname": "NginxDown", "anomaly": "nginx.web1.down", "instance": "web1"});
    let results = post(
        &daemon,
        vec![
            alert("firing", labels.clone(), "a1b2c3d4e5f60718"),
            alert(
                "firing",
                json!({"alertname": "DiskFull"}),
                "0000000000000002",
            ),
            alert("firing", json!({"alertname": "CpuHot"}), "0000000000000003"),
        ],
    );
    assert_eq!(results.len(), 3);
    // The `anomaly` label wins over `alertname`; otherwise `alertname` is the name.
    assert_eq!(results[0]["status"], "dispatched");
    assert_eq!(results[0]["anomaly"], "nginx.web1.down");
    assert_eq!(results[0]["workflow"], "restart");
    assert_eq!(results[1]["status"], "dispatched");
    assert_eq!(results[1]["anomaly"], "DiskFull");
    assert_eq!(results[1]["workflow"], "page");
    assert_eq!(
        results[2],
        json!({"status": "unmatched", "anomaly": "CpuHot"})
    );

    let action_id = results[0]["action_id"].as_str().unwrap();
    let triggered =
        daemon.wait_for_record("healing action triggered", |r| r["action_id"] == action_id);
    assert_eq!(triggered["source"], "alertmanager");
    assert_eq!(triggered["anomaly"], "nginx.web1.down");
    assert_eq!(
        triggered["details"],
        json!({
            "labels": labels,
            "annotations": {"summary": "it broke", "runbook_url": "http://wiki/runbook"},
            "startsAt": STARTS_AT,
            "fingerprint": "a1b2c3d4e5f60718",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0",
        })
    );
    daemon.wait_for_record("healing action finished", |r| r["action_id"] == action_id);
    let unmatched = daemon.wait_for_record("unmatched anomaly", |r| r["anomaly"] == "CpuHot");
    assert_eq!(unmatched["source"], "alertmanager");
}

#[test]
fn resolved_alerts_are_logged_and_not_acted_on() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let labels = json!({"alertname": "NginxDown", "anomaly": "nginx.web1.down"});
    let results = post(&daemon, vec![alert("resolved", labels, "a1b2c3d4e5f60718")]);
    assert_eq!(
        results,
        [json!({"status": "resolved", "anomaly": "nginx.web1.down"})]
    );
    let record = daemon.wait_for_record("alert resolved", |_| true);
    assert_eq!(record["level"], "INFO");
    assert_eq!(record["source"], "alertmanager");
    assert_eq!(record["anomaly"], "nginx.web1.down");
    assert_eq!(record["fingerprint"], "a1b2c3d4e5f60718");
    assert_eq!(record["starts_at"], STARTS_AT);
    // Records are written in order: once a later anomaly's record is out, none came before it.
    let results = post(
        &daemon,
        vec![alert(
            "firing",
            json!({"alertname": "DiskFull"}),
            "0000000000000002",
        )],
    );
    let action_id = results[0]["action_id"].as_str().unwrap();
    daemon.wait_for_record("healing action triggered", |r| r["action_id"] == action_id);
    assert_eq!(daemon.records_with("healing action triggered").len(), 1);
}

#[test]
fn a_redelivered_alert_is_a_duplicate_and_acts_once() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let labels = json!({"alertname": "NginxDown", "anomaly": "nginx.web1.down"});
    let firing = alert("firing", labels.clone(), "a1b2c3d4e5f60718");
    assert_eq!(
        post(&daemon, vec![firing.clone()])[0]["status"],
        "dispatched"
    );
    // Alertmanager re-sends it with the next group notification, beside a new alert.
    let results = post(
        &daemon,
        vec![
            firing.clone(),
            alert(
                "firing",
                json!({"alertname": "DiskFull"}),
                "0000000000000002",
            ),
        ],
    );
    assert_eq!(
        results[0],
        json!({"status": "duplicate", "anomaly": "nginx.web1.down"})
    );
    assert_eq!(results[1]["status"], "dispatched");
    // The same alert firing again after it resolved has a new startsAt: a new action.
    let mut refired = firing.clone();
    refired["startsAt"] = json!("2024-05-01T11:00:00.000Z");
    let results = post(&daemon, vec![refired]);
    assert_eq!(results[0]["status"], "dispatched");
    let last = results[0]["action_id"].as_str().unwrap();
    daemon.wait_for_record("healing action triggered", |r| r["action_id"] == last);
    let triggered: Vec<_> = daemon
        .records_with("healing action triggered")
        .into_iter()
        .filter(|r| r["anomaly"] == "nginx.web1.down")
        .collect();
    assert_eq!(triggered.len(), 2, "{triggered:?}");
}

#[test]
fn the_memory_of_alerts_acted_on_survives_a_reload() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let firing = alert(
        "firing",
        json!({"alertname": "DiskFull"}),
        "0000000000000002",
    );
    let unmatched = alert("firing", json!({"alertname": "CpuHot"}), "0000000000000003");
    let results = post(&daemon, vec![firing.clone(), unmatched.clone()]);
    assert_eq!(results[0]["status"], "dispatched");
    assert_eq!(results[1]["status"], "unmatched");

    map.write_by_rename(&format!("{MAP}  CpuHot: page\n"));
    crate::util::wait_until("the new map", || daemon.generation() == 2);
    let results = post(&daemon, vec![firing, unmatched]);
    assert_eq!(
        results[0],
        json!({"status": "duplicate", "anomaly": "DiskFull"})
    );
    // An alert that matched nothing was not acted on, so a re-send meets the new reflex.
    assert_eq!(results[1]["status"], "dispatched");
    assert_eq!(results[1]["workflow"], "page");
}

#[test]
fn an_alert_without_a_name_is_invalid_and_the_rest_still_run() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let results = post(
        &daemon,
        vec![
            alert("firing", json!({"job": "node"}), "0000000000000001"),
            alert(
                "firing",
                json!({"alertname": "DiskFull"}),
                "0000000000000002",
            ),
        ],
    );
    assert_eq!(
        results[0],
        json!({"status": "invalid", "error": "the alert has neither an `anomaly` nor an `alertname` label"})
    );
    assert_eq!(results[1]["status"], "dispatched");
    let record = daemon.wait_for_record("invalid alert", |_| true);
    assert_eq!(record["level"], "WARN");
    assert_eq!(record["fingerprint"], "0000000000000001");
}

#[test]
fn an_alert_whose_fingerprint_is_not_alertmanagers_is_invalid() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let disk = json!({"alertname": "DiskFull"});
    let mut huge_start = alert("firing", disk.clone(), "0000000000000004");
    huge_start["startsAt"] = json!("9".repeat(10_000));
    let results = post(
        &daemon,
        vec![
            alert("firing", disk.clone(), "01"),
            alert("firing", disk.clone(), &"f".repeat(1000)),
            huge_start,
            alert("firing", disk, "00000000000000a2"),
        ],
    );
    let not_a_fingerprint = "the alert's `fingerprint` is not 16 hexadecimal digits as \
                             Alertmanager writes it, so a re-sent copy could not be told apart";
    for result in &results[..2] {
        assert_eq!(
            *result,
            json!({"status": "invalid", "error": not_a_fingerprint})
        );
    }
    assert_eq!(
        results[2],
        json!({"status": "invalid", "error": "the alert's `startsAt` is 10000 bytes long; a timestamp has at most 64"})
    );
    assert_eq!(results[3]["status"], "dispatched");
    let record = daemon.wait_for_record("invalid alert", |r| r["fingerprint"] == "01");
    assert_eq!(record["error"], not_a_fingerprint);
}

#[test]
fn bodies_that_are_not_alertmanager_payloads_are_400() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let not_a_payload = "the body is not an Alertmanager webhook payload: ";
    let cases: Vec<(String, String)> = vec![
        (
            "{\"alerts\": [".into(),
            "the body is not valid JSON: EOF while parsing a list at line 1 column 12".into(),
        ),
        (
            "[]".into(),
            format!("{not_a_payload}expected a JSON object with `alerts`"),
        ),
        (
            r#"{"name": "a.b"}"#.into(),
            format!("{not_a_payload}missing field `alerts`"),
        ),
        (
            r#"{"version": "4", "alerts": "many"}"#.into(),
            format!("{not_a_payload}invalid type: string \"many\", expected a sequence"),
        ),
        (
            r#"{"alerts": [{"labels": {}}]}"#.into(),
            format!("{not_a_payload}missing field `status`"),
        ),
        (
            json!({"alerts": [alert("pending", json!({"alertname": "A"}), "0000000000000001")]})
                .to_string(),
            format!("{not_a_payload}unknown variant `pending`, expected `firing` or `resolved`"),
        ),
        (
            json!({"version": "5", "alerts": []}).to_string(),
            format!("{not_a_payload}version \"5\" is not supported; AutoHealer reads version 4"),
        ),
    ];
    for (body, message) in cases {
        let response = daemon.request(
            "POST",
            "/alertmanager",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(response.status, 400, "{body}");
        assert_eq!(response.json(), json!({"error": message}), "{body}");
    }
    // Nothing in a rejected payload was acted on.
    let mixed = json!({"alerts": [alert("firing", json!({"alertname": "DiskFull"}), "0000000000000001"), {"status": "firing"}]});
    assert_eq!(daemon.post_json("/alertmanager", &mixed).status, 400);
    // Records are written in order: once a later anomaly's record is out, none came before it.
    daemon.post_anomaly(&json!({"name": "sentinel"}));
    daemon.wait_for_record("unmatched anomaly", |r| r["anomaly"] == "sentinel");
    assert!(daemon.records_with("healing action triggered").is_empty());
    // An empty list of alerts is a payload, with no results.
    assert_eq!(post(&daemon, vec![]), Vec::<Value>::new());
}

#[test]
fn alertmanager_shares_the_http_limits_of_anomaly() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &["--max-body", "200"]);
    let body = payload(vec![alert(
        "firing",
        json!({"alertname": "DiskFull"}),
        "0000000000000001",
    )])
    .to_string();
    let response = daemon.request(
        "POST",
        "/alertmanager",
        &[("Content-Type", "text/plain")],
        body.as_bytes(),
    );
    assert_eq!(response.status, 415);
    let response = daemon.request(
        "POST",
        "/alertmanager",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(response.status, 413);
    assert_eq!(
        response.json(),
        json!({"error": "the body is larger than 200 bytes"})
    );
    let response = daemon.get("/alertmanager");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("POST"));
}
