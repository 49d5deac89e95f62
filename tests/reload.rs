//! Hot reload (SPEC §4, §8): every kind of edit, seen through real file-system events; saves
//! loaded only once whole; the map's directory removed and recreated; and a storm of rewrites
//! under load with no failed request.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
fn configmap_swaps_that_remove_the_old_version_keep_loading() {
    // What the kubelet does on every update: a new versioned directory, `..data` swapped onto it,
    // then the old directory (the link's previous target, which the daemon watched) removed.
    let map = MapDir::new("unused: true\n");
    let dir = map.dir.path();
    std::fs::remove_file(map.path()).unwrap();
    let version = |serial: usize, workflow: &str| {
        let name = format!("..v{serial}");
        std::fs::create_dir(dir.join(&name)).unwrap();
        std::fs::write(dir.join(&name).join("map.yml"), map_to(workflow)).unwrap();
        name
    };
    std::os::unix::fs::symlink(version(0, "one"), dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/map.yml", map.path()).unwrap();
    let daemon = Daemon::start(&map.path(), &[]);
    for (serial, workflow) in ["two", "three", "one"].into_iter().enumerate() {
        let serial = serial + 1;
        std::os::unix::fs::symlink(version(serial, workflow), dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        std::fs::remove_dir_all(dir.join(format!("..v{}", serial - 1))).unwrap();
        wait_for_workflow(&daemon, workflow);
        assert_eq!(daemon.generation(), serial as u64 + 1);
    }
    assert_eq!(daemon.records_with("reflex map missing").len(), 0);
    assert_eq!(daemon.records_with("config watcher failed").len(), 0);
}

#[test]
fn links_made_at_the_map_name_are_loaded() {
    // `ln -s` and `ln` put a finished file in place: no close follows, and none is waited for.
    let map = MapDir::new(&map_to("one"));
    let daemon = Daemon::start(&map.path(), &[]);
    std::fs::write(map.file("v2.yml"), map_to("two")).unwrap();
    std::fs::write(map.file("v3.yml"), map_to("three")).unwrap();
    std::fs::remove_file(map.path()).unwrap();
    std::os::unix::fs::symlink("v2.yml", map.path()).unwrap();
    wait_for_workflow(&daemon, "two");
    std::fs::remove_file(map.path()).unwrap();
    std::fs::hard_link(map.file("v3.yml"), map.path()).unwrap();
    wait_for_workflow(&daemon, "three");
}

/// How long a writer pauses mid-file in the tests below: far beyond the time any reload takes,
/// well short of the quiet period after which a file held open is loaded anyway.
const PAUSE: Duration = Duration::from_millis(600);

/// Asserts, polling for `PAUSE`, that the map in force stays generation `generation` with
/// `probe` dispatching to `workflow`, and that no record says the file went missing.
fn assert_kept_during_pause(daemon: &Daemon, generation: u64, workflow: &str) {
    assert!(PAUSE < autohealer::reload::QUIET);
    let until = Instant::now() + PAUSE;
    while Instant::now() < until {
        let reflexes = daemon.get("/reflexes").json();
        assert_eq!(reflexes["generation"], generation, "{reflexes}");
        assert_eq!(daemon.workflow_for("probe").as_deref(), Some(workflow));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(daemon.records_with("reflex map missing").len(), 0);
}

/// The map `map_to(workflow)` plus a second reflex: its first half, up to and including the
/// `probe` line, is a valid map of its own.
fn two_reflexes(workflow: &str) -> (String, String) {
    (map_to(workflow), format!("  second: {workflow}\n"))
}

/// Asserts the map in force is generation `generation` with both reflexes of `two_reflexes`.
fn assert_whole(daemon: &Daemon, generation: u64) {
    let reflexes = daemon.get("/reflexes").json();
    assert_eq!(reflexes["generation"], generation, "{reflexes}");
    let names: Vec<&str> = reflexes["reflexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["match"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["probe", "second"], "{reflexes}");
}

fn open_truncated(path: &Path) -> File {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

/// Writes the first half of `two_reflexes("two")` into `file` (a valid map of its own), checks
/// through a pause that the daemon on `map_to("one")` keeps its map, then writes the rest, closes
/// the file and checks that the whole is generation 2.
fn save_with_a_pause(daemon: &Daemon, mut file: File) {
    let (half, rest) = two_reflexes("two");
    file.write_all(half.as_bytes()).unwrap();
    assert_kept_during_pause(daemon, 1, "one");
    file.write_all(rest.as_bytes()).unwrap();
    drop(file);
    wait_for_workflow(daemon, "two");
    assert_whole(daemon, 2);
}

#[test]
fn an_in_place_save_that_pauses_mid_file_is_not_loaded_half_written() {
    let map = MapDir::new(&map_to("one"));
    let daemon = Daemon::start(&map.path(), &[]);
    save_with_a_pause(&daemon, open_truncated(&map.path()));
    let loaded = daemon.wait_for_record("reflex map loaded", |r| r["trigger"] == "watch");
    assert_eq!(loaded["reflexes"], 2, "{loaded}");
    assert_eq!(daemon.records_with("reflex map loaded").len(), 2);
}

#[test]
fn an_editor_that_moves_the_map_to_a_backup_first_is_loaded_once_written() {
    // emacs, and vim with `backupcopy=no`: rename the map to a backup, then write a new file.
    // Neither the missing name nor the new, half-written file is taken for a save.
    let map = MapDir::new(&map_to("one"));
    let daemon = Daemon::start(&map.path(), &[]);
    std::fs::rename(map.path(), map.file("map.yml~")).unwrap();
    save_with_a_pause(&daemon, File::create(map.path()).unwrap());
}

#[test]
fn a_writer_that_keeps_the_file_open_is_loaded_after_quiet() {
    let map = MapDir::new(&map_to("one"));
    let daemon = Daemon::start(&map.path(), &[]);
    let mut file = open_truncated(&map.path());
    let (half, rest) = two_reflexes("two");
    file.write_all(half.as_bytes()).unwrap();
    file.write_all(rest.as_bytes()).unwrap();
    let written = Instant::now();
    wait_for_workflow(&daemon, "two");
    let waited = written.elapsed();
    assert!(
        waited >= autohealer::reload::QUIET,
        "loaded {waited:?} after the last write, with the file still open"
    );
    assert_whole(&daemon, 2);
    // Closing it afterwards changes nothing: the same bytes are no new generation.
    drop(file);
    let response = daemon.request("POST", "/-/reload", &[], b"");
    assert_eq!(response.json()["generation"], 2);
}

#[test]
fn the_maps_directory_removed_or_moved_away_and_recreated() {
    let map = MapDir::new(&map_to("one"));
    let dir = map.dir.path().to_path_buf();
    let daemon = Daemon::start(&map.path(), &[]);

    // Removed: the old map stays in force, with a WARN for the file and one for the watch.
    std::fs::remove_dir_all(&dir).unwrap();
    let missing = daemon.wait_for_record("reflex map missing", |_| true);
    assert_eq!(missing["level"], "WARN");
    let unwatched = daemon.wait_for_record("config watcher failed", |_| true);
    assert_eq!(unwatched["level"], "WARN");
    assert!(
        unwatched["error"]
            .as_str()
            .unwrap()
            .contains("once it is back"),
        "{unwatched}"
    );
    assert_eq!(daemon.workflow_for("probe").as_deref(), Some("one"));
    assert_eq!(daemon.generation(), 1);

    // Back: the new file is loaded, and edits are seen again. (It is put in place by rename, so
    // that the look when the directory is watched again never finds it half-written.)
    std::fs::create_dir(&dir).unwrap();
    map.write_by_rename(&map_to("two"));
    wait_for_workflow(&daemon, "two");
    map.write_in_place(&map_to("three"));
    wait_for_workflow(&daemon, "three");
    assert_eq!(daemon.generation(), 3);

    // Moved away and replaced by a new directory: the watch follows the path, not the old one.
    let moved = dir.with_extension("moved");
    std::fs::rename(&dir, &moved).unwrap();
    daemon.wait_for_record("reflex map missing", |r| {
        r["kept_version"] != missing["kept_version"]
    });
    std::fs::create_dir(&dir).unwrap();
    map.write_by_rename(&map_to("one"));
    wait_for_workflow(&daemon, "one");
    std::fs::remove_dir_all(&moved).unwrap();
    map.write_in_place(&map_to("two"));
    wait_for_workflow(&daemon, "two");
    assert_eq!(daemon.generation(), 5);
    assert_eq!(daemon.workflow_for("probe").as_deref(), Some("two"));
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
