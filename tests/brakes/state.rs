//! Memory across restarts (SPEC §9): every kind of state in force before a restart holds after
//! it; a SIGKILL loses at most the last second; a file the daemon cannot use is a WARN and a
//! fresh start; the systemd unit hands the daemon its state directory.

use std::path::Path;

use serde_json::{json, Value};

use super::{
    add_silence, alert_payload, alert_result, dispatch, held_back, metric, outcome,
    wait_for_state_file,
};
use crate::util::{Daemon, MapDir};

/// A map where each kind of state can be put in force: a cooldown, a breaker that opens on one
/// failure, a verify window escalating to paging, a budget of three exec actions, a reflex for
/// silences, and one for Alertmanager.
const MAP: &str = "limits: {actions: {max: 3, within: 1h}}
workflows:
  cool: {exec: {command: ['true']}, max_concurrent: 10}
  flaky: {exec: {command: ['false']}, breaker: {failures: 1, within: 1h}}
  restart: {exec: {command: ['true']}}
  page: {}
reflexes:
  'disk.*.full': {workflow: cool, cooldown: 1h}
  'db.*.down': flaky
  'nginx.*.down': {workflow: restart, verify: 1h, escalate: page}
  'spare.*': cool
  'maint.**': page
  NginxDown: page
";

fn start(map: &MapDir, state_dir: &Path) -> Daemon {
    let dir = state_dir.display().to_string();
    Daemon::start(&map.path(), &["--state-dir", &dir])
}

/// Whether the rails' part of a state file has a key named `key`.
fn has_key(state: &Value, key: &str) -> bool {
    let tables = state["parts"]["rails"]["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    tables.iter().any(|table| {
        table["keys"]
            .as_array()
            .is_some_and(|keys| keys.iter().any(|k| k["key"] == key))
    })
}

#[test]
fn every_kind_of_state_holds_across_a_restart() {
    let map = MapDir::new(MAP);
    let state_dir = map.file("state");
    let mut before = start(&map, &state_dir);
    assert!(before.records_with("state kept on disk")[0]
        .get("restored_from")
        .is_none());
    let cooled = dispatch(&before, "disk.root.full");
    let failed = dispatch(&before, "db.main.down");
    let restarted = dispatch(&before, "nginx.web1.down");
    assert_eq!(outcome(&before, &cooled), "ok");
    assert_eq!(outcome(&before, &failed), "failed");
    assert_eq!(outcome(&before, &restarted), "ok");
    before.wait_for_record("circuit opened", |r| r["workflow"] == "flaky");
    let (_, silence) = add_silence(&before, json!({"matcher": "maint.**", "duration": "1h"}));
    let firing = alert_payload("firing", "NginxDown", "4f6cb5ae4e6d3a8f");
    assert_eq!(alert_result(&before, &firing)["status"], "dispatched");
    assert_eq!(
        metric(&before, "autohealer_budget_remaining").as_deref(),
        Some("0")
    );
    before.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(before.wait_exit().success());

    let after = start(&map, &state_dir);
    let kept = after.wait_for_record("state kept on disk", |_| true);
    assert!(
        kept["restored_from"].as_str().unwrap().ends_with('Z'),
        "{kept}"
    );
    assert!(after.records_with("state discarded").is_empty());
    // The cooldown, the open breaker and the spent budget still hold.
    held_back(&after, "disk.root.full", "cooldown");
    held_back(&after, "db.main.down", "circuit_open");
    held_back(&after, "spare.x", "budget");
    assert_eq!(
        metric(&after, "autohealer_budget_remaining").as_deref(),
        Some("0")
    );
    // The silence is still in force, with its id.
    let listed = after.get("/silences").json();
    assert_eq!(listed, json!({"silences": [silence]}));
    assert_eq!(
        held_back(&after, "maint.db.upgrade", "silenced")["silence_id"],
        silence["id"]
    );
    assert_eq!(
        metric(&after, "autohealer_silences_active").as_deref(),
        Some("1")
    );
    // Alertmanager's re-send of the alert acted on before the restart acts on nothing.
    assert_eq!(alert_result(&after, &firing)["status"], "duplicate");
    // The verification pending before the restart detects the recurrence after it, and
    // escalates (the restart itself is held back by the budget).
    held_back(&after, "nginx.web1.down", "budget");
    let relapse = after.wait_for_record("healing action not healed", |r| {
        r["action_id"] == restarted.as_str()
    });
    assert_eq!(relapse["workflow"], "restart");
    let escalated = after.wait_for_record("healing action escalated", |r| {
        r["action_id"] == restarted.as_str()
    });
    assert_eq!(escalated["reason"], "not_healed");
    let paged = after.wait_for_record("healing action triggered", |r| {
        r["escalated_from"] == restarted.as_str()
    });
    assert_eq!(paged["workflow"], "page");
}

#[test]
fn a_sigkill_loses_at_most_the_last_second() {
    let map = MapDir::new(MAP);
    let state_dir = map.file("state");
    let mut before = start(&map, &state_dir);
    let cooled = dispatch(&before, "disk.root.full");
    assert_eq!(outcome(&before, &cooled), "ok");
    // No shutdown will write it: the daemon writes within a second of the change, by itself.
    let state = wait_for_state_file(&state_dir, "the cooldown", |s| has_key(s, "disk.root.full"));
    assert_eq!(state["format"], 1);
    before.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(!before.wait_exit().success());

    let after = start(&map, &state_dir);
    held_back(&after, "disk.root.full", "cooldown");
    // Another key is not cooling.
    dispatch(&after, "disk.other.full");
}

#[test]
fn a_state_file_it_cannot_use_is_a_warn_and_a_fresh_start() {
    let silence = json!({"id": "01a23b40-199c-768a-8546-1fe2071d17ad", "matcher": "maint.**",
                         "starts_at": 1, "ends_at": 2, "until": u64::MAX / 2});
    for (text, reason, part) in [
        (
            json!({"format": 2, "written_at_ms": 0, "parts": {}}).to_string(),
            "the file is in format 2, written by a newer AutoHealer; this one reads format 1",
            None,
        ),
        (
            json!({"format": 0, "cooldowns": []}).to_string(),
            "the file is in format 0, written by an older AutoHealer; this one reads format 1",
            None,
        ),
        (
            r#"{"format": 1, "written_at_ms": 0, "parts": {"rails": "#.to_string(),
            "the file is not a valid state file: EOF while parsing a value at line 1 column 53",
            None,
        ),
        (
            json!({"format": 1, "written_at_ms": 0,
                   "parts": {"rails": {"keys": 5}, "silences": [silence]}})
            .to_string(),
            "invalid type: integer `5`, expected a sequence at line 1 column 9",
            Some("rails"),
        ),
    ] {
        let map = MapDir::new(MAP);
        let state_dir = map.file("state");
        std::fs::create_dir(&state_dir).unwrap();
        std::fs::write(state_dir.join("state.json"), &text).unwrap();
        let daemon = start(&map, &state_dir);
        let warn = daemon.wait_for_record("state discarded", |_| true);
        assert_eq!(warn["level"], "WARN");
        assert_eq!(warn["reason"], reason, "{text}");
        assert_eq!(warn["part"].as_str(), part, "{text}");
        assert_eq!(
            warn["path"],
            state_dir.join("state.json").display().to_string()
        );
        // A fresh start, serving; the next change replaces the file with a good one.
        let cooled = dispatch(&daemon, "disk.root.full");
        assert_eq!(outcome(&daemon, &cooled), "ok");
        let state = wait_for_state_file(&state_dir, "the new cooldown", |s| {
            has_key(s, "disk.root.full")
        });
        assert_eq!(state["format"], 1);
        if part.is_some() {
            // Only the part that did not read was dropped: the silence is in force.
            held_back(&daemon, "maint.x", "silenced");
            assert_eq!(state["parts"]["silences"][0]["matcher"], "maint.**");
        }
    }
}

#[test]
fn without_a_state_dir_the_daemon_says_state_lives_in_memory() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &[]);
    let record = daemon.wait_for_record("state kept in memory", |_| true);
    assert_eq!(record["level"], "INFO");
    assert!(daemon.records_with("state kept on disk").is_empty());
}

#[test]
fn the_systemd_unit_hands_the_daemon_its_state_directory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let unit = std::fs::read_to_string(dir.join("autohealer.service")).unwrap();
    assert!(
        unit.lines().any(|l| l == "StateDirectory=autohealer"),
        "{unit}"
    );
    // The unit's command line, and every example drop-in's that replaces it.
    let mut files = vec![unit];
    for entry in std::fs::read_dir(dir.join("autohealer.service.d")).unwrap() {
        files.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let commands: Vec<&str> = files
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| line.starts_with("ExecStart=/"))
        .collect();
    assert!(commands.len() >= 2, "{commands:?}");
    for command in commands {
        assert!(
            command.contains(" --state-dir ${STATE_DIRECTORY}"),
            "{command}"
        );
    }
}
