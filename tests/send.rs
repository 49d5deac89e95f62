//! `autohealer send` (SPEC §1) against the running daemon, plus a one-shot server where the raw
//! request must be seen.

use serde_json::{json, Value};

use crate::util::{run_cli, Daemon, MapDir, Receiver, Reply};

const MAP: &str = "
workflows:
  page: {}
reflexes:
  api_latency.coinbase.high: page
";

fn url(daemon: &Daemon) -> String {
    format!("http://{}", daemon.addr)
}

#[test]
fn send_dispatches_and_details_keep_their_json_types() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let (code, stdout, stderr) = run_cli(&[
        "send",
        "api_latency.coinbase.high",
        "latency_ms=5000",
        "ratio=0.5",
        "region=us-east-1",
        "ok=true",
        "gone=null",
        r#"obj={"a":[1,2]}"#,
        r#"id="5""#,
        "note=two words",
        "--url",
        &url(&daemon),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let answer: Value = serde_json::from_str(stdout.trim()).expect("stdout is the JSON answer");
    assert_eq!(answer["status"], "dispatched");
    assert_eq!(answer["workflow"], "page");
    let action_id = answer["action_id"].as_str().unwrap();
    let triggered =
        daemon.wait_for_record("healing action triggered", |r| r["action_id"] == action_id);
    assert_eq!(triggered["source"], "http");
    assert_eq!(
        triggered["details"],
        json!({
            "latency_ms": 5000, "ratio": 0.5, "region": "us-east-1", "ok": true, "gone": null,
            "obj": {"a": [1, 2]}, "id": "5", "note": "two words",
        })
    );
}

#[test]
fn send_of_an_unmatched_anomaly_exits_0() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let (code, stdout, stderr) = run_cli(&["send", "no.such.thing", "--url", &url(&daemon)]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(stdout.trim()).unwrap(),
        json!({"status": "unmatched", "anomaly": "no.such.thing"})
    );
}

#[test]
fn send_of_a_rejected_anomaly_exits_1_with_the_daemons_reason() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let base = url(&daemon);
    let (code, stdout, stderr) = run_cli(&["send", "a\tb", "--url", &base]);
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!("autohealer: the daemon at {base}/anomaly did not accept the anomaly (400 Bad Request): `name` must not contain control characters\n")
    );
}

#[test]
fn send_to_a_daemon_that_is_down_exits_1_and_says_so() {
    // Port 1 (tcpmux) is privileged and served by nothing here: always refused.
    let addr = "127.0.0.1:1";
    let (code, stdout, stderr) = run_cli(&["send", "a.b", "--url", &format!("http://{addr}")]);
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with(&format!(
            "autohealer: cannot reach the daemon at http://{addr}/anomaly (is the daemon running there?): "
        )),
        "{stderr}"
    );
}

#[test]
fn send_with_a_token_file_sends_the_trimmed_bearer_token() {
    let map = MapDir::new(MAP_FOR_TOKEN);
    let token = map.file("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let daemon = Daemon::start(&map.path(), &["--token-file", token.to_str().unwrap()]);
    let url = format!("http://{}", daemon.addr);

    // The client's copy has other surrounding whitespace: it is trimmed the same way.
    let client_token = map.file("client-token");
    std::fs::write(&client_token, "  s3cret-token\n\n").unwrap();
    let (code, stdout, stderr) = run_cli(&[
        "send",
        "a.b",
        "k=1",
        "--url",
        &url,
        "--token-file",
        client_token.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"dispatched\""), "{stdout}");
    let triggered = daemon.wait_for_record("healing action triggered", |r| r["anomaly"] == "a.b");
    assert_eq!(triggered["details"], json!({"k": 1}));

    // Without the token the daemon answers 401, and send says so.
    let (code, _, stderr) = run_cli(&["send", "a.b", "--url", &url]);
    assert_eq!(code, 1);
    assert!(stderr.contains("401 Unauthorized"), "{stderr}");
}

const MAP_FOR_TOKEN: &str = "workflows: {w: {}}\nreflexes: {a.b: w}\n";

#[test]
fn send_with_an_unreadable_token_file_or_bad_arguments_fails() {
    let (code, _, stderr) = run_cli(&["send", "a.b", "--token-file", "/nonexistent/token"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "autohealer: cannot read the token file /nonexistent/token: No such file or directory (os error 2)\n"
    );
    let (code, _, stderr) = run_cli(&["send", "a.b", "novalue"]);
    assert_eq!(code, 2, "usage error: {stderr}");
    assert!(
        stderr.contains("expected KEY=VALUE, got \"novalue\""),
        "{stderr}"
    );
    let (code, _, _) = run_cli(&["send", "a.b", "--url", "not a url"]);
    assert_eq!(code, 2);
}

#[test]
fn a_server_error_answer_exits_1() {
    let server = Receiver::start(&[Reply::Status(503)]);
    let base = format!("http://{}", server.addr);
    let (code, _, stderr) = run_cli(&["send", "a.b", "--url", &base]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!("autohealer: the daemon at {base}/anomaly did not accept the anomaly (503 Service Unavailable): ok\n")
    );
    assert_eq!(server.requests()[0].path, "/anomaly");
}
