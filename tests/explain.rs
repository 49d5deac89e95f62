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

/// Asserts that each of `expected` is a whole line of `text`.
fn assert_lines<S: AsRef<str>>(text: &str, expected: &[S]) {
    for line in expected {
        let line = line.as_ref();
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
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
    assert_lines(
        &text,
        &[
        "reflex      \"nginx.*.down\": a pattern, the first in file order that matches (no exact reflex names it)".to_string(),
        "            also matching, never reached: \"**.down\"".to_string(),
        "workflow    restart (exec)".to_string(),
        "params      {\"unit\":\"nginx\"}".to_string(),
        "rails       cooldown 5m per anomaly name: \"nginx.web2.down\" is held back that long after a dispatch".to_string(),
        "            max_concurrent 1: more runs in flight at once are suppressed (in_flight)".to_string(),
        "            breaker: 3 failures within 10m suspend the workflow for the rest of the window".to_string(),
        format!("would run   [\"systemctl\",\"restart\",\"nginx\",\"--reason=oom\",\"{action_id}\"]"),
        ],
    );

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
               "breaker": {"failures": 3, "within": "10m"},
               "verify": null, "escalate": null, "budget": null})
    );
    assert_eq!(
        answer["tried"],
        json!([{"reflex": "nginx.*.down", "case": null, "workflow": "restart", "when": null,
                "held": true}])
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
               "reflex": null, "case": null, "workflow": null, "action": null, "tried": []})
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

/// Cases (SPEC §9): on `disk.*.full` a cleanup for `/` and `/var` when nearly full, else a page
/// for critical disks; the exact `disk.sdz.full` pages about `/boot` only, and falls through.
const CASES: &str = "\
limits:
  actions: {max: 20, within: 1m}
workflows:
  clean_tmp:
    exec: {command: [systemd-tmpfiles, --clean, \"--prefix={{details.mount}}\"], timeout: 1m}
  restart_service:
    exec: {command: [systemctl, restart, \"{{params.unit}}\"]}
  page_oncall: {}
reflexes:
  disk.sdz.full:
    - when: {details.mount: /boot}
      workflow: page_oncall
  \"disk.*.full\":
    - when: {details.percent: {gte: 95}, details.mount: {in: [/, /var]}}
      workflow: clean_tmp
      cooldown: 10m
      cooldown_key: \"{{details.mount}}\"
    - when: {details.labels.severity: critical}
      workflow: page_oncall
      cooldown: 30m
      cooldown_key: \"{{details.labels.team}}\"
  \"nginx.*.down\":
    workflow: restart_service
    params: {unit: nginx}
    verify: 10m
    escalate: page_oncall
";

#[test]
fn each_condition_of_the_cases_tried_is_shown_with_its_value_and_the_case_taken() {
    let map = MapDir::new(CASES);
    // The first case fails on `percent` (90 < 95) though its `mount` holds; the second holds
    // on a nested field. `labels.team` is missing: the cooldown key expands to "".
    let args = [
        "disk.sda.full",
        "percent=90",
        "mount=/var",
        r#"labels={"severity":"critical"}"#,
    ];
    let (code, answer) = explain_json(&map, &args);
    assert_eq!(code, 0);
    assert_eq!(answer["reflex"], "disk.*.full");
    assert_eq!(answer["case"], 1, "the index of the case taken, from 0");
    assert_eq!(answer["workflow"], "page_oncall");
    assert_eq!(answer["action"], "log");
    assert_eq!(
        answer["tried"],
        json!([
            {"reflex": "disk.*.full", "case": 0, "workflow": "clean_tmp", "held": false, "when": [
                {"field": "details.percent", "test": {"gte": 95}, "value": 90, "held": false},
                {"field": "details.mount", "test": {"in": ["/", "/var"]}, "value": "/var", "held": true},
            ]},
            {"reflex": "disk.*.full", "case": 1, "workflow": "page_oncall", "held": true, "when": [
                {"field": "details.labels.severity", "test": {"eq": "critical"}, "value": "critical", "held": true},
            ]},
        ])
    );
    assert_eq!(
        answer["rails"],
        json!({"cooldown": "30m", "cooldown_key": "", "cooldown_key_template": "{{details.labels.team}}",
               "max_concurrent": null, "verify": null, "escalate": null,
               "budget": {"max": 20, "within": "1m"}})
    );

    let (code, text, stderr) = explain(&map, &args);
    assert_eq!(code, 0, "{stderr}");
    let expected = [
        "cases       \"disk.*.full\" case 1 (clean_tmp): not taken",
        "              details.percent {\"gte\":95}: 90, fails",
        "              details.mount {\"in\":[\"/\",\"/var\"]}: \"/var\", holds",
        "            \"disk.*.full\" case 2 (page_oncall): taken",
        "              details.labels.severity {\"eq\":\"critical\"}: \"critical\", holds",
        "workflow    page_oncall (log)",
        "rails       cooldown 30m per cooldown_key \"{{details.labels.team}}\": \"\" is held back that long after a dispatch",
        "            budget: at most 20 exec and webhook actions within 1m, all workflows together (log-only actions, this one too, are free)",
    ];
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|line| *line == expected[0])
        .unwrap_or_else(|| panic!("no cases in:\n{text}"));
    assert_eq!(&lines[at..at + expected.len()], expected, "{text}");

    // The daemon takes the same case.
    let daemon = Daemon::start(&map.path(), &[]);
    let response = daemon.post_anomaly(&json!({"name": "disk.sda.full", "details":
        {"percent": 90, "mount": "/var", "labels": {"severity": "critical"}}}));
    assert_eq!(
        response.json()["workflow"],
        "page_oncall",
        "{}",
        response.body
    );
}

#[test]
fn a_case_that_holds_shows_its_expanded_cooldown_key_and_argv() {
    let map = MapDir::new(CASES);
    // The exact name's only case fails on a missing field, so the pattern's cases are tried.
    let args = ["disk.sdz.full", "percent=97", "mount=/"];
    let (code, answer) = explain_json(&map, &args);
    assert_eq!(code, 0);
    assert_eq!(
        (&answer["reflex"], &answer["case"], &answer["match"]),
        (&json!("disk.*.full"), &json!(0), &json!("pattern"))
    );
    let tried = answer["tried"].as_array().unwrap();
    assert_eq!(tried.len(), 2);
    assert_eq!(
        tried[0],
        json!({"reflex": "disk.sdz.full", "case": 0, "workflow": "page_oncall", "held": false,
               "when": [{"field": "details.mount", "test": {"eq": "/boot"}, "value": "/", "held": false}]})
    );
    assert_eq!(tried[1]["held"], true);
    assert_eq!(answer["rails"]["cooldown_key"], "/");
    assert_eq!(answer["rails"]["cooldown"], "10m");
    assert_eq!(
        answer["argv"],
        json!(["systemd-tmpfiles", "--clean", "--prefix=/"])
    );
    let (_, text, _) = explain(&map, &args);
    assert_lines(
        &text,
        &[
        "reflex      \"disk.*.full\": a pattern, the next in file order that matches: no case of \"disk.sdz.full\" holds",
        "rails       cooldown 10m per cooldown_key \"{{details.mount}}\": \"/\" is held back that long after a dispatch",
        ],
    );
}

#[test]
fn when_no_case_holds_each_failing_condition_says_why_and_missing_fields_show_as_missing() {
    let map = MapDir::new(CASES);
    let (code, answer) = explain_json(&map, &["disk.sdz.full", "percent=99"]);
    assert_eq!(code, 1);
    assert_eq!(answer["matched"], false);
    assert_eq!(answer["case"], Value::Null);
    let tried = answer["tried"].as_array().unwrap();
    let verdicts: Vec<(&str, &Value, bool)> = tried
        .iter()
        .map(|t| {
            (
                t["reflex"].as_str().unwrap(),
                &t["case"],
                t["held"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("disk.sdz.full", &json!(0), false),
            ("disk.*.full", &json!(0), false),
            ("disk.*.full", &json!(1), false),
        ]
    );
    // A missing field has no `value`, and holds nothing but `exists: false`.
    let mount = &tried[1]["when"][1];
    assert_eq!(
        mount,
        &json!({"field": "details.mount", "test": {"in": ["/", "/var"]}, "held": false})
    );
    assert_eq!(tried[1]["when"][0]["value"], 99);
    assert_eq!(tried[1]["when"][0]["held"], true);

    let (code, text, _) = explain(&map, &["disk.sdz.full", "percent=99"]);
    assert_eq!(code, 1);
    assert_lines(
        &text,
        &[
        "              details.mount {\"in\":[\"/\",\"/var\"]}: missing, fails",
        "              details.labels.severity {\"eq\":\"critical\"}: missing, fails",
        "unmatched   no case holds: the daemon would answer {\"status\":\"unmatched\"} and log WARN `unmatched anomaly`",
        ],
    );
}

#[test]
fn verify_escalate_and_the_budget_are_the_rails_shown() {
    let map = MapDir::new(CASES);
    let (code, answer) = explain_json(&map, &["nginx.web1.down"]);
    assert_eq!(code, 0);
    assert_eq!(answer["case"], Value::Null, "a reflex written as one case");
    assert_eq!(
        answer["rails"],
        json!({"cooldown": "0s", "cooldown_key": "nginx.web1.down", "max_concurrent": 1,
               "verify": "10m", "escalate": "page_oncall",
               "budget": {"max": 20, "within": "1m"}})
    );
    let (_, text, _) = explain(&map, &["nginx.web1.down"]);
    assert_lines(
        &text,
        &[
        "            verify 10m: \"nginx.web1.down\" again within 10m of an ok finish means not healed (CRIT `healing action not healed`, a breaker failure)",
        "            escalate page_oncall: dispatched once if the action fails, times out or is not healed, through page_oncall's own rails",
        "            budget: at most 20 exec and webhook actions within 1m, all workflows together",
        ],
    );
    assert!(!text.contains("cases "), "one case without `when`: {text}");
}
