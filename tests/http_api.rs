//! Every case of the HTTP contract's table (SPEC §2), against the running daemon.

use serde_json::json;

use crate::util::{Daemon, MapDir};

const MAP: &str = "
workflows:
  page: {}
reflexes:
  api_latency.coinbase.high: page
";

#[test]
fn matched_anomaly_is_dispatched_with_an_action_id() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let response = daemon.post_anomaly(&json!({
        "name": "api_latency.coinbase.high",
        "details": {"latency_ms": 5000, "region": "us-east-1"},
    }));
    assert_eq!(response.status, 202, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["status"], "dispatched");
    assert_eq!(body["anomaly"], "api_latency.coinbase.high");
    assert_eq!(body["workflow"], "page");
    let action_id = body["action_id"].as_str().expect("action_id");
    assert!(!action_id.is_empty());
    // The id in the answer is the id in the record.
    daemon.wait_for_record("healing action finished", |r| r["action_id"] == action_id);
}

#[test]
fn unmatched_anomaly_is_200_and_logged() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let response = daemon.post_anomaly(&json!({"name": "no.such.thing"}));
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json(),
        json!({"status": "unmatched", "anomaly": "no.such.thing"})
    );
    let record = daemon.wait_for_record("unmatched anomaly", |r| r["anomaly"] == "no.such.thing");
    assert_eq!(record["level"], "WARN");
}

#[test]
fn bad_bodies_are_400_with_a_message() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let cases: &[(&[u8], &str)] = &[
        (
            b"{not json",
            "the body is not valid JSON: key must be a string at line 1 column 2",
        ),
        (
            b"[]",
            "the body must be a JSON object like {\"name\": \"...\", \"details\": {...}}",
        ),
        (b"{\"details\": {}}", "`name` is required"),
        (b"{\"name\": 42}", "`name` must be a string"),
        (b"{\"name\": \"\"}", "`name` must not be empty"),
        (
            b"{\"name\": \"a\\u0000b\"}",
            "`name` must not contain control characters",
        ),
        (
            b"{\"name\": \"a\", \"details\": \"slow\"}",
            "`details` must be a JSON object",
        ),
    ];
    for (body, message) in cases {
        let response = daemon.request(
            "POST",
            "/anomaly",
            &[("Content-Type", "application/json")],
            body,
        );
        assert_eq!(response.status, 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(response.json(), json!({"error": message}));
    }
    let long = "x".repeat(257);
    let response = daemon.post_anomaly(&json!({"name": long}));
    assert_eq!(response.status, 400);
    assert_eq!(
        response.json()["error"],
        "`name` is 257 characters long; the limit is 256"
    );
    // Other top-level fields are ignored, and a charset parameter is fine.
    let response = daemon.request(
        "POST",
        "/anomaly",
        &[("Content-Type", "application/json; charset=utf-8")],
        br#"{"name": "api_latency.coinbase.high", "severity": "high"}"#,
    );
    assert_eq!(response.status, 202, "{}", response.body);
}

#[test]
fn oversized_bodies_are_413() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &["--max-body", "100"]);
    let body = json!({"name": "api_latency.coinbase.high", "details": {"pad": "x".repeat(200)}});
    let response = daemon.post_anomaly(&body);
    assert_eq!(response.status, 413);
    assert_eq!(
        response.json(),
        json!({"error": "the body is larger than 100 bytes"})
    );
    // Chunked bodies carry no length up front: the limit still holds while reading.
    let chunk = body.to_string();
    let raw = format!(
        "POST /anomaly HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        chunk.len(),
        chunk
    );
    let response = crate::util::send_raw(daemon.addr, raw.as_bytes()).unwrap();
    assert_eq!(response.status, 413);
    // A declared length over the limit is refused from the head alone: no body is ever sent
    // here, so waiting for one would end in 408 after the read timeout instead.
    let head = "POST /anomaly HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n";
    let response = crate::util::send_raw(daemon.addr, head.as_bytes()).unwrap();
    assert_eq!(response.status, 413, "{}", response.body);
    // A body at the limit is fine.
    let small = json!({"name": "api_latency.coinbase.high"});
    assert_eq!(daemon.post_anomaly(&small).status, 202);
}

#[test]
fn bodies_in_several_chunks_are_read_whole() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let body =
        json!({"name": "api_latency.coinbase.high", "details": {"region": "zürich"}}).to_string();
    // Three chunks, the middle one ending inside the two bytes of `ü`.
    let split_in_char = body.find('ü').unwrap() + 1;
    let chunks = [
        &body.as_bytes()[..10],
        &body.as_bytes()[10..split_in_char],
        &body.as_bytes()[split_in_char..],
    ];
    let mut raw = b"POST /anomaly HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in chunks {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let response = crate::util::send_raw(daemon.addr, &raw).unwrap();
    assert_eq!(response.status, 202, "{}", response.body);
    let action_id = response.json()["action_id"].as_str().unwrap().to_string();
    daemon.wait_for_record("healing action triggered", |r| {
        r["action_id"] == action_id.as_str() && r["details"] == json!({"region": "zürich"})
    });
}

#[test]
fn non_json_content_type_is_415() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    for headers in [&[("Content-Type", "text/plain")][..], &[][..]] {
        let response = daemon.request("POST", "/anomaly", headers, br#"{"name":"a"}"#);
        assert_eq!(response.status, 415);
        assert_eq!(
            response.json(),
            json!({"error": "the body must be sent with Content-Type: application/json"})
        );
    }
}

#[test]
fn wrong_method_is_405_with_allow_and_unknown_path_is_404() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let response = daemon.get("/anomaly");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("POST"));
    assert_eq!(
        response.json(),
        json!({"error": "method GET is not allowed here; use POST"})
    );
    for (method, path, allow) in [
        ("POST", "/healthz", "GET"),
        ("DELETE", "/reflexes", "GET"),
        ("GET", "/-/reload", "POST"),
    ] {
        let response = daemon.request(method, path, &[], b"");
        assert_eq!(response.status, 405, "{method} {path}");
        assert_eq!(response.header("allow"), Some(allow));
    }
    let response = daemon.get("/nope");
    assert_eq!(response.status, 404);
    assert_eq!(response.json(), json!({"error": "no such endpoint: /nope"}));
}

#[test]
fn health_endpoints_answer_ok() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    for path in ["/healthz", "/health"] {
        let response = daemon.get(path);
        assert_eq!(response.status, 200);
        assert_eq!(response.json(), json!({"status": "ok"}));
    }
}

#[test]
fn reflexes_shows_the_map_in_force() {
    let map = MapDir::new(
        "
workflows:
  hook:
    webhook: {url: 'http://127.0.0.1:9/webhook/x', timeout: 2s}
  page: {}
reflexes:
  a.b: hook
  'c.*':
    workflow: page
    params: {unit: nginx}
    cooldown: 5m
",
    );
    let daemon = Daemon::start(&map.path(), &[]);
    let body = daemon.get("/reflexes").json();
    assert_eq!(body["generation"], 1);
    assert_eq!(body["version"].as_str().unwrap().len(), 12);
    assert_eq!(body["path"], map.path().display().to_string());
    assert!(body["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        body["reflexes"],
        json!([
            {"match": "a.b", "workflow": "hook", "params": {}, "cooldown": "0s"},
            {"match": "c.*", "workflow": "page", "params": {"unit": "nginx"}, "cooldown": "5m"},
        ])
    );
    assert_eq!(
        body["workflows"],
        json!({
            "hook": {"action": "webhook", "url": "http://127.0.0.1:9/webhook/x", "timeout": "2s",
                     "retries": 2, "headers": {}, "max_concurrent": 1},
            "page": {"action": "log", "max_concurrent": 1},
        })
    );
}

#[test]
fn matching_follows_exact_then_first_pattern() {
    let map = MapDir::new(
        "
workflows: {first: {}, second: {}, exact: {}, deep: {}}
reflexes:
  'svc.*.down': first
  'svc.?.down': second
  svc.api.down: exact
  'svc.**': deep
",
    );
    let daemon = Daemon::start(&map.path(), &[]);
    assert_eq!(
        daemon.workflow_for("svc.api.down").as_deref(),
        Some("exact")
    );
    assert_eq!(daemon.workflow_for("svc.x.down").as_deref(), Some("first"));
    assert_eq!(
        daemon.workflow_for("svc.eu.web.down").as_deref(),
        Some("deep")
    );
    assert_eq!(daemon.workflow_for("svc.").as_deref(), Some("deep"));
    assert_eq!(daemon.workflow_for("svcx.a.down"), None);
}

#[test]
fn original_format_dispatches_as_log_only() {
    let map = MapDir::new(
        "anomalies:\n  - name: api_latency.coinbase.high\n    workflow: run_coinbase_health_check_and_clear_cache\n    params: {exchange: coinbase}\n",
    );
    let daemon = Daemon::start(&map.path(), &[]);
    let response = daemon.post_anomaly(&json!({"name": "api_latency.coinbase.high"}));
    assert_eq!(response.status, 202);
    let record = daemon.wait_for_record("healing action triggered", |_| true);
    assert_eq!(
        record["workflow"],
        "run_coinbase_health_check_and_clear_cache"
    );
    assert_eq!(record["action"], "log");
    assert_eq!(record["params"], json!({"exchange": "coinbase"}));
}

#[test]
fn shutdown_closes_idle_keep_alive_connections_at_once() {
    use std::io::{Read, Write};
    let map = MapDir::new(MAP);
    // Were an idle connection waited for, shutdown would take a minute: neither the shutdown
    // timeout nor the header timeout (which also ends idle keep-alive connections) is shorter.
    let args = ["--shutdown-timeout", "60s", "--header-read-timeout", "60s"];
    let mut daemon = Daemon::start(&map.path(), &args);
    let mut idle = std::net::TcpStream::connect(daemon.addr).unwrap();
    idle.set_read_timeout(Some(crate::util::DEADLINE)).unwrap();
    // One request, answered, and the connection kept open (HTTP/1.1 keep-alive).
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let read = idle.read(&mut answer).unwrap();
    answer.truncate(read);
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    // The daemon closes the connection (whatever of the answer is left comes first) and exits,
    // both well inside `DEADLINE`, the read's timeout.
    idle.read_to_end(&mut answer).expect("closed by the daemon");
    assert!(answer.ends_with(b"{\"status\":\"ok\"}"), "{answer:?}");
    assert_eq!(daemon.wait_exit().code(), Some(0));
    assert!(daemon.records_with("shutdown timed out").is_empty());
}
