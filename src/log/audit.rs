//! The audit log (`--audit-log`): the healing-action records appended to a file as JSON lines,
//! written by the log queue's thread (`queue`) in both formats.
//!
//! It follows rotation (`AuditFile`), and it fails loudly but never fatally (SPEC §8, `Audit`):
//! a failed write (disk full, I/O error) loses that write's lines from the file only — they
//! reached stderr already — is counted, and is reported at most once per `REPORT_INTERVAL`
//! while the failure lasts, then once more when a write works again. What was written reaches
//! the disk (`fdatasync`) within `SYNC_INTERVAL`, and before the log is flushed at shutdown.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slog::Logger;

use super::records;

/// The longest a written line waits for `fdatasync`: a host that loses power loses at most
/// this much of the audit log. One sync a second costs a busy daemon nothing measurable.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// While writes keep failing, the failure is reported at most this often: a full disk under a
/// flood of anomalies must not flood the journal in turn.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Where audit lines go: the file, or memory in tests.
pub trait Target: Send {
    /// Appends whole lines. On an error, some of them may have been written.
    fn append(&mut self, lines: &[u8]) -> io::Result<()>;

    /// Makes what was appended durable.
    fn sync(&mut self) -> io::Result<()>;
}

/// An append-only audit file that follows rotation: when the path no longer names the file it
/// has open (renamed away by logrotate, deleted, or a symlink re-pointed), it opens the path
/// anew before writing.
pub struct AuditFile {
    path: PathBuf,
    file: File,
    identity: (u64, u64),
    /// A failed write left a line without its end; the next write starts a new line, so the
    /// lines after it are whole.
    torn: bool,
}

impl AuditFile {
    /// Opens (creating, mode 0640) `path` for appending.
    pub fn open(path: &Path) -> io::Result<AuditFile> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("cannot open the audit log {}: {err}", path.display()),
                )
            })?;
        let meta = file.metadata()?;
        Ok(AuditFile {
            path: path.to_path_buf(),
            file,
            identity: (meta.dev(), meta.ino()),
            torn: false,
        })
    }

    fn reopen_if_rotated(&mut self) {
        let current = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        if current.ok() != Some(self.identity) {
            // On failure keep writing to the old handle rather than losing the record.
            if let Ok(reopened) = AuditFile::open(&self.path) {
                *self = reopened;
            }
        }
    }
}

impl Target for AuditFile {
    fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        self.reopen_if_rotated();
        append_lines(&mut self.file, lines, &mut self.torn)
    }

    fn sync(&mut self) -> io::Result<()> {
        match self.file.sync_data() {
            // A pipe or a character device (`--audit-log /dev/stdout`) has nothing to sync.
            Err(err) if err.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32) => Ok(()),
            other => other,
        }
    }
}

/// Writes `lines` to `out`, first ending the line a failed write left `torn`; sets `torn` when
/// this write fails within a line.
fn append_lines(out: &mut impl Write, lines: &[u8], torn: &mut bool) -> io::Result<()> {
    if *torn {
        out.write_all(b"\n")?;
        *torn = false;
    }
    let mut written = 0;
    while written < lines.len() {
        match out.write(&lines[written..]) {
            Ok(0) => return Err(tear(lines, written, torn, io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(tear(lines, written, torn, err)),
        }
    }
    Ok(())
}

/// Notes whether a write that stopped after `written` bytes of `lines` left a line unended.
fn tear(lines: &[u8], written: usize, torn: &mut bool, err: io::Error) -> io::Error {
    *torn = written > 0 && lines[written - 1] != b'\n';
    err
}

/// The audit log as the log thread drives it: writes, syncs, and the failure it reports.
pub struct Audit<T> {
    target: T,
    path: PathBuf,
    /// When the oldest write not yet synced was made; none when all is synced.
    unsynced_since: Option<Instant>,
    /// Set from the first failed write until a write works again.
    failing: Option<Failing>,
}

/// A failure in progress.
struct Failing {
    last_report: Instant,
    failed_writes: u64,
    lost_records: u64,
}

impl<T: Target> Audit<T> {
    /// The audit log writing to `target`, named `path` in records.
    pub fn new(target: T, path: &Path) -> Audit<T> {
        Audit {
            target,
            path: path.to_path_buf(),
            unsynced_since: None,
            failing: None,
        }
    }

    /// Appends `lines` (whole JSON lines); a failure or a recovery is recorded through `log`.
    pub fn write(&mut self, lines: &[u8], log: &Logger, now: Instant) {
        match self.target.append(lines) {
            Ok(()) => {
                self.unsynced_since.get_or_insert(now);
                if let Some(failing) = self.failing.take() {
                    records::audit_recovered(
                        log,
                        &self.path,
                        failing.failed_writes,
                        failing.lost_records,
                    );
                }
            }
            Err(err) => {
                // Part of them may be in the file: it still needs a sync.
                self.unsynced_since.get_or_insert(now);
                let lost = memchr::memchr_iter(b'\n', lines).count() as u64;
                self.failed(&err, lost, log, now);
            }
        }
    }

    /// When the next sync is due: `SYNC_INTERVAL` after the oldest write not yet synced.
    pub fn sync_due(&self) -> Option<Instant> {
        self.unsynced_since.map(|since| since + SYNC_INTERVAL)
    }

    /// Syncs what was written (fdatasync); a failure is recorded as a failed write.
    pub fn sync(&mut self, log: &Logger, now: Instant) {
        if self.unsynced_since.take().is_none() {
            return;
        }
        if let Err(err) = self.target.sync() {
            self.failed(&err, 0, log, now);
        }
    }

    /// Counts a failed write and reports it unless it was reported within `REPORT_INTERVAL`.
    fn failed(&mut self, err: &io::Error, lost_records: u64, log: &Logger, now: Instant) {
        let report = self
            .failing
            .as_ref()
            .is_none_or(|failing| now.duration_since(failing.last_report) >= REPORT_INTERVAL);
        records::audit_write_failed(log, &self.path, err, report);
        let failing = self.failing.get_or_insert(Failing {
            last_report: now,
            failed_writes: 0,
            lost_records: 0,
        });
        if report {
            failing.last_report = now;
        }
        failing.failed_writes += 1;
        failing.lost_records += lost_records;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use slog::{o, Drain};

    use super::super::captured::Captured;
    use super::*;

    /// A target that fails or works as the test scripts it, and remembers what it got.
    #[derive(Default)]
    struct Scripted {
        appends: VecDeque<io::Result<()>>,
        syncs: VecDeque<io::Result<()>>,
        written: Vec<u8>,
        synced: usize,
    }

    impl Target for Scripted {
        fn append(&mut self, lines: &[u8]) -> io::Result<()> {
            let result = self.appends.pop_front().unwrap_or(Ok(()));
            if result.is_ok() {
                self.written.extend_from_slice(lines);
            }
            result
        }
        fn sync(&mut self) -> io::Result<()> {
            self.synced += 1;
            self.syncs.pop_front().unwrap_or(Ok(()))
        }
    }

    /// A logger whose records the test reads back as JSON.
    fn recorded() -> (Logger, Captured) {
        let records = Captured::default();
        let drain = Mutex::new(super::super::json::JsonLines::new(records.clone()));
        (Logger::root(drain.fuse(), o!()), records)
    }

    fn full() -> io::Result<()> {
        Err(io::Error::from_raw_os_error(28))
    }

    #[test]
    fn a_failure_is_reported_once_per_interval_and_its_end_once() {
        let (log, records) = recorded();
        let target = Scripted {
            appends: [full(), full(), full(), Ok(())].into(),
            ..Scripted::default()
        };
        let mut audit = Audit::new(target, Path::new("/var/log/audit.log"));
        let start = Instant::now();
        audit.write(b"{\"a\":1}\n{\"a\":2}\n", &log, start);
        audit.write(b"{\"a\":3}\n", &log, start + REPORT_INTERVAL / 2);
        audit.write(b"{\"a\":4}\n", &log, start + REPORT_INTERVAL);
        audit.write(b"{\"a\":5}\n", &log, start + REPORT_INTERVAL * 2);
        let records = records.lines();
        let msgs: Vec<&str> = records.iter().map(|r| r["msg"].as_str().unwrap()).collect();
        assert_eq!(
            msgs,
            [
                "audit log write failed",
                "audit log write failed",
                "audit log recovered"
            ]
        );
        assert_eq!(records[0]["level"], "ERRO");
        assert_eq!(records[0]["path"], "/var/log/audit.log");
        assert!(
            records[0]["error"]
                .as_str()
                .unwrap()
                .contains("No space left on device"),
            "{}",
            records[0]
        );
        assert_eq!(records[2]["level"], "INFO");
        assert_eq!(records[2]["failed_writes"], 3);
        assert_eq!(records[2]["lost_records"], 4);
        assert_eq!(audit.target.written, b"{\"a\":5}\n");
    }

    #[test]
    fn writes_are_synced_within_the_interval_and_a_failed_sync_is_a_failed_write() {
        let (log, records) = recorded();
        let target = Scripted {
            syncs: [Ok(()), Err(io::Error::from_raw_os_error(5))].into(),
            ..Scripted::default()
        };
        let mut audit = Audit::new(target, Path::new("audit.log"));
        let start = Instant::now();
        assert_eq!(audit.sync_due(), None);
        audit.write(b"{}\n", &log, start);
        audit.write(b"{}\n", &log, start + SYNC_INTERVAL / 2);
        // Due a second after the oldest unsynced write, not the newest.
        assert_eq!(audit.sync_due(), Some(start + SYNC_INTERVAL));
        audit.sync(&log, start + SYNC_INTERVAL);
        assert_eq!((audit.sync_due(), audit.target.synced), (None, 1));
        // Nothing written since: nothing to sync.
        audit.sync(&log, start + SYNC_INTERVAL);
        assert_eq!(audit.target.synced, 1);
        audit.write(b"{}\n", &log, start + SYNC_INTERVAL * 2);
        audit.sync(&log, start + SYNC_INTERVAL * 3);
        let records = records.lines();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["msg"], "audit log write failed");
        assert_eq!(
            records[0]["error"].as_str().unwrap(),
            io::Error::from_raw_os_error(5).to_string()
        );
    }

    #[test]
    fn a_write_that_fails_within_a_line_leaves_the_lines_after_it_whole() {
        /// Takes `room` bytes, then fails as a full disk does.
        struct Room(usize, Vec<u8>);
        impl Write for Room {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return full().map(|()| 0);
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                self.1.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut torn = false;
        let mut out = Room(12, Vec::new());
        assert!(append_lines(&mut out, b"{\"a\":1}\n{\"b\":2}\n", &mut torn).is_err());
        assert!(torn);
        out.0 = 100;
        append_lines(&mut out, b"{\"c\":3}\n", &mut torn).unwrap();
        assert_eq!(out.1, b"{\"a\":1}\n{\"b\"\n{\"c\":3}\n");
        assert!(!torn);
        // A failure at a line's end tears nothing.
        out.0 = 8;
        assert!(append_lines(&mut out, b"{\"d\":4}\n{\"e\":5}\n", &mut torn).is_err());
        assert!(!torn);
    }

    #[test]
    fn the_file_follows_a_symlink_re_pointed_away_from_a_full_device() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("audit.log");
        std::os::unix::fs::symlink("/dev/full", &link).unwrap();
        let mut file = AuditFile::open(&link).unwrap();
        let err = file.append(b"{}\n").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
        let real = dir.path().join("real.log");
        let new_link = dir.path().join("audit.log.new");
        std::os::unix::fs::symlink(&real, &new_link).unwrap();
        std::fs::rename(&new_link, &link).unwrap();
        file.append(b"{\"after\":1}\n").unwrap();
        file.sync().unwrap();
        assert_eq!(std::fs::read(&real).unwrap(), b"{\"after\":1}\n");
    }
}
