//! Cases with `when` and `cooldown_key` (SPEC §9): which case takes an anomaly, judged on its
//! name and nested, missing and mistyped details, and what a cooldown counts by.

use serde_json::json;

use super::{answer, dispatch, finished, suppressed, yaml_str};
use crate::util::{run_cli, Daemon, MapDir};

/// The disk-full reflex of the README: clean up `/` and `/var` when nearly full, one cooldown
/// per mount; page the owning team otherwise; say nothing for a team that handles its own.
fn disk_map(map: &MapDir) -> String {
    let script = map.script(
        "clean.sh",
        &format!("echo \"$1\" >> {}", map.file("cleaned").display()),
    );
    format!(
        r#"workflows:
  clean_tmp: {{exec: {{command: [sh, {script}, "{{{{details.mount}}}}"]}}, max_concurrent: 5}}
  page_oncall: {{}}
  page_team: {{}}
reflexes:
  "disk.*.full":
    - when: {{details.percent: {{gte: 95}}, details.mount: {{in: [/, /var]}}}}
      workflow: clean_tmp
      cooldown: 1h
      cooldown_key: "{{{{details.mount}}}}"
    - when: {{details.labels.team: {{exists: false}}}}
      workflow: page_oncall
    - when: {{details.labels.team: {{ne: storage}}}}
      workflow: page_team
"#,
        script = yaml_str(&script)
    )
}

#[test]
fn cases_take_anomalies_by_nested_missing_and_mistyped_details() {
    let map = MapDir::new("reflexes: {}\n");
    map.write_in_place(&disk_map(&map));
    let daemon = Daemon::start(&map.path(), &[]);

    // The first case, and the real command with the mount it was given.
    let id = dispatch(
        &daemon,
        "disk.sda.full",
        json!({"percent": 97, "mount": "/var"}),
    );
    assert_eq!(finished(&daemon, &id)["outcome"], "ok");
    assert_eq!(
        std::fs::read_to_string(map.file("cleaned")).unwrap(),
        "/var\n"
    );
    let triggered = daemon.wait_for_record("healing action triggered", |r| {
        r["action_id"] == id.as_str()
    });
    assert_eq!(triggered["workflow"], "clean_tmp");

    // A string where a number is wanted holds nothing: on to the next case, whose field
    // (nested) is missing.
    let body = answer(
        &daemon,
        "disk.sdb.full",
        json!({"percent": "99", "mount": "/"}),
    );
    assert_eq!(body["workflow"], "page_oncall", "{body}");
    // Nested and present: the third case.
    let body = answer(
        &daemon,
        "disk.sdc.full",
        json!({"percent": 10, "labels": {"team": "web"}}),
    );
    assert_eq!(body["workflow"], "page_team", "{body}");
    // No case holds: unmatched, with its WARN record.
    let body = answer(
        &daemon,
        "disk.sdd.full",
        json!({"percent": 10, "labels": {"team": "storage"}}),
    );
    assert_eq!(
        body,
        json!({"status": "unmatched", "anomaly": "disk.sdd.full"})
    );
    daemon.wait_for_record("unmatched anomaly", |r| r["anomaly"] == "disk.sdd.full");
    // A value of the wrong type for `ne` holds nothing either.
    let body = answer(&daemon, "disk.sde.full", json!({"labels": {"team": 7}}));
    assert_eq!(body["status"], "unmatched", "{body}");
}

#[test]
fn a_cooldown_key_cools_each_instance_down_on_its_own() {
    let map = MapDir::new("reflexes: {}\n");
    map.write_in_place(&disk_map(&map));
    let daemon = Daemon::start(&map.path(), &[]);
    let full = |mount: &str| json!({"percent": 99, "mount": mount});
    let first = dispatch(&daemon, "disk.sda.full", full("/var"));
    // Another disk on the same mount is the same key: held back.
    suppressed(&daemon, "disk.sdb.full", full("/var"), "cooldown");
    // The same disk name on another mount is another key: it runs.
    let second = dispatch(&daemon, "disk.sda.full", full("/"));
    for id in [&first, &second] {
        assert_eq!(finished(&daemon, id)["outcome"], "ok");
    }
    let mut cleaned: Vec<String> = std::fs::read_to_string(map.file("cleaned"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    cleaned.sort();
    assert_eq!(cleaned, ["/", "/var"]);
}

#[test]
fn a_missing_key_field_means_more_suppression_never_less() {
    let map = MapDir::new(
        "workflows: {page: {}}\nreflexes:\n  'svc.*.down': {workflow: page, cooldown: 1h, cooldown_key: '{{details.host}}'}\n",
    );
    let daemon = Daemon::start(&map.path(), &[]);
    // Both lack `host`: their key is the same empty string.
    dispatch(&daemon, "svc.a.down", json!({}));
    suppressed(&daemon, "svc.b.down", json!({"hostname": "x"}), "cooldown");
    dispatch(&daemon, "svc.b.down", json!({"host": "web1"}));
}

#[test]
fn candidates_are_tried_in_matching_order() {
    let map = MapDir::new(
        "workflows: {exact: {}, first: {}, second: {}}\nreflexes:\n  'app.*.**':\n    - when: {anomaly: {matches: 'app\\.(web|api)[0-9]+\\..*'}}\n      workflow: first\n  app.web1.slow:\n    - when: {details.region: eu}\n      workflow: exact\n  'app.**': second\n",
    );
    let daemon = Daemon::start(&map.path(), &[]);
    let workflow = |name: &str, details| answer(&daemon, name, details)["workflow"].clone();
    // The exact name's case first, wherever it is in the file...
    assert_eq!(workflow("app.web1.slow", json!({"region": "eu"})), "exact");
    // ...then the patterns in file order: the first one's condition on the name...
    assert_eq!(workflow("app.web1.slow", json!({"region": "us"})), "first");
    // ...and when it fails too, the next pattern.
    assert_eq!(workflow("app.db1.slow", json!({})), "second");
}

#[test]
fn reflexes_and_check_show_the_cases_and_their_keys() {
    let map = MapDir::new("reflexes: {}\n");
    map.write_in_place(&format!(
        "limits:\n  actions: {{max: 10, within: 1m}}\n{}",
        disk_map(&map)
    ));
    let daemon = Daemon::start(&map.path(), &[]);
    let shown = daemon.get("/reflexes").json();
    assert_eq!(
        shown["limits"],
        json!({"actions": {"max": 10, "within": "1m"}})
    );
    let cases = &shown["reflexes"][0]["cases"];
    assert_eq!(cases.as_array().unwrap().len(), 3, "{shown}");
    assert_eq!(
        cases[0]["when"],
        json!({"details.percent": {"gte": 95}, "details.mount": {"in": ["/", "/var"]}})
    );
    assert_eq!(cases[0]["cooldown_key"], "{{details.mount}}");
    assert_eq!(
        cases[1]["when"],
        json!({"details.labels.team": {"exists": false}})
    );

    let path = map.path().display().to_string();
    let (code, stdout, stderr) = run_cli(&["check", &path]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "1 reflexes (0 exact, 1 patterns), 3 workflows (2 log, 1 exec, 0 webhook); 3 cases (3 with when, 1 with cooldown_key, 0 with verify, 0 with escalate); budget 10 actions per 1m"
        ),
        "{stdout}"
    );
}

#[test]
fn invalid_conditions_are_map_errors_with_their_position() {
    let map = MapDir::new(
        "workflows: {page: {}}\nreflexes:\n  'disk.*.full':\n    - when:\n        details.percent: {gte: 95, over: 3}\n        details.mount: {matches: '/(var'}\n      workflow: page\n",
    );
    let path = map.path().display().to_string();
    let check_errors = || {
        let (code, stdout, stderr) = run_cli(&["check", &path]);
        assert_eq!((code, stdout.as_str()), (1, ""));
        stderr
    };
    assert_eq!(
        check_errors(),
        format!("{path}:5:26: reflexes.disk.*.full[0].when.details.percent: unknown operator `over`; use eq, ne, gt, gte, lt, lte, in, matches or exists\n")
    );
    map.write_in_place(
        "workflows: {page: {}}\nreflexes:\n  'disk.*.full':\n    - when:\n        details.mount: {matches: '/(var'}\n      workflow: page\n",
    );
    assert_eq!(
        check_errors(),
        format!("{path}:5:34: reflexes.disk.*.full[0].when.details.mount.matches: invalid regular expression `/(var`: unclosed group\n")
    );
    // The daemon refuses such an edit and keeps the map that works.
    map.write_in_place("workflows: {page: {}}\nreflexes: {'disk.*.full': page}\n");
    let daemon = Daemon::start(&map.path(), &[]);
    map.write_by_rename(
        "workflows: {page: {}}\nreflexes:\n  'disk.*.full': {workflow: page, when: {details.x: {gtee: 1}}}\n",
    );
    let rejected = daemon.wait_for_record("reflex map rejected", |_| true);
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .ends_with(":3:53: reflexes.disk.*.full.when.details.x: unknown operator `gtee`; use eq, ne, gt, gte, lt, lte, in, matches or exists"),
        "{rejected}"
    );
    assert_eq!(
        daemon.workflow_for("disk.sda.full").as_deref(),
        Some("page")
    );
}

#[test]
fn the_readmes_worked_example_is_a_valid_map() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let (_, after) = readme
        .split_once("<!-- worked example: tests/autonomy/cases.rs checks this block -->\n```yaml\n")
        .expect("the worked example's marker");
    let (example, _) = after.split_once("```").expect("the end of the block");
    let map = MapDir::new(example);
    let path = map.path().display().to_string();
    let (code, stdout, stderr) = run_cli(&["check", &path]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "2 reflexes (0 exact, 2 patterns), 3 workflows (1 log, 2 exec, 0 webhook); 3 cases (1 with when, 1 with cooldown_key, 1 with verify, 1 with escalate); budget 20 actions per 1m"
        ),
        "{stdout}"
    );
}
