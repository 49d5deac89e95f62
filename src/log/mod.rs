//! The log (SPEC §5): `records` (one function per record), the slog pipeline to stderr built
//! here, `json` (the JSON line format), `queue` (the log thread that writes JSON lines in
//! batches), `term` (the term format's escaping), `journal` (the `<N>` priority prefix) and
//! `audit` (the audit file).
//!
//! The slog pipeline, to stderr. JSON: each record is formatted on the thread that logs it and
//! written in batches by `queue`'s thread, which filters by level itself. Term: slog-async, which
//! blocks rather than drops, with the level filter in front of it so filtered records never
//! cross its channel. With `--audit-log`, healing-action records are also appended to a file as
//! JSON lines, by `queue`'s thread in both formats. Under the journal, each stderr line starts
//! with its priority (`journal`); the audit file's never do.

use std::io::{self, IsTerminal};
use std::path::Path;
use std::sync::Arc;

use slog::{o, Drain, Logger};

mod audit;
#[cfg(test)]
mod captured;
pub mod journal;
pub mod json;
mod queue;
pub mod records;
mod term;

use audit::{Audit, AuditFile};
use queue::Outputs;

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
    /// The term format: the audit log's queue, if any, then slog-async's thread. In that order
    /// (fields drop in order): the queue's last records about the audit log go through
    /// slog-async.
    Term(Option<queue::QueueGuard>, slog_async::AsyncGuard),
    /// The JSON format's queue (see `queue`).
    Json(queue::QueueGuard),
}

/// Builds the daemon's root logger. `format` defaults to term on a terminal and JSON otherwise.
/// `journal`: stderr is the journal, so each line there starts with its priority (`journal`).
pub fn init(
    format: Option<LogFormat>,
    level: slog::Level,
    audit_log: Option<&Path>,
    journal: bool,
) -> io::Result<(Logger, LogGuard)> {
    let format = format.unwrap_or(if io::stderr().is_terminal() {
        LogFormat::Term
    } else {
        LogFormat::Json
    });
    let audit = match audit_log {
        Some(path) => Some(Audit::new(AuditFile::open(path)?, path)),
        None => None,
    };
    Ok(match format {
        // The daemon's usual case (journald, files): formatted in place, written in batches.
        LogFormat::Json => {
            let (drain, guard) = queue::start(Outputs {
                stderr: Some((io::stderr(), level)),
                audit,
                reports: None,
                journal,
            })?;
            (Logger::root(drain, o!()), LogGuard::Json(guard))
        }
        LogFormat::Term => {
            // Escaped, so no value can start a line of its own (SPEC §8).
            // Under the journal, each line starts with its priority, outside the escaping.
            let decorator = journal::Prioritized {
                inner: term::Escaping(slog_term::TermDecorator::new().stderr().build()),
                prioritized: journal,
            };
            let formatter = slog_term::FullFormat::new(decorator).build().ignore_res();
            let (async_drain, async_guard) = slog_async::Async::new(formatter)
                .chan_size(LOG_CHANNEL_RECORDS)
                .overflow_strategy(slog_async::OverflowStrategy::Block)
                .thread_name("autohealer-term".into())
                .build_with_guard();
            // The level applies to stderr alone (the audit log keeps every healing-action
            // record whatever --log-level says), in front of the channel so filtered records
            // never cross it.
            let stderr = Arc::new(slog::LevelFilter::new(async_drain, level).ignore_res());
            match audit {
                None => (
                    Logger::root(stderr, o!()),
                    LogGuard::Term(None, async_guard),
                ),
                // The audit records go to the queue, formatted as JSON on the logging thread;
                // the queue's thread writes and syncs the file, and reports its failures
                // through slog-async (another thread, so waiting on it cannot deadlock).
                Some(audit) => {
                    let (audit_drain, queue_guard) = queue::start(Outputs {
                        stderr: None::<(io::Stderr, slog::Level)>,
                        audit: Some(audit),
                        reports: Some(Logger::root(stderr.clone(), o!())),
                        // Not stderr: the queue writes only the audit log here.
                        journal: false,
                    })?;
                    let both = slog::Duplicate::new(stderr, audit_drain).ignore_res();
                    // What neither side keeps is dropped once, before either looks at it.
                    let kept = slog::Filter::new(both, move |record| {
                        records::is_kept(record, level, true)
                    });
                    (
                        Logger::root(kept.ignore_res(), o!()),
                        LogGuard::Term(Some(queue_guard), async_guard),
                    )
                }
            }
        }
    })
}
