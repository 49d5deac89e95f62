//! Hostile or broken maps (SPEC §8): what the daemon and `check` do with a map path that is no
//! regular file, a huge file, an alias bomb or a map full of errors. Each is refused with a clear
//! error, and the daemon keeps serving the map in force.

use nix::sys::signal::Signal;

use crate::util::{run_cli, Daemon, MapDir};

const MAP: &str = "workflows:\n  one: {}\nreflexes:\n  probe: one\n";

#[test]
fn a_fifo_or_device_swapped_in_is_rejected_and_the_daemon_still_stops() {
    let map = MapDir::new(MAP);
    let mut daemon = Daemon::start(&map.path(), &[]);
    let version = daemon.get("/reflexes").json()["version"].clone();

    // A FIFO renamed over the map: opening it for reading would wait for a writer forever.
    let fifo = map.file("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::rename(&fifo, map.path()).unwrap();
    let rejected = daemon.wait_for_record("reflex map rejected", |r| {
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("it is a FIFO (named pipe), not a regular file"))
    });
    assert_eq!(rejected["kept_version"], version);
    let response = daemon.request("POST", "/-/reload", &[], b"");
    assert_eq!(response.status, 500, "{}", response.body);
    let body = response.json();
    assert_eq!(
        body["error"],
        format!(
            "{}: cannot read the reflex map: it is a FIFO (named pipe), not a regular file",
            map.path().display()
        )
    );
    assert_eq!(body["kept_version"], version);
    assert_eq!(daemon.workflow_for("probe").as_deref(), Some("one"));

    // A symlink swapped onto a device, which would be read forever.
    let link = map.file("link");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    std::fs::rename(&link, map.path()).unwrap();
    let response = daemon.request("POST", "/-/reload", &[], b"");
    assert_eq!(response.status, 500, "{}", response.body);
    assert!(
        response.json()["error"]
            .as_str()
            .unwrap()
            .ends_with("it is a character device, not a regular file"),
        "{}",
        response.body
    );
    assert_eq!(daemon.workflow_for("probe").as_deref(), Some("one"));

    // The reload thread is free, so SIGTERM still stops the daemon cleanly.
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit().code(), Some(0));
}

#[test]
fn a_map_over_32_mib_is_refused_before_parsing() {
    let map = MapDir::new(MAP);
    // Sparse: the size is what counts.
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(map.path())
        .unwrap();
    file.set_len(32 * 1024 * 1024 + 1).unwrap();
    let path = map.path().display().to_string();
    let (code, stdout, stderr) = run_cli(&["check", &path]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "{path}: cannot read the reflex map: it is larger than the limit of 32 MiB (33554432 bytes)"
        )
    );
}

#[test]
fn check_refuses_an_alias_bomb_without_expanding_it() {
    // 12 KB of text whose aliases would expand to 3 million nodes in a reflex's params.
    let mut bomb = String::from(MAP);
    bomb.push_str("  bomb:\n    workflow: one\n    params:\n      big: &big [");
    bomb.push_str(&vec!["lol"; 3_000].join(", "));
    bomb.push_str("]\n      copies: [");
    bomb.push_str(&vec!["*big"; 1_000].join(", "));
    bomb.push_str("]\n");
    let map = MapDir::new(&bomb);
    let path = map.path().display().to_string();
    let (code, stdout, stderr) = run_cli(&["check", &path]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.starts_with(&format!("{path}:8:")),
        "the error has a position: {stderr}"
    );
    assert!(
        stderr.contains(": reflexes.bomb.params.copies[")
            && stderr.contains("]: alias expansion limit: anchors and aliases expand the map"),
        "{stderr}"
    );
}

#[test]
fn check_lists_a_hundred_errors_then_counts_the_rest() {
    let mut content = String::from(MAP);
    for i in 0..1_000 {
        content.push_str(&format!("  broken.r{i}: missing\n"));
    }
    let map = MapDir::new(&content);
    let path = map.path().display().to_string();
    let (code, stdout, stderr) = run_cli(&["check", &path]);
    assert_eq!(code, 1, "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 101, "{stderr}");
    assert_eq!(
        lines[0],
        format!(
            "{path}:5:3: reflex `broken.r0` names workflow `missing`, which is not declared under `workflows:`"
        )
    );
    assert_eq!(lines[100], "… and 900 more errors");
}
