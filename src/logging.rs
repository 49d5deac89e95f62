//! The slog pipeline (SPEC §5): term or JSON to stderr, behind an async drain that blocks rather
//! than drops, with the level filter in front of it so filtered records never cross the channel.
//! With `--audit-log`, healing-action records are also appended to a file as JSON lines.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use slog::{o, Drain, Logger};

use crate::cli::LogFormat;
use crate::log_queue;

/// Records the channel holds before callers block: large enough to absorb bursts without
/// blocking, small enough that the preallocated ring stays well under a MiB of resident memory.
const LOG_CHANNEL_RECORDS: usize = 4096;

/// The slog tag of the records that describe healing actions: what the audit log keeps.
/// (A tag survives the async channel; the message's static string does not.)
pub const AUDIT_TAG: &str = "audit";

/// Keeps the logging thread alive; dropping it flushes every queued record.
pub enum LogGuard {
    /// The term format's slog-async thread.
    Async(slog_async::AsyncGuard),
    /// The JSON format's queue (see `log_queue`).
    Queue(log_queue::QueueGuard),
}

type BoxedDrain = Box<dyn Drain<Ok = (), Err = slog::Never> + Send>;

/// Builds the daemon's root logger. `format` defaults to term on a terminal and JSON otherwise.
pub fn init(
    format: Option<LogFormat>,
    level: slog::Level,
    audit_log: Option<&Path>,
) -> io::Result<(Logger, LogGuard)> {
    let format = format.unwrap_or(if io::stderr().is_terminal() {
        LogFormat::Term
    } else {
        LogFormat::Json
    });
    let audit = audit_log.map(AuditFile::open).transpose()?;
    // The audit log keeps every healing-action record (CRIT and WARN) whatever --log-level
    // says, so the level applies to stderr alone and the outer filter lets WARN through too.
    let outer_level = if audit.is_some() && level.as_usize() < slog::Level::Warning.as_usize() {
        slog::Level::Warning
    } else {
        level
    };
    Ok(match format {
        // The daemon's usual case (journald, files): formatted in place, written in batches.
        LogFormat::Json => {
            let (drain, guard) = log_queue::start(io::stderr(), level, audit, AUDIT_TAG)?;
            (
                Logger::root(
                    slog::LevelFilter::new(drain, outer_level).ignore_res(),
                    o!(),
                ),
                LogGuard::Queue(guard),
            )
        }
        LogFormat::Term => {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            let stderr = slog::LevelFilter::new(
                slog_term::FullFormat::new(decorator).build().ignore_res(),
                level,
            )
            .ignore_res();
            let drain: BoxedDrain = match audit {
                Some(file) => {
                    let audit = AuditFilter(json_drain(RecordWriter::new(file)));
                    Box::new(slog::Duplicate::new(stderr, audit).ignore_res())
                }
                None => Box::new(stderr),
            };
            let (async_drain, guard) = slog_async::Async::new(drain)
                .chan_size(LOG_CHANNEL_RECORDS)
                .overflow_strategy(slog_async::OverflowStrategy::Block)
                .thread_name("autohealer-log".into())
                .build_with_guard();
            (
                Logger::root(
                    slog::LevelFilter::new(async_drain, outer_level).ignore_res(),
                    o!(),
                ),
                LogGuard::Async(guard),
            )
        }
    })
}

fn json_drain<W: Write + Send + 'static>(writer: W) -> impl Drain<Ok = (), Err = slog::Never> {
    slog_json::Json::new(writer)
        .add_default_keys()
        .build()
        .ignore_res()
}

/// Hands each JSON record to `inner` in one write, once the record is complete.
///
/// slog-json writes a record as about ninety small pieces. A `LineWriter` searched each piece
/// for a newline, which was a fifth of the daemon's instructions per `POST /anomaly` (issue 5,
/// callgrind); appending to a buffer costs a copy. The record ends with the newline slog-json
/// writes on its own after it; serde_json escapes newlines inside strings, so no other piece
/// ends with one.
pub struct RecordWriter<W: Write> {
    inner: W,
    record: Vec<u8>,
}

impl<W: Write> RecordWriter<W> {
    /// Capacity kept between records; a larger record's buffer (big `details`) is released.
    const RETAINED_BYTES: usize = 16 * 1024;

    pub fn new(inner: W) -> RecordWriter<W> {
        RecordWriter {
            inner,
            record: Vec::with_capacity(1024),
        }
    }

    fn write_record(&mut self) -> io::Result<()> {
        if self.record.is_empty() {
            return Ok(());
        }
        let result = self.inner.write_all(&self.record);
        // Cleared even on error: a record is written once or not at all, never twice.
        self.record.clear();
        if self.record.capacity() > Self::RETAINED_BYTES {
            self.record.shrink_to(Self::RETAINED_BYTES);
        }
        result
    }
}

impl<W: Write> Write for RecordWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.record.extend_from_slice(buf);
        if buf.last() == Some(&b'\n') {
            self.write_record()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_record()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for RecordWriter<W> {
    fn drop(&mut self) {
        let _ = self.write_record();
    }
}

/// Passes on only the healing-action records.
struct AuditFilter<D>(D);

impl<D: Drain<Ok = (), Err = slog::Never>> Drain for AuditFilter<D> {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if record.tag() == AUDIT_TAG {
            self.0.log(record, values)?;
        }
        Ok(())
    }
}

/// An append-only audit file that follows rotation: when the path no longer names the file it
/// has open (renamed away by logrotate, or deleted), it opens the path anew before writing.
struct AuditFile {
    path: PathBuf,
    file: File,
    identity: (u64, u64),
}

impl AuditFile {
    fn open(path: &Path) -> io::Result<AuditFile> {
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

impl Write for AuditFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reopen_if_rotated();
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use slog::{crit, info};

    use super::*;

    /// Remembers each write it gets.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_json_record_is_one_write_of_one_line() {
        let writes = Writes::default();
        let drain = std::sync::Mutex::new(json_drain(RecordWriter::new(writes.clone())));
        let log = Logger::root(drain.ignore_res(), o!());
        crit!(log, "healing action triggered"; "anomaly" => "a\nb", "n" => 1);
        info!(log, "listening"; "addr" => "127.0.0.1:8000");
        let writes = writes.0.lock().unwrap().clone();
        assert_eq!(writes.len(), 2);
        for write in &writes {
            let line = std::str::from_utf8(write).unwrap();
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{line:?}"
            );
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        let first: serde_json::Value = serde_json::from_slice(&writes[0]).unwrap();
        assert_eq!(first["msg"], "healing action triggered");
        assert_eq!(first["anomaly"], "a\nb");
        assert_eq!(first["n"], 1);
    }
}
