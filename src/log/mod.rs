//! The log (SPEC §5): `records` (one function per record), the slog pipeline to stderr built
//! here, `json` (the JSON line format), `queue` (the JSON path's log thread), `term` (the term
//! format's escaping) and the audit file.
//!
//! The slog pipeline, to stderr. JSON: each record is formatted on the thread that logs
//! it and written in batches by `log_queue`'s thread, which filters by level itself. Term:
//! slog-async, which blocks rather than drops, with the level filter in front of it so filtered
//! records never cross its channel. With `--audit-log`, healing-action records are also
//! appended to a file as JSON lines.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use slog::{o, Drain, Logger};

pub mod json;
mod queue;
pub mod records;
mod term;

use json::JsonLines;

/// Records the channel holds before callers block: large enough to absorb bursts without
/// blocking, small enough that the preallocated ring stays well under a MiB of resident memory.
const LOG_CHANNEL_RECORDS: usize = 4096;

/// How log records are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Term,
    Json,
}

/// Flushes every queued record when dropped: what `main` holds until it exits.
pub enum LogGuard {
    /// The term format's slog-async thread.
    Async(slog_async::AsyncGuard),
    /// The JSON format's queue (see `queue`).
    Queue(queue::QueueGuard),
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
    Ok(match format {
        // The daemon's usual case (journald, files): formatted in place, written in batches.
        LogFormat::Json => {
            let (drain, guard) = queue::start(io::stderr(), level, audit)?;
            (Logger::root(drain, o!()), LogGuard::Queue(guard))
        }
        LogFormat::Term => {
            // Escaped, so no value can start a line of its own (SPEC §8).
            let decorator = term::Escaping(slog_term::TermDecorator::new().stderr().build());
            let stderr = slog::LevelFilter::new(
                slog_term::FullFormat::new(decorator).build().ignore_res(),
                level,
            )
            .ignore_res();
            let audit_enabled = audit.is_some();
            let drain: BoxedDrain = match audit {
                Some(file) => {
                    let audit = AuditFilter(JsonLines::new(file).ignore_res());
                    Box::new(slog::Duplicate::new(stderr, audit).ignore_res())
                }
                None => Box::new(stderr),
            };
            // The audit log keeps every healing-action record whatever --log-level says, so
            // the level above applies to stderr alone, and the filter in front of the channel
            // is the rule `queue` applies to the JSON path (`records::is_kept`).
            let (async_drain, guard) = slog_async::Async::new(drain)
                .chan_size(LOG_CHANNEL_RECORDS)
                .overflow_strategy(slog_async::OverflowStrategy::Block)
                .thread_name("autohealer-log".into())
                .build_with_guard();
            (
                Logger::root(
                    slog::Filter::new(async_drain, move |record| {
                        records::is_kept(record, level, audit_enabled)
                    })
                    .ignore_res(),
                    o!(),
                ),
                LogGuard::Async(guard),
            )
        }
    })
}

/// Passes on only the healing-action records.
struct AuditFilter<D>(D);

impl<D: Drain<Ok = (), Err = slog::Never>> Drain for AuditFilter<D> {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if records::is_audit(record) {
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
