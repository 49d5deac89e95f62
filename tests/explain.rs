//! `autohealer explain` (SPEC §10): the real binary against a map on disk, offline; its webhook
//! request is compared with what a real daemon posts for the same anomaly.

use serde_json::{json, Value};

use crate::util::{dispatch, finished, run_cli, Daemon, MapDir, Receiver, Reply};

const MAP: &str = "\
defaults: {cooldown: 1m}
workflows:
  restart:
    exec:
      command: [systemctl, restart, \"{{params.unit}}\", \"--reason={{details.why}}\", \"{{action_id}}\"]
      timeout: 20s
    breaker: {failures: 3, within: 10m}
  page: {}
reflexes:
  nginx.web1.down: page
  \"nginx.*.down\": {workflow: restart, params: {unit: nginx}, cooldown: 5m}
  \"**.down\": page
";

/// Runs `autohealer explain ARGS --config MAP`.
fn explain(map: &MapDir, args: &[&str]) -> (i32, String, String) {
    let path = map.path().display().to_string();
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", &path]);
    run_cli(&all)
}

/// `explain ... --json`, parsed.
fn explain_json(map: &MapDir, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, stdout, stderr) = explain(map, &all);
    assert_eq!(stdout.lines().count(), 1, "one object: {stdout}{stderr}");
    (code, serde_json::from_str(&stdout).unwrap())
}

#[test]
fn a_pattern_match_shows_why_the_rails_and_the_expanded_argv() {
    let map = MapDir::new(MAP);
    let (code, text, stderr) = explain(&map, &["nginx.web2.down", "why=oom"]);
    assert_eq!(code, 0, "{stderr}");
    let action_id = text
        .lines()
        .find_map(|line| line.strip_prefix("action_id"))
        .map(str::trim)
        .expect("an action_id line");
    for expected in [
        "reflex      \"nginx.*.down\": a pattern, the first in file order that matches (no exact reflex names it)".to_string(),
        "            also matching, never reached: \"**.down\"".to_string(),
        "workflow    restart (exec)".to_string(),
        "params      {\"unit\":\"nginx\"}".to_string(),
        "rails       cooldown 5m per anomaly name: \"nginx.web2.down\" is held back that long after a dispatch".to_string(),
        "            max_concurrent 1: more runs in flight at once are suppressed (in_flight)".to_string(),
        "            breaker: 3 failures within 10m suspend the workflow for the rest of the window".to_string(),
        format!("would run   [\"systemctl\",\"restart\",\"nginx\",\"--reason=oom\",\"{action_id}\"]"),
    ] {
        assert!(text.lines().any(|l| l == expected), "missing {expected:?} in:\n{text}");
    }

    let (code, answer) = explain_json(&map, &["nginx.web2.down", "why=oom"]);
    assert_eq!(code, 0);
    let action_id = answer["action_id"].as_str().unwrap();
    assert_eq!(answer["matched"], true);
    assert_eq!(answer["reflex"], "nginx.*.down");
    assert_eq!(answer["match"], "pattern");
    assert_eq!(answer["case"], Value::Null);
    assert_eq!(answer["workflow"], "restart");
    assert_eq!(answer["action"], "exec");
    assert_eq!(
        answer["argv"],
        json!(["systemctl", "restart", "nginx", "--reason=oom", action_id])
    );
    assert_eq!(answer["timeout"], "20s");
    assert_eq!(
        answer["rails"],
        json!({"cooldown": "5m", "cooldown_key": "nginx.web2.down", "max_concurrent": 1,
               "breaker": {"failures": 3, "within": "10m"}})
    );
    assert_eq!(answer["shadowed"], json!(["**.down"]));
    assert!(answer.get("error").is_none(), "{answer}");
}

#[test]
fn an_exact_name_wins_and_a_log_only_workflow_runs_nothing() {
    let map = MapDir::new(MAP);
    let (code, answer) = explain_json(&map, &["nginx.web1.down"]);
    assert_eq!(code, 0);
    assert_eq!(answer["reflex"], "nginx.web1.down");
    assert_eq!(answer["match"], "exact");
    assert_eq!(answer["shadowed"], json!(["nginx.*.down", "**.down"]));
    assert_eq!(answer["action"], "log");
    assert_eq!(answer["rails"]["cooldown"], "1m");
    assert_eq!(answer["rails"]["max_concurrent"], Value::Null);
    for key in ["argv", "url", "headers", "body"] {
        assert!(answer.get(key).is_none(), "{key}: {answer}");
    }
}

#[test]
fn an_action_that_would_fail_says_why_and_runs_nothing() {
    let map = MapDir::new(MAP);
    // No `why` detail: the template has nothing to expand.
    let (code, answer) = explain_json(&map, &["nginx.web2.down"]);
    assert_eq!(code, 0, "a reflex matches");
    assert_eq!(answer["argv"], Value::Null);
    assert_eq!(answer["error"], "template key `details.why` is missing");
    // Caller text that would become an option is refused as the daemon refuses it.
    let map = MapDir::new(
        "workflows:\n  w: {exec: {command: [rm, \"{{details.file}}\"]}}\nreflexes:\n  a: w\n",
    );
    let (_, text, _) = explain(&map, &["a", "file=-rf"]);
    assert!(
        text.contains("would fail  the command's argument `{{details.file}}` begins with `{{details.file}}`, whose value starts with `-`"),
        "{text}"
    );
}

#[test]
fn unmatched_and_invalid_maps_exit_1_and_usage_errors_exit_2() {
    let map = MapDir::new(MAP);
    let (code, answer) = explain_json(&map, &["disk.root.full"]);
    assert_eq!(code, 1);
    assert_eq!(
        answer,
        json!({"matched": false, "anomaly": "disk.root.full",
               "map": {"path": map.path().display().to_string(), "version": answer["map"]["version"]},
               "reflex": null, "case": null, "workflow": null, "action": null})
    );
    let (code, text, _) = explain(&map, &["disk.root.full"]);
    assert_eq!(code, 1);
    assert!(text.contains("unmatched   no reflex matches"), "{text}");

    let broken = MapDir::new("workflows: {}\nreflexes:\n  a: missing\n");
    let (code, stdout, stderr) = explain(&broken, &["a"]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr,
        format!(
            "{}:3:3: reflex `a` names workflow `missing`, which is not declared under `workflows:`\n",
            broken.path().display()
        )
    );
    let (code, _, stderr) = run_cli(&["explain", "a", "--config", "/nonexistent/map.yml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read the reflex map"), "{stderr}");

    for usage in [
        &["explain"][..],
        &["explain", "a", "novalue"],
        &["explain", ""],
    ] {
        let (code, _, stderr) = run_cli(usage);
        assert_eq!(code, 2, "{usage:?}: {stderr}");
    }
}

#[test]
fn the_webhook_request_is_what_the_daemon_sends_with_secrets_hidden() {
    let receiver = Receiver::start(&[Reply::Status(200)]);
    let url = receiver
        .url("/hook")
        .replace("http://", "http://user:s3cretpw@");
    let map = MapDir::new(&format!(
        "workflows:\n  hook:\n    webhook:\n      url: {url:?}\n      retries: 1\n      headers: {{Authorization: \"Bearer t0ken\", X-Anomaly: \"{{{{anomaly}}}}\"}}\nreflexes:\n  \"api.*.slow\": {{workflow: hook, params: {{tier: 1}}}}\n"
    ));
    let (code, answer) = explain_json(&map, &["api.eu.slow", "ms=5000", "region=eu"]);
    assert_eq!(code, 0);
    let (_, text, _) = explain(&map, &["api.eu.slow", "ms=5000", "region=eu"]);
    for shown in [answer.to_string(), text] {
        assert!(
            !shown.contains("s3cretpw") && !shown.contains("t0ken"),
            "a secret leaked: {shown}"
        );
    }
    assert_eq!(
        answer["url"],
        receiver.url("/hook").replace("http://", "http://***@")
    );
    assert_eq!(
        answer["headers"],
        json!({"Authorization": "***", "X-Anomaly": "***"})
    );
    assert_eq!(
        (answer["timeout"].clone(), answer["retries"].clone()),
        (json!("5s"), json!(1))
    );

    // The daemon posts the same body, but for its own action id and clock.
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "api.eu.slow", json!({"ms": 5000, "region": "eu"}));
    assert_eq!(finished(&daemon, &id)["outcome"], "ok");
    let requests = receiver.requests();
    let mut sent: Value = serde_json::from_str(&requests[0].body).unwrap();
    let mut explained = answer["body"].clone();
    assert_eq!(explained["action_id"], answer["action_id"]);
    for body in [&mut sent, &mut explained] {
        let object = body.as_object_mut().unwrap();
        assert!(object.remove("action_id").is_some() && object.remove("received_at").is_some());
    }
    assert_eq!(explained, sent);
}

#[test]
fn the_shipped_map_explains() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/reflex_map.yml");
    let (code, stdout, stderr) = run_cli(&[
        "explain",
        "api_latency.coinbase.high",
        "latency_ms=5000",
        "--config",
        shipped,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("would POST  http://127.0.0.1:5678/webhook/coinbase-health"),
        "{stdout}"
    );
}
