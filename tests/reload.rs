//! Hot reload (SPEC §4): every kind of edit, seen through real file-system events, and a storm of
//! rewrites under load with no failed request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::util::{wait_until, Daemon, MapDir};

/// A map sending `probe` to `workflow`.
fn map_to(workflow: &str) -> String {
    format!("workflows:\n  one: {{}}\n  two: {{}}\n  three: {{}}\nreflexes:\n  probe: {workflow}\n")
}

fn wait_for_workflow(daemon: &Daemon, expected: &str) {
    wait_until(&format!("probe to dispatch to {expected}"), || {
        daemon.workflow_for("probe").as_deref() == Some(expected)
    });
}

#[test]
fn in_place_write_is_picked_up() {
    let map = MapDir::new(&map_to("one"));
    let daemon = Daemon::start(&map.path(), &[]);
    assert_eq!(daemon.workflow_for("probe").as_deref(), Some("one"));
    map.write_in_place(&map_to("two"));
    wait_for_workflow(&daemon, "two");
    let loaded = daemon.wait_for_record("reflex map loaded", |r| r["trigger"] == "watch");
    assert_eq!(loaded["generation"], 2);
    assert_eq!(daemon.generation(), 2);
}

#[test]
fn rename_over_the_file_is_picked_up() {
    let map = MapDir::new(&map_to("one"));
    let daemon = Daemon::start(&map.path(), &[]);
    map.write_by_rename(&map_to("two"));
    wait_for_workflow(&daemon, "two");
    map.write_by_rename(&map_to("three"));
    wait_for_workflow(&daemon, "three");
}

#[test]
fn symlink_swap_is_picked_up() {
    // The Kubernetes ConfigMap layout: map.yml -> ..data/map.yml, ..data -> a versioned dir.
    let map = MapDir::new("unused: true\n");
    let dir = map.dir.path();
    std::fs::remove_file(map.path()).unwrap();
    for (version, workflow) in [("v1", "one"), ("v2", "two")] {
        std::fs::create_dir(dir.join(version)).unwrap();
        std::fs::write(dir.join(version).join("map.yml"), map_to(workflow)).unwrap();
    }
    std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/map.yml", map.path()).unwrap();
    let daemon = Daemon::start(&map.path(), &[]);
    assert_eq!(daemon.workflow_for("probe").as_deref(), Some("one"));
    std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_for_workflow(&daemon, "two");

    // A plain link swapped by rename, as `ln -sfn` with a temp name does.
    std::fs::write(dir.join("plain.yml"), map_to("three")).unwrap();
    std::os::unix::fs::symlink("plain.yml", dir.join("tmp-link")).unwrap();
    std::fs::rename(dir.join("tmp-link"), map.path()).unwrap();
    wait_for_workflow(&daemon, "three");
    // Editing the new target in place is seen through the link.
    std::fs::write(dir.join("plain.yml"), map_to("one")).unwrap();
    wait_for_workflow(&daemon, "one");
}

#[test]
fn deleted_file_keeps_the_old_map_until_it_returns() {
    let map = MapDir::new(&map_to("one"));
    let daemon = Daemon::start(&map.path(), &[]);
    std::fs::remove_file(map.path()).unwrap();
    let missing = daemon.wait_for_record("reflex map missing", |_| true);
    assert_eq!(missing["level"], "WARN");
    assert_eq!(daemon.workflow_for("probe").as_deref(), Some("one"));
    assert_eq!(daemon.generation(), 1);
    map.write_in_place(&map_to("two"));
    wait_for_workflow(&daemon, "two");
    assert_eq!(daemon.records_with("reflex map missing").len(), 1);
}

#[test]
fn invalid_edit_is_rejected_once_and_the_old_map_kept() {
    let map = MapDir::new(&map_to("one"));
    let daemon = Daemon::start(&map.path(), &[]);
    let version = daemon.get("/reflexes").json()["version"].clone();
    let cases = [
        (
            "reflexes:\n  probe: one\n   bad: indent\n",
            ":3:7: mapping values are not allowed in this context",
        ),
        (
            "workflows:\n  one: {}\nreflexes:\n  probe: one\n  other: {workflw: one}\n",
            ":5:11: reflexes.other: unknown field `workflw`",
        ),
        (
            "workflows:\n  one: {}\nreflexes:\n  probe: nowhere\n",
            ":4:3: reflex `probe` names workflow `nowhere`, which is not declared",
        ),
        (
            "workflows:\n  one: {}\nreflexes:\n  'a.***': one\n",
            ":4:3: reflexes: invalid pattern `a.***`",
        ),
    ];
    for (i, (content, expected)) in cases.iter().enumerate() {
        map.write_by_rename(content);
        let rejected = daemon.wait_for_record("reflex map rejected", |r| {
            r["error"].as_str().unwrap().contains(expected)
        });
        assert_eq!(rejected["level"], "ERRO");
        assert_eq!(rejected["kept_version"], version);
        let error = rejected["error"].as_str().unwrap();
        assert!(
            error.starts_with(&map.path().display().to_string()),
            "{error}"
        );
        assert_eq!(
            daemon.records_with("reflex map rejected").len(),
            i + 1,
            "one record per bad save"
        );
        assert_eq!(daemon.workflow_for("probe").as_deref(), Some("one"));
    }
    // The same bad content touched again is not reported again.
    let bad = cases[3].0;
    map.write_in_place(bad);
    daemon.request("POST", "/-/reload", &[], b"");
    assert_eq!(
        daemon.records_with("reflex map rejected").len(),
        cases.len()
    );
    // Fixed: the new map takes over.
    map.write_by_rename(&map_to("two"));
    wait_for_workflow(&daemon, "two");
    assert_eq!(daemon.generation(), 2);
}

#[test]
fn sighup_and_http_reload_on_demand() {
    let map = MapDir::new(&map_to("one"));
    let daemon = Daemon::start(&map.path(), &[]);
    // Identical content is not a new generation.
    let response = daemon.request("POST", "/-/reload", &[], b"");
    assert_eq!(response.status, 200);
    let body = response.json();
    assert_eq!(body["generation"], 1);
    assert_eq!(body["version"], daemon.get("/reflexes").json()["version"]);

    map.write_in_place(&map_to("two"));
    daemon.signal(Signal::SIGHUP);
    wait_for_workflow(&daemon, "two");
    // Whichever of the watcher and SIGHUP came first, the content became generation 2 once.
    assert_eq!(daemon.generation(), 2);
    wait_until("a signal- or watch-triggered load", || {
        daemon.records_with("reflex map loaded").len() == 2
    });

    map.write_in_place("reflexes: [oops\n");
    let response = daemon.request("POST", "/-/reload", &[], b"");
    assert_eq!(response.status, 500);
    let body = response.json();
    assert!(
        body["error"].as_str().unwrap().contains("map.yml:"),
        "{body}"
    );
    assert_eq!(
        body["kept_version"],
        daemon.get("/reflexes").json()["version"]
    );
    assert_eq!(daemon.workflow_for("probe").as_deref(), Some("two"));
}

#[test]
fn sighup_reloads_without_a_watcher_event() {
    // A map outside any change the watcher could see is still reloaded by SIGHUP: the trigger is
    // recorded as `signal` when it wins the race, so just check the map took effect.
    let map = MapDir::new(&map_to("one"));
    let daemon = Daemon::start(&map.path(), &[]);
    map.write_in_place(&map_to("three"));
    daemon.signal(Signal::SIGHUP);
    wait_for_workflow(&daemon, "three");
}

#[test]
fn reload_storm_loses_no_request() {
    let map = Arc::new(MapDir::new(&map_to("one")));
    let daemon = Arc::new(Daemon::start(&map.path(), &[]));
    let stop = Arc::new(AtomicBool::new(false));
    const REWRITES: u32 = 60;
    let writer = {
        let (map, stop) = (map.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rewrites = 0u32;
            while rewrites < REWRITES {
                let workflow = ["one", "two", "three"][rewrites as usize % 3];
                // Alternate rename and in-place saves; every version is valid.
                if rewrites.is_multiple_of(2) {
                    map.write_by_rename(&map_to(workflow));
                } else {
                    map.write_in_place(&map_to(workflow));
                }
                rewrites += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::Relaxed);
            rewrites
        })
    };
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (daemon, stop) = (daemon.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut accepted = Vec::new();
                // Post for as long as the rewrites go on (bounded in count as well).
                while !stop.load(Ordering::Relaxed) && accepted.len() < 20_000 {
                    let response = daemon.post_anomaly(&json!({"name": "probe"}));
                    assert_eq!(response.status, 202, "{}", response.body);
                    accepted.push(response.json()["action_id"].as_str().unwrap().to_string());
                }
                accepted
            })
        })
        .collect();
    let accepted: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_eq!(writer.join().unwrap(), REWRITES);
    assert!(daemon.generation() > 2, "the rewrites were picked up");
    wait_until("a triggered record for every 202", || {
        daemon.records_with("healing action triggered").len() >= accepted.len()
    });
    let triggered: std::collections::HashSet<String> = daemon
        .records_with("healing action triggered")
        .iter()
        .map(|r| r["action_id"].as_str().unwrap().to_string())
        .collect();
    assert!(accepted.iter().all(|id| triggered.contains(id)));
}

#[test]
fn edits_through_a_symlink_into_another_directory_are_picked_up() {
    let map = MapDir::new("unused: true\n");
    std::fs::remove_file(map.path()).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real.yml");
    crate::util::write_private(&target, &map_to("one"));
    std::os::unix::fs::symlink(&target, map.path()).unwrap();
    let daemon = Daemon::start(&map.path(), &[]);
    assert_eq!(daemon.workflow_for("probe").as_deref(), Some("one"));
    // Saved in place where the link points: the watcher follows the link's target directory.
    crate::util::write_private(&target, &map_to("two"));
    wait_for_workflow(&daemon, "two");

    // Re-point the link to a third directory; edits there are followed from then on.
    let third = tempfile::tempdir().unwrap();
    let new_target = third.path().join("real.yml");
    crate::util::write_private(&new_target, &map_to("three"));
    let tmp_link = map.file("tmp-link");
    std::os::unix::fs::symlink(&new_target, &tmp_link).unwrap();
    std::fs::rename(&tmp_link, map.path()).unwrap();
    wait_for_workflow(&daemon, "three");
    crate::util::write_private(&new_target, &map_to("one"));
    wait_for_workflow(&daemon, "one");
}
