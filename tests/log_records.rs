//! The healing log (SPEC §5): every record and key, in JSON and term format, and none lost on
//! shutdown.

use std::io::Read;
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::util::{binary, wait_until, Daemon, MapDir};

const MAP: &str = "
workflows:
  run_coinbase_health_check_and_clear_cache: {}
reflexes:
  api_latency.coinbase.high:
    workflow: run_coinbase_health_check_and_clear_cache
    params: {exchange: coinbase}
";

#[test]
fn details_sent_over_several_lines_are_one_record_line() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let details = json!({
        "region": "us-east-1",
        "note": "line one\nline two \"quoted\" \u{1} é",
        "nested": {"list": [1, 2.5, null, true], "big": 12345678901234567u64},
    });
    // Pretty-printed: line breaks between the tokens, as a shell heredoc would send it.
    let body = format!(
        "{{\n  \"name\": \"api_latency.coinbase.high\",\n  \"details\": {}\n}}\n",
        serde_json::to_string_pretty(&details).unwrap()
    );
    let response = daemon.request(
        "POST",
        "/anomaly",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.body);
    let action_id = response.json()["action_id"].as_str().unwrap().to_string();
    let triggered =
        daemon.wait_for_record("healing action triggered", |r| r["action_id"] == action_id);
    assert_eq!(triggered["details"], details);
    // Every line the daemon wrote is one whole JSON record.
    for line in daemon.stderr().lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON record: {line:?}"
        );
    }
}

#[test]
fn healing_records_carry_every_key() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let response = daemon.post_anomaly(&json!({
        "name": "api_latency.coinbase.high",
        "details": {"latency_ms": 5000, "region": "us-east-1"},
    }));
    assert_eq!(response.status, 202);
    let action_id = response.json()["action_id"].as_str().unwrap().to_string();
    let version = daemon.get("/reflexes").json()["version"].clone();

    let triggered =
        daemon.wait_for_record("healing action triggered", |r| r["action_id"] == action_id);
    assert_eq!(triggered["level"], "CRIT");
    assert!(triggered["ts"].is_string());
    assert_eq!(triggered["anomaly"], "api_latency.coinbase.high");
    assert_eq!(
        triggered["workflow"],
        "run_coinbase_health_check_and_clear_cache"
    );
    assert_eq!(triggered["action"], "log");
    assert_eq!(triggered["source"], "http");
    assert_eq!(triggered["map_version"], version);
    // Nested objects, not strings.
    assert_eq!(
        triggered["details"],
        json!({"latency_ms": 5000, "region": "us-east-1"})
    );
    assert_eq!(triggered["params"], json!({"exchange": "coinbase"}));
    assert_eq!(triggered["dry_run"], false);

    let finished =
        daemon.wait_for_record("healing action finished", |r| r["action_id"] == action_id);
    assert_eq!(finished["level"], "CRIT");
    assert_eq!(finished["anomaly"], "api_latency.coinbase.high");
    assert_eq!(
        finished["workflow"],
        "run_coinbase_health_check_and_clear_cache"
    );
    assert_eq!(finished["action"], "log");
    assert_eq!(finished["outcome"], "ok");
    assert!(finished["duration_ms"].is_u64());
    assert!(
        finished.get("error").is_none(),
        "no error key when ok: {finished}"
    );

    let loaded = daemon.wait_for_record("reflex map loaded", |_| true);
    assert_eq!(loaded["level"], "INFO");
    assert_eq!(loaded["trigger"], "startup");
    assert_eq!(loaded["generation"], 1);
    assert_eq!(loaded["reflexes"], 1);
    assert_eq!(loaded["workflows"], 1);
    assert_eq!(loaded["version"], version);
}

#[test]
fn log_level_filters_records() {
    let map = MapDir::new(MAP);
    // `listening` is INFO, so the harness finds this daemon by its port instead.
    let daemon = Daemon::start_quiet(&map.path(), &["--log-level", "warning"]);
    daemon.post_anomaly(&json!({"name": "nothing.matches"}));
    daemon.post_anomaly(&json!({"name": "api_latency.coinbase.high"}));
    daemon.wait_for_record("healing action finished", |_| true);
    daemon.wait_for_record("unmatched anomaly", |_| true);
    assert!(daemon.records_with("reflex map loaded").is_empty());
}

#[test]
fn term_format_is_human_readable() {
    let map = MapDir::new(MAP);
    let mut child = crate::util::KillOnDrop(
        Command::new(binary())
            .arg("--config")
            .arg(map.path())
            .args(["--listen", "127.0.0.1:0", "--log-format", "term"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stderr = child.0.stderr.take().unwrap();
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let text = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    wait_until("the listening line", || {
        text.lock().unwrap().contains("listening")
    });
    let addr: std::net::SocketAddr = {
        let text = text.lock().unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("listening"))
            .unwrap()
            .to_string();
        let start = line.find("addr: ").unwrap() + "addr: ".len();
        line[start..]
            .split([',', ' '])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let response = crate::util::send_raw(
        addr,
        &crate::util::request_bytes(
            "POST",
            "/anomaly",
            &[("Content-Type", "application/json")],
            br#"{"name":"api_latency.coinbase.high","details":{"region":"us-east-1"}}"#,
        ),
    )
    .unwrap();
    assert_eq!(response.status, 202);
    wait_until("the finished line", || {
        text.lock().unwrap().contains("healing action finished")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.0.wait().unwrap().success());
    reader.join().unwrap();
    let text = text.lock().unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("healing action triggered"))
        .unwrap();
    assert!(line.contains("CRIT"), "{line}");
    assert!(
        line.contains(r#"details: {"region":"us-east-1"}"#),
        "{line}"
    );
    assert!(
        !text.trim_start().starts_with('{'),
        "term format is not JSON"
    );
}

#[test]
fn sigterm_flushes_a_finished_record_for_every_202() {
    let map = MapDir::new(MAP);
    let mut daemon = Daemon::start(&map.path(), &[]);
    let mut ids = Vec::new();
    for i in 0..50 {
        let response =
            daemon.post_anomaly(&json!({"name": "api_latency.coinbase.high", "details": {"i": i}}));
        assert_eq!(response.status, 202);
        ids.push(response.json()["action_id"].as_str().unwrap().to_string());
    }
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", daemon.stderr());
    let finished: Vec<String> = daemon
        .records_with("healing action finished")
        .iter()
        .map(|r| r["action_id"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        assert!(finished.contains(id), "no finished record for {id}");
    }
    let shutdown = daemon.records_with("shutting down");
    assert_eq!(shutdown.len(), 1);
    assert_eq!(shutdown[0]["signal"], "SIGTERM");
}

#[test]
fn sigint_stops_cleanly_too() {
    let map = MapDir::new(MAP);
    let mut daemon = Daemon::start(&map.path(), &[]);
    daemon.signal(Signal::SIGINT);
    assert_eq!(daemon.wait_exit().code(), Some(0));
    let shutdown = daemon.records_with("shutting down");
    assert_eq!(shutdown.len(), 1);
    assert_eq!(shutdown[0]["signal"], "SIGINT");
}
