//! Silences (SPEC §9): from the API and the CLI; what they hold back and what they do not; their
//! end by request and by time; Alertmanager's alerts; reloads.

use serde_json::json;

use super::{add_silence, alert_payload, alert_result, dispatch, held_back, metric, outcome};
use crate::util::{run_cli, wait_until, Daemon, MapDir};

const MAP: &str = "workflows:\n  restart: {exec: {command: ['true']}, max_concurrent: 10}\n  page: {}\nreflexes:\n  'nginx.*.down': restart\n  disk.full: page\n";

#[test]
fn a_silence_holds_back_what_it_covers_until_it_runs_out() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    assert_eq!(
        metric(&daemon, "autohealer_silences_active").as_deref(),
        Some("0")
    );
    let (status, silence) = add_silence(
        &daemon,
        json!({"matcher": "nginx.**", "duration": "1h", "comment": "kernel upgrade"}),
    );
    assert_eq!(status, 201, "{silence}");
    assert_eq!(silence["matcher"], "nginx.**");
    assert_eq!(silence["comment"], "kernel upgrade");
    let id = silence["id"].as_str().unwrap().to_string();
    let added = daemon.wait_for_record("silence added", |r| r["silence_id"] == id.as_str());
    assert_eq!(added["level"], "INFO");
    assert_eq!(added["matcher"], "nginx.**");
    assert_eq!(added["comment"], "kernel upgrade");
    assert_eq!(
        metric(&daemon, "autohealer_silences_active").as_deref(),
        Some("1")
    );
    let listed = daemon.get("/silences").json();
    assert_eq!(listed, json!({"silences": [silence]}));

    // Covered: held back with the silence's id, and nothing runs.
    let body = held_back(&daemon, "nginx.web1.down", "silenced");
    assert_eq!(
        body,
        json!({"status": "suppressed", "anomaly": "nginx.web1.down", "workflow": "restart",
               "reason": "silenced", "silence_id": id})
    );
    let record = daemon.wait_for_record("healing action suppressed", |r| {
        r["anomaly"] == "nginx.web1.down"
    });
    assert_eq!(record["level"], "WARN");
    assert_eq!(record["reason"], "silenced");
    assert_eq!(record["silence_id"], id.as_str());
    assert!(daemon.records_with("healing action triggered").is_empty());
    // Not covered: healed as ever.
    let page = dispatch(&daemon, "disk.full");
    assert_eq!(outcome(&daemon, &page), "ok");

    // An edit of the map keeps the silence.
    map.write_by_rename(&format!("{MAP}  other: page\n"));
    wait_until("the edit to load", || daemon.generation() == 2);
    held_back(&daemon, "nginx.web2.down", "silenced");

    // A short one runs out by itself: its record is written then, with no request needed.
    let (_, short) = add_silence(&daemon, json!({"matcher": "disk.full", "duration": "1s"}));
    let expired = daemon.wait_for_record("silence expired", |r| r["silence_id"] == short["id"]);
    assert_eq!(expired["expired_by"], "time");
    assert_eq!(expired["matcher"], "disk.full");
    assert_eq!(
        daemon.get("/silences").json(),
        json!({"silences": [silence]})
    );
    assert_eq!(
        metric(&daemon, "autohealer_silences_active").as_deref(),
        Some("1")
    );
    let page = dispatch(&daemon, "disk.full");
    assert_eq!(outcome(&daemon, &page), "ok");
}

#[test]
fn the_cli_adds_lists_and_expires_silences_with_the_token() {
    let map = MapDir::new(MAP);
    std::fs::write(map.file("token"), "s3cret\n").unwrap();
    let token = map.file("token").display().to_string();
    let daemon = Daemon::start(&map.path(), &["--token-file", &token]);
    let url = format!("http://{}", daemon.addr);
    let cli = |args: &[&str]| {
        let mut all = vec!["silence"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--url", &url, "--token-file", &token]);
        run_cli(&all)
    };

    let (code, added, stderr) = cli(&[
        "add",
        "nginx.*.down",
        "--for",
        "1h",
        "--comment",
        "db migration",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let fields: Vec<&str> = added.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 5, "{added:?}");
    assert_eq!(fields[1], "nginx.*.down");
    assert_eq!(fields[4], "db migration");
    let id = fields[0];
    let starts = humantime::parse_rfc3339(fields[2]).unwrap();
    let ends = humantime::parse_rfc3339(fields[3]).unwrap();
    assert_eq!(ends.duration_since(starts).unwrap().as_secs(), 3600);
    let (code, listed, _) = cli(&["list"]);
    assert_eq!((code, listed.as_str()), (0, added.as_str()));
    let post_anomaly = || {
        let headers = [
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer s3cret"),
        ];
        daemon
            .request(
                "POST",
                "/anomaly",
                &headers,
                br#"{"name": "nginx.web1.down"}"#,
            )
            .json()
    };
    let body = post_anomaly();
    assert_eq!(body["reason"], "silenced", "{body}");
    assert_eq!(body["silence_id"], id);

    // Refusals: exit 1, with the daemon's reason.
    let (code, _, stderr) = run_cli(&["silence", "list", "--url", &url]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("did not list the silences (401 Unauthorized)"),
        "{stderr}"
    );
    let (code, _, stderr) = cli(&["add", "db", "--for", "31d"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!("autohealer: the daemon at {url}/silences did not add the silence (400 Bad Request): a silence lasts from 1s to 30d, not `31d`\n")
    );
    let (code, _, stderr) = cli(&["add", "db"]);
    assert_eq!(code, 2, "a usage error: --for is required\n{stderr}");

    let (code, expired, stderr) = cli(&["expire", id]);
    assert_eq!(
        (code, expired.as_str()),
        (0, "{\"status\":\"expired\"}\n"),
        "{stderr}"
    );
    daemon.wait_for_record("silence expired", |r| r["expired_by"] == "request");
    let (code, _, stderr) = cli(&["expire", id]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("(404 Not Found): no silence in force has the id"),
        "{stderr}"
    );
    let (code, listed, _) = cli(&["list"]);
    assert_eq!((code, listed.as_str()), (0, ""));
    assert_eq!(post_anomaly()["status"], "dispatched");
}

#[test]
fn a_silence_stops_actions_not_the_learning() {
    let map = MapDir::new(
        "workflows:\n  restart: {exec: {command: ['true']}, breaker: {failures: 1, within: 1h}}\n  page: {}\nreflexes:\n  'nginx.*.down': {workflow: restart, verify: 1h, escalate: page}\n",
    );
    let daemon = Daemon::start(&map.path(), &[]);
    let restarted = dispatch(&daemon, "nginx.web1.down");
    assert_eq!(outcome(&daemon, &restarted), "ok");
    let (status, silence) = add_silence(
        &daemon,
        json!({"matcher": "nginx.web1.down", "duration": "1h"}),
    );
    assert_eq!(status, 201);

    // The same key inside the window, silenced: the restart did not hold (the learning), but
    // its escalation is an action, and the silence holds it back.
    held_back(&daemon, "nginx.web1.down", "silenced");
    let relapse = daemon.wait_for_record("healing action not healed", |r| {
        r["action_id"] == restarted.as_str()
    });
    assert_eq!(relapse["level"], "CRIT");
    daemon.wait_for_record("circuit opened", |r| r["workflow"] == "restart");
    let escalation = daemon.wait_for_record("healing action suppressed", |r| {
        r["escalated_from"] == restarted.as_str()
    });
    assert_eq!(escalation["reason"], "silenced");
    assert_eq!(escalation["workflow"], "page");
    assert_eq!(escalation["silence_id"], silence["id"]);
    assert!(daemon.records_with("healing action escalated").is_empty());
    let actions = daemon.get("/actions").json();
    assert_eq!(actions["actions"][0]["verdict"], "not_healed", "{actions}");
}

#[test]
fn alerts_are_silenced_too_and_acted_on_once_the_silence_ends() {
    let map = MapDir::new("workflows: {page: {}}\nreflexes: {NginxDown: page}\n");
    let daemon = Daemon::start(&map.path(), &[]);
    let (_, silence) = add_silence(&daemon, json!({"matcher": "NginxDown", "duration": "1h"}));
    let id = silence["id"].as_str().unwrap();
    let firing = alert_payload("firing", "NginxDown", "4f6cb5ae4e6d3a8f");
    let result = alert_result(&daemon, &firing);
    assert_eq!(result["reason"], "silenced", "{result}");
    assert_eq!(result["silence_id"], id);
    let deleted = daemon.request("DELETE", &format!("/silences/{id}"), &[], b"");
    assert_eq!(
        (deleted.status, deleted.json()),
        (200, json!({"status": "expired"}))
    );
    // Nothing ran while silenced, so the re-sent alert is no duplicate: it is acted on now.
    assert_eq!(alert_result(&daemon, &firing)["status"], "dispatched");
    assert_eq!(alert_result(&daemon, &firing)["status"], "duplicate");
}
