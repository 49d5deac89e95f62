//! What exec workflows are protected from, and what they are kept from (SPEC §8): caller text
//! that would become an option, and the daemon's secrets in their environment.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::util::{daemon_command, dispatch, finished, write_private, yaml_str, Daemon, MapDir};

/// Asserts that `record` is the finished record of an action refused because the argument
/// `{{PLACEHOLDER}}` would have handed the program an option.
fn assert_refused_as_option(record: &Value, placeholder: &str) {
    assert_eq!(record["outcome"], "failed", "{record}");
    assert_eq!(
        record["error"],
        format!(
            "the command's argument `{{{{{placeholder}}}}}` begins with `{{{{{placeholder}}}}}`, \
             whose value starts with `-` and would be read as an option; nothing was run"
        )
    );
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
    assert_refused_as_option(&record, "details.a");
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
    assert_refused_as_option(&record, "details.b");
    assert!(record.get("would_run").is_none(), "{record}");
    assert!(!archive.exists());
}

#[test]
fn commands_get_the_daemons_environment_minus_its_secrets() {
    let map = MapDir::new("reflexes: {}\n");
    let token = map.file("token");
    write_private(&token, "s3cret-token\n");
    let printed = map.file("env");
    map.write_in_place(&format!(
        "workflows:\n  show: {{exec: {{command: [sh, -c, 'env > \"$0\"', {}]}}}}\nreflexes: {{show: show}}\n",
        yaml_str(&printed)
    ));
    let token_arg = token.display().to_string();
    let mut command = daemon_command(
        &map.path(),
        &["--listen", "127.0.0.1:0", "--token-file", &token_arg],
    );
    command
        .env("CREDENTIALS_DIRECTORY", map.dir.path())
        .env("SECRET_TOKEN_FILE", &token)
        .env("SECRET_TOKEN", " s3cret-token ")
        .env("KEEP_ME", "kept")
        .env("NOT_THE_TOKEN", "s3cret-token-2");
    let daemon = Daemon::launch(command);
    let response = daemon.request(
        "POST",
        "/anomaly",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer s3cret-token"),
        ],
        br#"{"name": "show"}"#,
    );
    assert_eq!(response.status, 202, "{}", response.body);
    let id = response.json()["action_id"].as_str().unwrap().to_string();
    assert_eq!(finished(&daemon, &id)["outcome"], "ok");

    let env: BTreeMap<String, String> = std::fs::read_to_string(&printed)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    for secret in ["CREDENTIALS_DIRECTORY", "SECRET_TOKEN_FILE", "SECRET_TOKEN"] {
        assert!(!env.contains_key(secret), "{secret} reached the command");
    }
    assert_eq!(env["KEEP_ME"], "kept");
    assert_eq!(env["NOT_THE_TOKEN"], "s3cret-token-2");
    assert!(env.contains_key("PATH"));
    assert_eq!(env["AUTOHEALER_ANOMALY"], "show");
    assert_eq!(env["AUTOHEALER_WORKFLOW"], "show");
    assert_eq!(env["AUTOHEALER_ACTION_ID"], id);
    assert_eq!(env["AUTOHEALER_DETAILS"], "{}");
    assert_eq!(env["AUTOHEALER_PARAMS"], "{}");
}
