//! The command line (SPEC §1): `check`, startup failures and their exit codes.

use crate::util::{run_cli, Daemon, MapDir};

#[test]
fn check_accepts_the_shipped_map() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/reflex_map.yml");
    let (code, stdout, stderr) = run_cli(&["check", shipped]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("valid, version ")
            && stdout.contains(
                "4 reflexes (1 exact, 3 patterns), 2 workflows (1 log, 0 exec, 1 webhook)"
            ),
        "{stdout}"
    );
}

#[test]
fn check_reports_every_error_with_its_position() {
    let map = MapDir::new("workflows:\n  one: {}\nreflexes:\n  a: one\n  b: missing\n  c: gone\n");
    let path = map.path().display().to_string();
    let (code, stdout, stderr) = run_cli(&["check", &path]);
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "{path}:5:3: reflex `b` names workflow `missing`, which is not declared under `workflows:`\n\
             {path}:6:3: reflex `c` names workflow `gone`, which is not declared under `workflows:`\n"
        )
    );
}

#[test]
fn check_notes_log_only_workflows_of_the_original_format() {
    let map = MapDir::new("anomalies:\n  - name: a.b\n    workflow: clear_cache\n");
    let path = map.path().display().to_string();
    let (code, stdout, _) = run_cli(&["check", &path]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!(
            "{path}: note: workflow `clear_cache` is not declared (no `workflows:` section), so it runs as log-only"
        )),
        "{stdout}"
    );
}

#[test]
fn check_of_a_missing_file_fails() {
    let (code, _, stderr) = run_cli(&["check", "/nonexistent/map.yml"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "/nonexistent/map.yml: cannot read the reflex map: No such file or directory (os error 2)\n"
    );
}

#[test]
fn startup_with_a_missing_or_invalid_map_exits_78() {
    let failure = Daemon::try_start(std::path::Path::new("/nonexistent/map.yml"), &[])
        .err()
        .expect("must not start");
    failure.assert_exit(78, "cannot read the reflex map");

    let map = MapDir::new("workflows: {}\nreflexes:\n  a: b\n");
    let failure = Daemon::try_start(&map.path(), &[])
        .err()
        .expect("must not start");
    failure.assert_exit(
        78,
        &format!(
            "{}:3:3: reflex `a` names workflow `b`, which is not declared under `workflows:`",
            map.path().display()
        ),
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, stderr) = run_cli(&["--listen", "not-an-address"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = run_cli(&["--shutdown-timeout", "soon"]);
    assert_eq!(code, 2);
}

#[test]
fn a_busy_port_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let map = MapDir::new("workflows: {a: {}}\nreflexes: {x: a}\n");
    let path = map.path().display().to_string();
    let (code, _, stderr) =
        run_cli(&["--config", &path, "--listen", &addr, "--log-format", "json"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn run_environment_does_not_break_check() {
    // AUTOHEALER_LISTEN belongs to `run`; a bad value must not fail `check`.
    let map = MapDir::new("workflows: {a: {}}\nreflexes: {x: a}\n");
    let output = std::process::Command::new(crate::util::binary())
        .arg("check")
        .env("AUTOHEALER_LISTEN", "not-an-address")
        .env("AUTOHEALER_CONFIG", map.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with(&format!("{}: valid", map.path().display())),
        "{stdout}"
    );
}
