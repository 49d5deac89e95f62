//! What exec workflows are protected from (SPEC §8): caller text that would become an option.

use std::path::Path;

use serde_json::{json, Value};

use crate::util::{Daemon, MapDir};

fn yaml_str(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap()
}

fn dispatch(daemon: &Daemon, name: &str, details: Value) -> String {
    let response = daemon.post_anomaly(&json!({"name": name, "details": details}));
    assert_eq!(response.status, 202, "{}", response.body);
    response.json()["action_id"].as_str().unwrap().to_string()
}

fn finished(daemon: &Daemon, action_id: &str) -> Value {
    daemon.wait_for_record("healing action finished", |r| r["action_id"] == action_id)
}

/// A map whose `archive` workflow runs GNU tar on three files the monitor names.
fn tar_map(map: &MapDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let files = map.file("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("payload"), "data").unwrap();
    let archive = map.file("archive.tar");
    map.write_in_place(&format!(
        "workflows:
  archive:
    exec:
      command: [tar, -cf, {archive}, -C, {files}, '{{{{details.a}}}}', '{{{{details.b}}}}', '{{{{details.c}}}}']
reflexes:
  backup.requested: archive
",
        archive = yaml_str(&archive),
        files = yaml_str(&files),
    ));
    (archive, files)
}

#[test]
fn a_detail_starting_with_a_dash_never_reaches_tar_as_an_option() {
    let map = MapDir::new("reflexes: {}\n");
    let (archive, _) = tar_map(&map);
    let canary = map.file("canary");
    let daemon = Daemon::start(&map.path(), &[]);
    // Were these options, tar would run `touch canary` at its first checkpoint.
    let hostile = json!({
        "a": "--checkpoint=1",
        "b": format!("--checkpoint-action=exec=touch {}", canary.display()),
        "c": "payload",
    });
    let record = finished(
        &daemon,
        &dispatch(&daemon, "backup.requested", hostile.clone()),
    );
    assert_eq!(record["outcome"], "failed", "{record}");
    assert_eq!(
        record["error"],
        "the command's argument `{{details.a}}` begins with `{{details.a}}`, whose value starts \
         with `-` and would be read as an option; nothing was run"
    );
    assert!(record.get("exit_code").is_none(), "{record}");
    assert!(!canary.exists(), "tar ran the checkpoint action");
    assert!(!archive.exists(), "tar ran at all");

    // File names are still archived as asked.
    let plain = json!({"a": "payload", "b": "payload", "c": "payload"});
    let record = finished(&daemon, &dispatch(&daemon, "backup.requested", plain));
    assert_eq!(record["outcome"], "ok", "{record}");
    assert!(archive.exists());
}

#[test]
fn map_text_in_front_or_trusted_params_keep_an_argument_safe() {
    let map = MapDir::new("reflexes: {}\n");
    let marker = map.file("args");
    let script = map.script(
        "args.sh",
        &format!("printf '%s\\n' \"$@\" > {}", marker.display()),
    );
    map.write_in_place(&format!(
        "workflows:
  show:
    exec:
      command: [sh, {}, '--unit={{{{details.unit}}}}', '{{{{params.flag}}}}', './{{{{anomaly}}}}']
reflexes:
  '*.down': {{workflow: show, params: {{flag: --verbose}}}}
",
        yaml_str(&script)
    ));
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "-rf.down", json!({"unit": "-x"}));
    assert_eq!(finished(&daemon, &id)["outcome"], "ok");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "--unit=-x\n--verbose\n./-rf.down\n"
    );
}

#[test]
fn a_dry_run_reports_the_same_refusal() {
    let map = MapDir::new("reflexes: {}\n");
    let (archive, _) = tar_map(&map);
    let daemon = Daemon::start(&map.path(), &["--dry-run"]);
    let details = json!({"a": "payload", "b": "--to-command=sh", "c": "payload"});
    let record = finished(&daemon, &dispatch(&daemon, "backup.requested", details));
    assert_eq!(record["outcome"], "failed", "{record}");
    assert_eq!(
        record["error"],
        "the command's argument `{{details.b}}` begins with `{{details.b}}`, whose value starts \
         with `-` and would be read as an option; nothing was run"
    );
    assert!(record.get("would_run").is_none(), "{record}");
    assert!(!archive.exists());
}
