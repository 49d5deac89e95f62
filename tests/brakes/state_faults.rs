//! A state directory the daemon cannot write (SPEC §9): read-only, or full. The daemon serves on,
//! says so once with the OS error, retries every second, and says when a write works again.
//!
//! The tests run as root, for whom permission bits do not stop a write (chmod 0500 would prove
//! nothing). What does stop root: an immutable directory (`chattr +i`: EPERM, as a read-only
//! mount gives EROFS), and a file system with no room left (a small tmpfs: ENOSPC). Where the
//! machine offers neither, the test says so on stderr and passes without running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{dispatch, held_back, outcome, wait_for_state_file};
use crate::util::{Daemon, MapDir};

const MAP: &str = "workflows:\n  cool: {exec: {command: ['true']}, max_concurrent: 10}\nreflexes:\n  'disk.*.full': {workflow: cool, cooldown: 1h}\n";

/// Runs `program args`; true when it ran and succeeded.
fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|output| output.status.success())
}

fn skipped(why: &str) {
    // Straight to stderr: the harness captures the output of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// A directory made immutable, made mutable again when dropped (else it could not be removed).
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Option<Immutable> {
        run("chattr", &["+i", &dir.display().to_string()]).then(|| Immutable(dir.to_path_buf()))
    }

    fn clear(&self) {
        assert!(run("chattr", &["-i", &self.0.display().to_string()]));
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = run("chattr", &["-i", &self.0.display().to_string()]);
    }
}

/// A small tmpfs mounted on a directory, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path) -> Option<SmallDisk> {
        let at = dir.display().to_string();
        run(
            "mount",
            &["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", &at],
        )
        .then(|| SmallDisk(dir.to_path_buf()))
    }

    /// Fills it with one file, until no byte more fits.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", &self.0.display().to_string()]);
    }
}

/// Starts the daemon on `state_dir`, changes its state twice across more than one write
/// interval while the directory cannot be written, makes it writable with `fix`, and checks
/// the one WARN, the recovery, and that the state reached the file. `error` is the OS error the
/// WARN must quote.
fn serves_on_and_retries(map: &MapDir, state_dir: &Path, error: &str, fix: impl FnOnce()) {
    let dir = state_dir.display().to_string();
    let daemon = Daemon::start(&map.path(), &["--state-dir", &dir]);
    let first = dispatch(&daemon, "disk.a.full");
    assert_eq!(outcome(&daemon, &first), "ok");
    let warn = daemon.wait_for_record("state write failed", |_| true);
    assert_eq!(warn["level"], "WARN");
    assert!(warn["error"].as_str().unwrap().contains(error), "{warn}");
    assert_eq!(
        warn["path"],
        state_dir.join("state.json").display().to_string()
    );
    // Still serving, and still changing state, while every write fails.
    held_back(&daemon, "disk.a.full", "cooldown");
    let second = dispatch(&daemon, "disk.b.full");
    assert_eq!(outcome(&daemon, &second), "ok");
    // Let the writer retry, and fail, at least twice more: still one WARN.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(daemon.records_with("state write failed").len(), 1);
    assert!(daemon.records_with("state write recovered").is_empty());

    fix();
    let recovered = daemon.wait_for_record("state write recovered", |_| true);
    assert_eq!(recovered["level"], "INFO");
    let state = wait_for_state_file(state_dir, "both cooldowns", |s| {
        let text = s.to_string();
        text.contains("disk.a.full") && text.contains("disk.b.full")
    });
    assert_eq!(state["format"], 1);
    assert_eq!(daemon.records_with("state write failed").len(), 1);
}

/// A map and an empty state directory beside it.
fn map_and_state_dir() -> (MapDir, PathBuf) {
    let map = MapDir::new(MAP);
    let state_dir = map.file("state");
    std::fs::create_dir(&state_dir).unwrap();
    (map, state_dir)
}

#[test]
fn a_read_only_state_dir_is_said_once_and_retried() {
    let (map, state_dir) = map_and_state_dir();
    let Some(immutable) = Immutable::set(&state_dir) else {
        skipped("chattr +i is not available here (e2fsprogs, a file system with attributes)");
        return;
    };
    serves_on_and_retries(&map, &state_dir, "Operation not permitted", || {
        immutable.clear()
    });
}

#[test]
fn a_full_state_dir_is_said_once_and_retried() {
    let (map, state_dir) = map_and_state_dir();
    let Some(disk) = SmallDisk::mount(&state_dir) else {
        skipped("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)");
        return;
    };
    let filler = disk.fill();
    serves_on_and_retries(&map, &state_dir, "No space left on device", || {
        std::fs::remove_file(&filler).unwrap()
    });
}
