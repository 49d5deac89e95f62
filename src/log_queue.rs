//! The JSON log path: each record is formatted on the thread that logs it (`json_log`) and the
//! finished line is queued for the `autohealer-log` thread, which writes what has gathered in one write(2) to
//! stderr (and one to the audit log).
//!
//! slog-async copied every key of every record into owned values, sent them, re-formatted them on
//! its thread and freed the copies (issue 5, callgrind). Here a finished line is one allocation,
//! and the log thread, once woken, lets lines gather for `BATCH_WINDOW` before it writes, so a
//! busy daemon makes one write and one wake-up per batch instead of two per request. The queue is
//! bounded and a full queue blocks the logger, so no record is ever dropped (SPEC §5).

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

use slog::Drain;

use crate::{json_log, logging};

/// Lines the queue holds before a logging thread blocks.
const QUEUED_LINES: usize = 16 * 1024;

/// How long the log thread lets lines gather after the first one wakes it. A record reaches
/// stderr at most this much later; in exchange a busy daemon writes once per window.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// What the log thread is handed.
enum Queued {
    /// One JSON record, ending in a newline, and where it goes.
    Line {
        bytes: Vec<u8>,
        to_stderr: bool,
        to_audit: bool,
    },
    /// Answer once every line queued before this one has been written.
    Flush(mpsc::Sender<()>),
}

/// A slog drain that formats JSON records in place and queues them for the log thread.
pub struct QueuedJson {
    queue: SyncSender<Queued>,
    /// Records below this level go to the audit log only (or nowhere).
    stderr_level: slog::Level,
    /// Whether healing-action records (`logging::is_audit`) are also written to the audit log.
    audit: bool,
}

/// Flushes the queue when dropped: every record logged before is written.
pub struct QueueGuard {
    queue: SyncSender<Queued>,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let (ack, done) = mpsc::channel();
        if self.queue.send(Queued::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

/// Starts the log thread writing to `stderr` and, when given, `audit` (the healing-action
/// records); returns the drain and the guard that flushes it.
pub fn start<E, A>(
    stderr: E,
    stderr_level: slog::Level,
    audit: Option<A>,
) -> io::Result<(QueuedJson, QueueGuard)>
where
    E: Write + Send + 'static,
    A: Write + Send + 'static,
{
    let (queue, lines) = mpsc::sync_channel(QUEUED_LINES);
    let has_audit = audit.is_some();
    std::thread::Builder::new()
        .name("autohealer-log".into())
        .spawn(move || write_lines(lines, stderr, audit))?;
    let drain = QueuedJson {
        queue: queue.clone(),
        stderr_level,
        audit: has_audit,
    };
    Ok((drain, QueueGuard { queue }))
}

impl Drain for QueuedJson {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let to_stderr = record.level().is_at_least(self.stderr_level);
        let to_audit = self.audit && logging::is_audit(record);
        if !to_stderr && !to_audit {
            return Ok(());
        }
        let bytes = json_log::to_line(record, values);
        // Blocks while the queue is full; fails only once the log thread is gone.
        let _ = self.queue.send(Queued::Line {
            bytes,
            to_stderr,
            to_audit,
        });
        Ok(())
    }
}

/// The log thread: waits for a line, lets more gather for `BATCH_WINDOW`, writes them at once.
fn write_lines<E: Write, A: Write>(lines: Receiver<Queued>, mut stderr: E, mut audit: Option<A>) {
    let mut stderr_batch = Vec::with_capacity(64 * 1024);
    let mut audit_batch = Vec::new();
    let mut flushed = Vec::new();
    while let Ok(first) = lines.recv() {
        // A flush asks for everything queued so far: answer it without waiting for more.
        if !matches!(first, Queued::Flush(_)) {
            std::thread::sleep(BATCH_WINDOW);
        }
        for item in std::iter::once(first).chain(lines.try_iter()) {
            match item {
                Queued::Line {
                    bytes,
                    to_stderr,
                    to_audit,
                } => {
                    if to_audit {
                        audit_batch.extend_from_slice(&bytes);
                    }
                    if to_stderr {
                        stderr_batch.extend_from_slice(&bytes);
                    }
                }
                Queued::Flush(ack) => flushed.push(ack),
            }
        }
        // Nothing else can be done with a failed write: stderr closed or the disk full.
        if !stderr_batch.is_empty() {
            let _ = stderr.write_all(&stderr_batch);
            let _ = stderr.flush();
        }
        if let Some(audit) = audit.as_mut().filter(|_| !audit_batch.is_empty()) {
            let _ = audit.write_all(&audit_batch);
            let _ = audit.flush();
        }
        stderr_batch.clear();
        audit_batch.clear();
        stderr_batch.shrink_to(1024 * 1024);
        audit_batch.shrink_to(1024 * 1024);
        for ack in flushed.drain(..) {
            let _ = ack.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    #[test]
    fn every_record_is_written_by_the_time_the_guard_is_dropped() {
        let (stderr, audit) = (Captured::default(), Captured::default());
        let (drain, guard) = start(stderr.clone(), slog::Level::Info, Some(audit.clone())).unwrap();
        let log = slog::Logger::root(drain.fuse(), slog::o!());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        slog::info!(log, "plain"; "t" => t, "i" => i);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        slog::crit!(log, #"audit", "healing action triggered";
            "details" => slog::Serde(serde_json::json!({"a": 1})));
        slog::warn!(log, #"audit", "healing action suppressed");
        slog::debug!(log, "filtered out");
        drop(guard);
        let written = stderr.lines();
        assert_eq!(
            written.len(),
            20_002,
            "no record lost, none below the level"
        );
        assert_eq!(written[20_000]["details"], serde_json::json!({"a": 1}));
        assert_eq!(written[20_000]["level"], "CRIT");
        let audited = audit.lines();
        assert_eq!(audited.len(), 2);
        assert_eq!(audited[1]["msg"], "healing action suppressed");
    }

    #[test]
    fn audit_records_below_the_stderr_level_still_reach_the_audit_log() {
        let (stderr, audit) = (Captured::default(), Captured::default());
        let (drain, guard) =
            start(stderr.clone(), slog::Level::Critical, Some(audit.clone())).unwrap();
        let log = slog::Logger::root(drain.fuse(), slog::o!());
        slog::warn!(log, #"audit", "healing action suppressed");
        drop(guard);
        assert!(stderr.lines().is_empty());
        assert_eq!(audit.lines().len(), 1);
    }
}
