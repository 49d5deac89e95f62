//! `GET /metrics` (SPEC §6) after real traffic, read with a Prometheus exposition parser.

use serde_json::json;

use crate::util::{wait_until, Daemon, MapDir};

const MAP: &str = "
workflows:
  page: {}
reflexes:
  api_latency.coinbase.high: page
  'disk.**': page
";

/// A scrape: the parsed samples, checked to account for every sample line of `text`.
struct Scrape {
    text: String,
    samples: Vec<prometheus_parse::Sample>,
}

impl Scrape {
    fn of(daemon: &Daemon) -> Scrape {
        let response = daemon.get("/metrics");
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = response.body;
        let lines = text.lines().map(|line| Ok(line.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
        // The parser skips what it cannot read; every sample line must have become a sample.
        let parsed: usize = scrape
            .samples
            .iter()
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => buckets.len(),
                _ => 1,
            })
            .sum();
        let sample_lines = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(parsed, sample_lines, "every sample line parses:\n{text}");
        Scrape {
            text,
            samples: scrape.samples,
        }
    }

    /// The parsed value of the series `metric` whose labels include `labels`.
    fn find(&self, metric: &str, labels: &[(&str, &str)]) -> &prometheus_parse::Value {
        self.samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| &s.value)
            .unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{}", self.text))
    }

    /// The value of the counter or gauge `metric` whose labels include `labels`.
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(metric, labels) {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => *v,
            other => panic!("{metric} is not a counter or gauge: {other:?}"),
        }
    }

    /// The `+Inf` bucket (the observation count) of histogram `metric` with `labels`.
    fn histogram_count(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(metric, labels) {
            prometheus_parse::Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map(|b| b.count)
                .unwrap_or_else(|| panic!("{metric} has no +Inf bucket")),
            other => panic!("{metric} is not a histogram: {other:?}"),
        }
    }
}

#[test]
fn metrics_count_the_traffic_and_parse_as_prometheus_text() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let before = Scrape::of(&daemon);
    assert_eq!(
        before.value(
            "autohealer_anomalies_received_total",
            &[("source", "http"), ("result", "dispatched")]
        ),
        0.0
    );
    assert_eq!(before.value("autohealer_reflexes", &[]), 2.0);
    assert_eq!(
        before.value("autohealer_config_reloads_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(
        before.value("autohealer_config_last_reload_successful", &[]),
        1.0
    );
    let started = before.value(
        "autohealer_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(started > 1.7e9, "a Unix time: {started}");

    let mut action_ids = Vec::new();
    for name in ["api_latency.coinbase.high", "disk.root.full"] {
        let response = daemon.post_anomaly(&json!({"name": name}));
        action_ids.push(response.json()["action_id"].as_str().unwrap().to_string());
    }
    daemon.post_anomaly(&json!({"name": "secret.customer.name"}));
    let alert = json!({
        "status": "firing", "labels": {"alertname": "disk.var.full"}, "annotations": {},
        "startsAt": "2024-05-01T10:00:00Z", "fingerprint": "0000000000000001", "generatorURL": "",
    });
    let mut resolved = alert.clone();
    resolved["status"] = json!("resolved");
    let payload = json!({"version": "4", "alerts": [alert, alert, resolved]});
    let results = daemon.post_json("/alertmanager", &payload).json()["results"].clone();
    action_ids.push(results[0]["action_id"].as_str().unwrap().to_string());
    for id in &action_ids {
        daemon.wait_for_record("healing action finished", |r| r["action_id"] == *id);
    }

    // A rejected edit, then a good one.
    map.write_by_rename("reflexes: [");
    daemon.wait_for_record("reflex map rejected", |_| true);
    let rejected = Scrape::of(&daemon);
    let failures = rejected.value("autohealer_config_reloads_total", &[("result", "failure")]);
    assert!(failures >= 1.0, "{failures}");
    // Every rejected attempt counts, though the ERROR record is written once per bad content.
    assert_eq!(daemon.request("POST", "/-/reload", &[], b"").status, 500);
    assert_eq!(
        Scrape::of(&daemon).value("autohealer_config_reloads_total", &[("result", "failure")]),
        failures + 1.0
    );
    assert_eq!(daemon.records_with("reflex map rejected").len(), 1);
    assert_eq!(
        rejected.value("autohealer_config_last_reload_successful", &[]),
        0.0
    );
    map.write_by_rename(&format!("{MAP}  more.things: page\n"));
    wait_until("the new map", || daemon.generation() == 2);

    let after = Scrape::of(&daemon);
    let received = |source, result| {
        after.value(
            "autohealer_anomalies_received_total",
            &[("source", source), ("result", result)],
        )
    };
    assert_eq!(received("http", "dispatched"), 2.0);
    assert_eq!(received("http", "unmatched"), 1.0);
    assert_eq!(received("alertmanager", "dispatched"), 1.0);
    assert_eq!(received("alertmanager", "duplicate"), 1.0);
    assert_eq!(received("alertmanager", "resolved"), 1.0);
    assert_eq!(received("alertmanager", "unmatched"), 0.0);
    let page_ok = [("workflow", "page"), ("action", "log"), ("outcome", "ok")];
    assert_eq!(after.value("autohealer_actions_total", &page_ok), 3.0);
    assert_eq!(
        after.histogram_count(
            "autohealer_action_duration_seconds",
            &[("workflow", "page")]
        ),
        3.0
    );
    assert_eq!(after.value("autohealer_actions_in_flight", &[]), 0.0);
    assert_eq!(
        after.value("autohealer_config_reloads_total", &[("result", "success")]),
        2.0
    );
    assert_eq!(
        after.value("autohealer_config_reloads_total", &[("result", "failure")]),
        failures + 1.0
    );
    assert_eq!(
        after.value("autohealer_config_last_reload_successful", &[]),
        1.0
    );
    assert!(
        after.value(
            "autohealer_config_last_reload_success_timestamp_seconds",
            &[]
        ) >= started
    );
    assert_eq!(after.value("autohealer_reflexes", &[]), 3.0);
    // The anomaly name is never a label.
    for name in [
        "api_latency.coinbase.high",
        "disk.root.full",
        "secret.customer.name",
        "disk.var.full",
    ] {
        assert!(
            !after.text.contains(name),
            "{name} leaked into\n{}",
            after.text
        );
    }
}

#[test]
fn metrics_answer_only_get() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let response = daemon.request("POST", "/metrics", &[], b"");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET"));
}
