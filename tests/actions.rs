//! Healing actions that really run (SPEC §3): exec and webhook workflows, templates, timeouts,
//! the safety rails, dry-run, history, the audit log, and shutdown with actions in flight.

use std::path::Path;

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::util::{dispatch, finished, wait_until, yaml_str, Daemon, MapDir, Receiver, Reply};

/// The finished record of `action_id` among what an exited daemon wrote (no waiting: it is
/// gone, so the record must already be there).
fn finished_before_exit(daemon: &Daemon, action_id: &str) -> Value {
    daemon
        .records_with("healing action finished")
        .into_iter()
        .find(|r| r["action_id"] == action_id)
        .expect("finished record before exit")
}

/// Waits until the process whose id is in `pidfile` no longer runs (a killed child may linger
/// as a zombie until init reaps it; either way it is not running).
fn wait_for_process_gone(pidfile: &Path) {
    let pid = std::fs::read_to_string(pidfile).unwrap();
    let pid = pid.trim();
    wait_until(
        &format!("process {pid} to be gone"),
        || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.split_whitespace().nth(2) == Some("Z"),
        },
    );
}

/// The JSON lines in the file at `path` so far (none while it does not exist).
fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn exec_runs_a_real_script_with_templates_and_environment() {
    let map = MapDir::new("reflexes: {}\n");
    let marker = map.file("marker");
    let script = map.script(
        "heal.sh",
        &format!(
            "printf '%s\\n' \"$#\" \"$@\" \"$AUTOHEALER_ANOMALY\" \"$AUTOHEALER_WORKFLOW\" \"$AUTOHEALER_ACTION_ID\" \"$AUTOHEALER_DETAILS\" \"$AUTOHEALER_PARAMS\" > {}\necho healed\necho warning >&2",
            marker.display()
        ),
    );
    map.write_in_place(&format!(
        "workflows:\n  restart:\n    exec:\n      command: [sh, {}, '{{{{params.unit}}}}', '--region={{{{details.region}}}}']\nreflexes:\n  'nginx.*.down':\n    workflow: restart\n    params: {{unit: nginx}}\n",
        yaml_str(&script)
    ));
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "nginx.web1.down", json!({"region": "us-east-1"}));
    let record = finished(&daemon, &id);
    assert_eq!(record["outcome"], "ok", "{record}");
    assert_eq!(record["action"], "exec");
    assert_eq!(record["exit_code"], 0);
    assert_eq!(record["output"], "healed\nwarning");
    let lines: Vec<String> = std::fs::read_to_string(&marker)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines[0], "2");
    assert_eq!(lines[1], "nginx");
    assert_eq!(lines[2], "--region=us-east-1");
    assert_eq!(lines[3], "nginx.web1.down");
    assert_eq!(lines[4], "restart");
    assert_eq!(lines[5], id);
    assert_eq!(
        serde_json::from_str::<Value>(&lines[6]).unwrap(),
        json!({"region": "us-east-1"})
    );
    assert_eq!(
        serde_json::from_str::<Value>(&lines[7]).unwrap(),
        json!({"unit": "nginx"})
    );
}

#[test]
fn hostile_detail_values_stay_one_argument_and_reach_no_shell() {
    let map = MapDir::new("reflexes: {}\n");
    let marker = map.file("args");
    let canary = map.file("canary");
    let script = map.script(
        "args.sh",
        &format!("printf '%s\\n' \"$#\" \"$1\" > {}", marker.display()),
    );
    map.write_in_place(&format!(
        "workflows:\n  w:\n    exec:\n      command: [sh, {}, '{{{{details.target}}}}']\nreflexes:\n  probe: w\n",
        yaml_str(&script)
    ));
    let daemon = Daemon::start(&map.path(), &[]);
    let hostile = format!(
        "x -rf; touch {c}; $(touch {c}) `touch {c}` | touch {c} 'quoted' \"dq\"",
        c = canary.display()
    );
    let id = dispatch(&daemon, "probe", json!({"target": hostile}));
    assert_eq!(finished(&daemon, &id)["outcome"], "ok");
    let written = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(written, format!("1\n{hostile}\n"));
    assert!(!canary.exists(), "a shell ran part of the value");
}

#[test]
fn missing_template_key_fails_the_action_clearly() {
    let map = MapDir::new("reflexes: {}\n");
    map.write_in_place("workflows:\n  w:\n    exec:\n      command: [echo, '{{details.unit}}']\nreflexes:\n  probe: w\n");
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "probe", json!({}));
    let record = finished(&daemon, &id);
    assert_eq!(record["outcome"], "failed");
    assert_eq!(record["error"], "template key `details.unit` is missing");
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let map = MapDir::new("reflexes: {}\n");
    let pidfile = map.file("child.pid");
    // The command and its child ignore SIGTERM (an ignored signal stays ignored across fork and
    // exec): the timeout does not ask, it kills the group.
    let script = map.script(
        "slow.sh",
        &format!(
            "trap '' TERM\nsleep 300 &\necho $! > {}\nwait",
            pidfile.display()
        ),
    );
    map.write_in_place(&format!(
        "workflows:\n  slow:\n    exec: {{command: [sh, {}], timeout: 300ms}}\nreflexes:\n  probe: slow\n",
        yaml_str(&script)
    ));
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "probe", json!({}));
    let record = finished(&daemon, &id);
    assert_eq!(record["outcome"], "timeout", "{record}");
    assert_eq!(
        record["error"],
        "timed out after 300ms; killed its process group"
    );
    wait_for_process_gone(&pidfile);
}

#[test]
fn broken_commands_end_as_failed_records() {
    let map = MapDir::new("reflexes: {}\n");
    map.write_in_place(
        "workflows:
  missing: {exec: {command: [/nonexistent/heal]}}
  exits: {exec: {command: [sh, -c, 'echo bad; exit 3']}}
  floods: {exec: {command: [sh, -c, 'head -c 5000000 /dev/zero | tr \"\\\\0\" x; echo; echo tail-marker']}}
reflexes: {missing: missing, exits: exits, floods: floods}
",
    );
    let daemon = Daemon::start(&map.path(), &[]);
    let record = finished(&daemon, &dispatch(&daemon, "missing", json!({})));
    assert_eq!(record["outcome"], "failed");
    assert_eq!(
        record["error"],
        "cannot start `/nonexistent/heal`: No such file or directory (os error 2)"
    );
    let record = finished(&daemon, &dispatch(&daemon, "exits", json!({})));
    assert_eq!(record["outcome"], "failed");
    assert_eq!(record["exit_code"], 3);
    assert_eq!(record["error"], "exited with code 3");
    assert_eq!(record["output"], "bad");
    let record = finished(&daemon, &dispatch(&daemon, "floods", json!({})));
    assert_eq!(record["outcome"], "ok");
    let output = record["output"].as_str().unwrap();
    assert!(
        output.len() <= 4100,
        "output is bounded: {} bytes",
        output.len()
    );
    assert!(output.ends_with("tail-marker"));
    assert_eq!(daemon.get("/healthz").status, 200);
}

fn webhook_map(map: &MapDir, url: &str, extra: &str) {
    map.write_in_place(&format!(
        "workflows:
  hook:
    webhook:
      url: {url}
      timeout: 500ms
      retries: 2
      headers: {{X-Anomaly: '{{{{anomaly}}}}', X-Unit: 'unit-{{{{params.unit}}}}'}}
{extra}reflexes:
  api_latency.coinbase.high:
    workflow: hook
    params: {{unit: cache}}
"
    ));
}

#[test]
fn webhook_posts_the_contract_body_with_templated_headers() {
    let receiver = Receiver::start(&[Reply::Status(200)]);
    let map = MapDir::new("reflexes: {}\n");
    webhook_map(&map, &receiver.url("/webhook/coinbase-health"), "");
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(
        &daemon,
        "api_latency.coinbase.high",
        json!({"latency_ms": 5000}),
    );
    let record = finished(&daemon, &id);
    assert_eq!(record["outcome"], "ok", "{record}");
    assert_eq!(record["http_status"], 200);
    assert_eq!(record["attempts"], 1);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/webhook/coinbase-health");
    assert_eq!(
        request.header("x-anomaly"),
        Some("api_latency.coinbase.high")
    );
    assert_eq!(request.header("x-unit"), Some("unit-cache"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["anomaly"], "api_latency.coinbase.high");
    assert_eq!(body["details"], json!({"latency_ms": 5000}));
    assert_eq!(body["workflow"], "hook");
    assert_eq!(body["params"], json!({"unit": "cache"}));
    assert_eq!(body["action_id"], id);
    assert!(body["received_at"].as_str().unwrap().ends_with('Z'));
    assert!(!body["host"].as_str().unwrap().is_empty());
}

#[test]
fn webhook_retries_5xx_but_not_4xx() {
    let receiver = Receiver::start(&[Reply::Status(500), Reply::Status(200)]);
    let map = MapDir::new("reflexes: {}\n");
    webhook_map(&map, &receiver.url("/hook"), "");
    let daemon = Daemon::start(&map.path(), &[]);
    let record = finished(
        &daemon,
        &dispatch(&daemon, "api_latency.coinbase.high", json!({})),
    );
    assert_eq!(record["outcome"], "ok", "{record}");
    assert_eq!(record["attempts"], 2);
    assert_eq!(receiver.requests().len(), 2);

    let receiver = Receiver::start(&[Reply::Status(404)]);
    webhook_map(&map, &receiver.url("/hook"), "");
    wait_until("the new URL to load", || daemon.generation() == 2);
    let record = finished(
        &daemon,
        &dispatch(&daemon, "api_latency.coinbase.high", json!({})),
    );
    assert_eq!(record["outcome"], "failed");
    assert_eq!(record["http_status"], 404);
    assert_eq!(record["attempts"], 1);
    assert_eq!(
        record["error"],
        format!("{} answered HTTP 404 Not Found", receiver.url("/hook"))
    );
    assert_eq!(receiver.requests().len(), 1);
}

#[test]
fn webhook_to_a_dead_or_hanging_receiver_fails_after_the_retries() {
    // A socket bound but never listening: connecting is refused, and no other test can take
    // the port while it lives (a port merely released could be reused by a parallel test).
    let dead = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    dead.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let dead_port = dead.local_addr().unwrap().as_socket().unwrap().port();
    let map = MapDir::new("reflexes: {}\n");
    let dead_url = format!("http://127.0.0.1:{dead_port}/hook");
    webhook_map(&map, &dead_url, "");
    let daemon = Daemon::start(&map.path(), &[]);
    let record = finished(
        &daemon,
        &dispatch(&daemon, "api_latency.coinbase.high", json!({})),
    );
    assert_eq!(record["outcome"], "failed", "{record}");
    assert_eq!(record["attempts"], 3);
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("(after 3 attempts)"), "{error}");
    assert!(record.get("http_status").is_none());

    let hanging = Receiver::start(&[Reply::Hang, Reply::Hang, Reply::Hang]);
    webhook_map(&map, &hanging.url("/hook"), "");
    wait_until("the new URL to load", || daemon.generation() == 2);
    let record = finished(
        &daemon,
        &dispatch(&daemon, "api_latency.coinbase.high", json!({})),
    );
    assert_eq!(record["outcome"], "timeout", "{record}");
    assert_eq!(record["attempts"], 3);
    assert_eq!(hanging.requests().len(), 3);
}

#[test]
fn cooldown_and_in_flight_suppress_and_survive_a_reload() {
    let map = MapDir::new("reflexes: {}\n");
    let body = |extra: &str| {
        format!(
            "workflows:\n  slow:\n    exec: {{command: [sleep, '5']}}\n  page: {{}}\n{extra}reflexes:\n  'svc.*.down': {{workflow: slow}}\n  flapping: {{workflow: page, cooldown: 1h}}\n"
        )
    };
    map.write_in_place(&body(""));
    let daemon = Daemon::start(&map.path(), &["--shutdown-timeout", "100ms"]);

    dispatch(&daemon, "flapping", json!({}));
    let response = daemon.post_anomaly(&json!({"name": "flapping"}));
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json(),
        json!({"status": "suppressed", "anomaly": "flapping", "workflow": "page", "reason": "cooldown"})
    );
    let record = daemon.wait_for_record("healing action suppressed", |r| r["reason"] == "cooldown");
    assert_eq!(record["level"], "WARN");
    assert_eq!(record["anomaly"], "flapping");
    assert_eq!(record["workflow"], "page");

    // max_concurrent defaults to 1, whichever anomaly name started the run.
    dispatch(&daemon, "svc.a.down", json!({}));
    let response = daemon.post_anomaly(&json!({"name": "svc.b.down"}));
    assert_eq!(response.json()["reason"], "in_flight");

    // An edit must not re-arm either rail.
    map.write_in_place(&body("  other: {}\n"));
    wait_until("the edit to load", || daemon.generation() == 2);
    assert_eq!(
        daemon.post_anomaly(&json!({"name": "flapping"})).json()["reason"],
        "cooldown"
    );
    assert_eq!(
        daemon.post_anomaly(&json!({"name": "svc.c.down"})).json()["reason"],
        "in_flight"
    );
}

#[test]
fn breaker_opens_after_repeated_failures_and_survives_a_reload() {
    let map = MapDir::new("reflexes: {}\n");
    let body = |extra: &str| {
        format!(
            "workflows:\n  broken:\n    exec: {{command: ['false']}}\n    max_concurrent: 5\n    breaker: {{failures: 2, within: 1h}}\n{extra}reflexes:\n  'disk.*.full': broken\n"
        )
    };
    map.write_in_place(&body(""));
    let daemon = Daemon::start(&map.path(), &[]);
    for name in ["disk.a.full", "disk.b.full"] {
        let id = dispatch(&daemon, name, json!({}));
        assert_eq!(finished(&daemon, &id)["outcome"], "failed");
    }
    let opened = daemon.wait_for_record("circuit opened", |_| true);
    assert_eq!(opened["level"], "CRIT");
    assert_eq!(opened["workflow"], "broken");
    assert_eq!(opened["failures"], 2);
    assert_eq!(opened["within"], "1h");
    assert!(opened["until"].as_str().unwrap().ends_with('Z'));
    let response = daemon.post_anomaly(&json!({"name": "disk.c.full"}));
    assert_eq!(response.json()["reason"], "circuit_open");

    map.write_in_place(&body("  unrelated: {}\n"));
    wait_until("the edit to load", || daemon.generation() == 2);
    assert_eq!(
        daemon.post_anomaly(&json!({"name": "disk.d.full"})).json()["reason"],
        "circuit_open"
    );
    assert_eq!(daemon.records_with("circuit opened").len(), 1);
}

#[test]
fn dry_run_logs_and_runs_nothing() {
    let receiver = Receiver::start(&[]);
    let map = MapDir::new("reflexes: {}\n");
    let marker = map.file("marker");
    map.write_in_place(&format!(
        "workflows:\n  touch: {{exec: {{command: [touch, {}]}}}}\n  hook: {{webhook: {{url: '{}'}}}}\nreflexes: {{a: touch, b: hook}}\n",
        yaml_str(&marker),
        receiver.url("/hook")
    ));
    let daemon = Daemon::start(&map.path(), &["--dry-run"]);
    let id = dispatch(&daemon, "a", json!({}));
    let triggered = daemon.wait_for_record("healing action triggered", |r| r["action_id"] == id);
    assert_eq!(triggered["dry_run"], true);
    let record = finished(&daemon, &id);
    assert_eq!(record["outcome"], "ok");
    assert_eq!(
        record["would_run"],
        json!(["touch", marker.display().to_string()]).to_string()
    );
    let record = finished(&daemon, &dispatch(&daemon, "b", json!({})));
    assert_eq!(
        record["would_run"],
        format!("POST {}", receiver.url("/hook"))
    );
    assert!(!marker.exists());
    assert!(receiver.requests().is_empty());
}

#[test]
fn actions_endpoint_lists_newest_first() {
    let map = MapDir::new("reflexes: {}\n");
    map.write_in_place("workflows:\n  page: {}\n  fail: {exec: {command: ['false'], timeout: 5s}, max_concurrent: 10}\nreflexes: {a: page, b: fail}\n");
    let daemon = Daemon::start(&map.path(), &[]);
    let first = dispatch(&daemon, "a", json!({}));
    let second = dispatch(&daemon, "b", json!({}));
    finished(&daemon, &second);
    let actions = daemon.get("/actions").json()["actions"].clone();
    assert_eq!(actions.as_array().unwrap().len(), 2);
    assert_eq!(actions[0]["action_id"], second);
    assert_eq!(actions[0]["anomaly"], "b");
    assert_eq!(actions[0]["workflow"], "fail");
    assert_eq!(actions[0]["action"], "exec");
    assert_eq!(actions[0]["outcome"], "failed");
    assert_eq!(actions[0]["error"], "exited with code 1");
    assert!(actions[0]["duration_ms"].is_u64());
    assert!(actions[0]["started_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(actions[1]["action_id"], first);
    assert_eq!(actions[1]["outcome"], "ok");
    let limited = daemon.get("/actions?limit=1").json();
    assert_eq!(limited["actions"].as_array().unwrap().len(), 1);
    assert_eq!(daemon.get("/actions?limit=0").status, 400);
    assert_eq!(daemon.get("/actions?limit=1001").status, 400);
    assert_eq!(daemon.get("/actions?limit=x").status, 400);
}

#[test]
fn running_actions_show_as_running() {
    let map = MapDir::new("reflexes: {}\n");
    map.write_in_place(
        "workflows:\n  slow: {exec: {command: [sleep, '5']}}\nreflexes: {a: slow}\n",
    );
    let daemon = Daemon::start(&map.path(), &["--shutdown-timeout", "100ms"]);
    let id = dispatch(&daemon, "a", json!({}));
    let actions = daemon.get("/actions").json()["actions"].clone();
    assert_eq!(actions[0]["action_id"], id);
    assert_eq!(actions[0]["outcome"], "running");
    assert!(actions[0]["duration_ms"].is_null());
}

#[test]
fn audit_log_appends_healing_records_and_follows_rotation() {
    let map = MapDir::new("workflows: {page: {}}\nreflexes: {a: page}\n");
    let audit = map.file("audit.log");
    let daemon = Daemon::start(&map.path(), &["--audit-log", audit.to_str().unwrap()]);
    let first = dispatch(&daemon, "a", json!({"n": 1}));
    daemon.post_anomaly(&json!({"name": "unmatched.one"}));
    finished(&daemon, &first);
    wait_until("two audit lines", || json_lines(&audit).len() == 2);
    let lines = json_lines(&audit);
    assert_eq!(lines[0]["msg"], "healing action triggered");
    assert_eq!(lines[0]["details"], json!({"n": 1}));
    assert_eq!(lines[1]["msg"], "healing action finished");
    assert!(lines
        .iter()
        .all(|l| l["msg"] != "unmatched anomaly" && l["msg"] != "listening"));

    // logrotate's default: rename the file away; the daemon opens a new one at the path.
    let rotated = map.file("audit.log.1");
    std::fs::rename(&audit, &rotated).unwrap();
    let second = dispatch(&daemon, "a", json!({"n": 2}));
    finished(&daemon, &second);
    wait_until("the new audit file", || json_lines(&audit).len() == 2);
    assert_eq!(json_lines(&audit)[0]["action_id"], second);
    assert_eq!(json_lines(&rotated).len(), 2);
}

#[test]
fn group_writable_exec_maps_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let map = MapDir::new("workflows:\n  w: {exec: {command: ['true']}}\nreflexes: {a: w}\n");
    std::fs::set_permissions(map.path(), std::fs::Permissions::from_mode(0o664)).unwrap();
    let failure = Daemon::try_start(&map.path(), &[])
        .err()
        .expect("must refuse");
    failure.assert_exit(78, "fix with: chmod go-w");

    // At reload: rejected, old map kept.
    std::fs::set_permissions(map.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = Daemon::start(&map.path(), &[]);
    let tmp = map.file("new.yml");
    std::fs::write(
        &tmp,
        "workflows:\n  w: {exec: {command: ['true']}}\n  x: {}\nreflexes: {a: w, b: x}\n",
    )
    .unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::rename(&tmp, map.path()).unwrap();
    let rejected = daemon.wait_for_record("reflex map rejected", |_| true);
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .contains("is writable by group or others (mode 0666)"),
        "{rejected}"
    );
    assert_eq!(
        daemon.post_anomaly(&json!({"name": "b"})).json()["status"],
        "unmatched"
    );
    // Fixing the mode is itself a change the watcher sees.
    std::fs::set_permissions(map.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    wait_until("the fixed map to load", || daemon.generation() == 2);
}

#[test]
fn sigterm_waits_for_a_running_action() {
    let map = MapDir::new("reflexes: {}\n");
    map.write_in_place("workflows:\n  slow: {exec: {command: [sh, -c, 'sleep 0.5; echo done']}}\nreflexes: {a: slow}\n");
    let mut daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "a", json!({}));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit().code(), Some(0));
    let record = finished_before_exit(&daemon, &id);
    assert_eq!(record["outcome"], "ok");
    assert_eq!(record["output"], "done");
}

#[test]
fn sigterm_past_the_timeout_kills_the_action_and_records_it() {
    let map = MapDir::new("reflexes: {}\n");
    let pidfile = map.file("pid");
    let script = map.script(
        "slow.sh",
        &format!("echo $$ > {}\nexec sleep 300", pidfile.display()),
    );
    map.write_in_place(&format!(
        "workflows:\n  slow: {{exec: {{command: [sh, {}], timeout: 1h}}}}\nreflexes: {{a: slow}}\n",
        yaml_str(&script)
    ));
    let mut daemon = Daemon::start(&map.path(), &["--shutdown-timeout", "200ms"]);
    let id = dispatch(&daemon, "a", json!({}));
    wait_until("the script to start", || {
        pidfile.exists() && !std::fs::read_to_string(&pidfile).unwrap().is_empty()
    });
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit().code(), Some(0));
    let record = finished_before_exit(&daemon, &id);
    assert_eq!(record["outcome"], "failed");
    assert_eq!(
        record["error"],
        "the daemon shut down before the action finished; killed its process group"
    );
    wait_for_process_gone(&pidfile);
}

#[test]
fn exec_maps_others_could_replace_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    const EXEC_MAP: &str = "workflows:\n  w: {exec: {command: ['true']}}\nreflexes: {a: w}\n";

    // A directory others can write to lets them rename their own map over this one.
    let map = MapDir::new(EXEC_MAP);
    std::fs::set_permissions(map.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, _, stderr) = crate::util::run_cli(&["check", map.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("can be changed by others"), "{stderr}");
    assert!(stderr.contains("mode 0777"), "{stderr}");
    std::fs::set_permissions(map.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, _, stderr) = crate::util::run_cli(&["check", map.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");

    // A map owned by another user is that user's to edit. Only root can hand a file away.
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(&map.path(), Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
        let (code, _, stderr) = crate::util::run_cli(&["check", map.path().to_str().unwrap()]);
        assert_eq!(code, 1);
        assert!(stderr.contains("it is owned by uid 4242"), "{stderr}");
    } else {
        eprintln!("SKIPPED: the owner check needs root to chown a file");
    }
}

/// The map of the two audit-log-level tests, whose reflex `a` cools down for an hour.
const COOLDOWN_MAP: &str = "workflows: {page: {}}\nreflexes: {a: {workflow: page, cooldown: 1h}}\n";

/// Sends `a` twice: the first runs (202), the second is held back by the cooldown, and its WARN
/// `healing action suppressed` record reaches the audit log.
fn dispatch_then_suppress(daemon: &Daemon, audit: &Path) {
    assert_eq!(daemon.post_anomaly(&json!({"name": "a"})).status, 202);
    let response = daemon.post_anomaly(&json!({"name": "a"}));
    assert_eq!(response.json()["reason"], "cooldown");
    wait_until("the suppressed record in the audit log", || {
        json_lines(audit)
            .iter()
            .any(|l| l["msg"] == "healing action suppressed")
    });
}

#[test]
fn audit_log_keeps_warn_records_whatever_the_log_level() {
    let map = MapDir::new(COOLDOWN_MAP);
    let audit = map.file("audit.log");
    let mut daemon = Daemon::start_quiet(
        &map.path(),
        &[
            "--audit-log",
            audit.to_str().unwrap(),
            "--log-level",
            "critical",
        ],
    );
    dispatch_then_suppress(&daemon, &audit);
    daemon.wait_for_record("healing action finished", |_| true);
    // stderr keeps to --log-level critical; all of it is read once the daemon has exited.
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit();
    assert!(daemon.records_with("healing action suppressed").is_empty());
}

#[test]
fn term_format_audit_log_keeps_warn_records_whatever_the_log_level() {
    let map = MapDir::new(COOLDOWN_MAP);
    let audit = map.file("audit.log");
    let args = [
        "--log-format",
        "term",
        "--audit-log",
        audit.to_str().unwrap(),
        "--log-level",
        "critical",
    ];
    let mut daemon = Daemon::start_quiet(&map.path(), &args);
    dispatch_then_suppress(&daemon, &audit);
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit();
    let stderr = daemon.stderr();
    assert!(stderr.contains("healing action finished"), "{stderr}");
    assert!(!stderr.contains("healing action suppressed"), "{stderr}");
}
