//! The JSON log path, and the audit log's in both formats: each record is formatted as JSON on
//! the thread that logs it (`json`) and appended to a shared batch, which the `autohealer-log`
//! thread writes in one write(2) to stderr (and one to the audit log, which it also syncs:
//! `audit`). In the term format the queue takes the audit records only.
//!
//! slog-async copied every key of every record into owned values, sent them, re-formatted them on
//! its thread and freed the copies (issue 5, callgrind). Here a record costs one copy of its line
//! into the batch under a lock held only for that copy. The log thread, once woken, lets lines
//! gather for `BATCH_WINDOW` before it writes; while the daemon stays busy it finds the next batch
//! already started and never waits to be woken, so loggers usually make no system call. The
//! batch is bounded and a full one blocks the logger, so no record is ever dropped (SPEC §5).

use std::io::{self, Write};
use std::mem;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use slog::{o, Drain, Logger};

use super::audit::{Audit, Target};
use super::{journal, json, records};

/// Bytes a batch holds before a logging thread blocks until the log thread has taken it.
const BATCH_LIMIT_BYTES: usize = 4 * 1024 * 1024;

/// How long the log thread lets lines gather after the first one wakes it. A record reaches
/// stderr this much later, plus the previous batch's write; in exchange a busy daemon writes
/// once per window. Each window costs the core the daemon runs on a few context switches (the
/// log thread wakes, and often finds the lock held): at 2 ms they cost 3% of the requests a
/// pinned daemon answers (issue 5), at 10 ms a fifth of that, and a human reading the journal
/// cannot tell 10 ms from 2.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// A batch's capacity kept between windows; a larger one, after a burst, is released.
const RETAINED_BATCH_BYTES: usize = 1024 * 1024;

/// What loggers and the log thread share.
struct Shared {
    batch: Mutex<Batch>,
    /// Signalled for the log thread: lines arrived while it was idle, a flush is wanted, or a
    /// drain or guard went away.
    work: Condvar,
    /// Signalled by the log thread once a batch is taken and written, and once what was
    /// written is synced: for loggers waiting for room and for flushes.
    written: Condvar,
}

/// The lines not yet taken by the log thread, and the counts flushes wait on.
#[derive(Default)]
struct Batch {
    stderr: Vec<u8>,
    audit: Vec<u8>,
    /// Lines appended since the start, and lines flushed (written, and with an audit log,
    /// synced): a flush waits until `flushed` reaches what `appended` was when it was asked.
    appended: u64,
    flushed: u64,
    /// The log thread waits on `work`; only then does a logger need to signal it.
    idle: bool,
    /// Threads waiting on `written` (a flush, or a logger waiting for room); the log thread
    /// signals only when there are some, and then writes without waiting for the window.
    waiting: usize,
    /// Of those, the flushes: the log thread syncs the audit log for them at once.
    flushes: usize,
    /// The drain and the guard not yet dropped; the log thread ends when none is left.
    handles: usize,
    /// The log thread has ended (it cannot fail, but a waiter must never wait for it forever).
    stopped: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.stderr.is_empty() && self.audit.is_empty()
    }

    fn bytes(&self) -> usize {
        self.stderr.len() + self.audit.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Batch> {
        // A thread that panicked while holding the lock left whole lines behind: keep going.
        self.batch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits on `written`, counted so the log thread knows someone does.
    fn wait_written<'a>(&self, mut batch: MutexGuard<'a, Batch>) -> MutexGuard<'a, Batch> {
        batch.waiting += 1;
        let mut batch = self
            .written
            .wait(batch)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        batch.waiting -= 1;
        batch
    }

    /// Counts a drain or guard gone and wakes the log thread, which ends with the last one.
    fn release(&self) {
        let mut batch = self.lock();
        batch.handles -= 1;
        self.work.notify_one();
    }
}

/// Where the queue writes.
pub struct Outputs<E, T> {
    /// stderr and the level from which records go to it; none in the term format, whose
    /// stderr slog-term writes.
    pub stderr: Option<(E, slog::Level)>,
    /// The audit log, for the healing-action records (`records::is_audit`).
    pub audit: Option<Audit<T>>,
    /// Where the log thread writes its own records (about the audit log); none: this queue's
    /// stderr. The log thread cannot log through the queue as others do: it would wait for room
    /// only it can make.
    pub reports: Option<Logger>,
    /// stderr is the journal: each stderr line starts with its priority (`journal`); the audit
    /// log's lines never do.
    pub journal: bool,
}

/// A slog drain that formats JSON records in place and adds them to the batch.
pub struct QueuedJson {
    shared: Arc<Shared>,
    /// Records from this level go to stderr; below it, to the audit log only (or nowhere).
    stderr_level: Option<slog::Level>,
    /// Whether healing-action records (`records::is_audit`) are also written to the audit log.
    audit: bool,
    /// stderr is the journal: each stderr line starts with its priority (`journal`).
    journal: bool,
}

/// Flushes the queue when dropped: every record logged before is written, and the audit log
/// synced.
pub struct QueueGuard {
    shared: Arc<Shared>,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let mut batch = self.shared.lock();
        let target = batch.appended;
        // Counted in `flushes` so the log thread syncs at once; woken, since it may be idle
        // with a sync not yet due.
        batch.flushes += 1;
        self.shared.work.notify_one();
        while batch.flushed < target && !batch.stopped {
            batch = self.shared.wait_written(batch);
        }
        batch.flushes -= 1;
        drop(batch);
        self.shared.release();
    }
}

impl Drop for QueuedJson {
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// Starts the log thread writing to `outputs`; returns the drain and the guard that flushes it.
pub fn start<E, T>(outputs: Outputs<E, T>) -> io::Result<(QueuedJson, QueueGuard)>
where
    E: Write + Send + 'static,
    T: Target + 'static,
{
    let shared = Arc::new(Shared {
        batch: Mutex::new(Batch {
            handles: 2,
            ..Batch::default()
        }),
        work: Condvar::new(),
        written: Condvar::new(),
    });
    let Outputs {
        stderr,
        audit,
        reports,
        journal,
    } = outputs;
    let stderr_level = stderr.as_ref().map(|(_, level)| *level);
    let reports = match (reports, stderr_level) {
        (Some(reports), _) => reports,
        (None, Some(stderr_level)) => Logger::root(
            OwnRecords {
                shared: shared.clone(),
                stderr_level,
                journal,
            },
            o!(),
        ),
        (None, None) => Logger::root(slog::Discard, o!()),
    };
    let drain = QueuedJson {
        shared: shared.clone(),
        stderr_level,
        audit: audit.is_some(),
        journal,
    };
    let for_thread = shared.clone();
    std::thread::Builder::new()
        .name("autohealer-log".into())
        .spawn(move || {
            write_batches(
                &for_thread,
                stderr.map(|(stderr, _)| stderr),
                audit,
                &reports,
            )
        })?;
    Ok((drain, QueueGuard { shared }))
}

impl Drain for QueuedJson {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let to_stderr = self
            .stderr_level
            .is_some_and(|level| record.level().is_at_least(level));
        let to_audit = self.audit && records::is_audit(record);
        if !to_stderr && !to_audit {
            return Ok(());
        }
        let prefix = journal::line_prefix(self.journal, record.level());
        json::with_line(record, values, |line| {
            let mut batch = self.shared.lock();
            while batch.bytes() >= BATCH_LIMIT_BYTES && !batch.stopped {
                batch = self.shared.wait_written(batch);
            }
            if batch.stopped {
                // The log thread cannot fail, but should it ever be gone, stderr still gets
                // the record (the audit file went with the thread).
                drop(batch);
                if to_stderr {
                    let _ = io::stderr().write_all(&[prefix, line].concat());
                }
                return;
            }
            if to_stderr {
                batch.stderr.extend_from_slice(prefix);
                batch.stderr.extend_from_slice(line);
            }
            if to_audit {
                batch.audit.extend_from_slice(line);
            }
            batch.appended += 1;
            if batch.idle {
                batch.idle = false;
                self.shared.work.notify_one();
            }
        });
        Ok(())
    }
}

/// The drain of the log thread's own records in the JSON format: appends them to the stderr
/// lines without waiting for room (only the log thread makes room, and it is the one logging;
/// its records are few: at most one every 10 s while the audit log fails). The thread writes
/// them with its next batch.
struct OwnRecords {
    shared: Arc<Shared>,
    stderr_level: slog::Level,
    /// stderr is the journal: each line starts with its priority (`journal`).
    journal: bool,
}

impl Drain for OwnRecords {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if record.level().is_at_least(self.stderr_level) {
            json::with_line(record, values, |line| {
                let mut batch = self.shared.lock();
                batch
                    .stderr
                    .extend_from_slice(journal::line_prefix(self.journal, record.level()));
                batch.stderr.extend_from_slice(line);
                batch.appended += 1;
            });
        }
        Ok(())
    }
}

/// The log thread: waits for a line, lets more gather for `BATCH_WINDOW`, takes the batch and
/// writes it; syncs the audit log when due, or at once for a flush; ends once the drain and the
/// guard are both gone and everything is written and synced.
fn write_batches<E: Write, T: Target>(
    shared: &Shared,
    mut stderr: Option<E>,
    mut audit: Option<Audit<T>>,
    reports: &Logger,
) {
    /// Marks the thread stopped however it ends, and wakes whoever waits for it.
    struct Stopped<'a>(&'a Shared);
    impl Drop for Stopped<'_> {
        fn drop(&mut self) {
            self.0.lock().stopped = true;
            self.0.written.notify_all();
        }
    }
    let _stopped = Stopped(shared);
    let (mut stderr_lines, mut audit_lines) = (Vec::new(), Vec::new());
    // `appended` as of the last batch taken and written.
    let mut written = 0;
    let mut batch = shared.lock();
    loop {
        let is_alone = batch.handles == 0;
        if !batch.is_empty() {
            // No window when a flush or a blocked logger waits, or nobody is left to add lines.
            if batch.waiting == 0 && !is_alone {
                drop(batch);
                std::thread::sleep(BATCH_WINDOW);
                batch = shared.lock();
            }
            mem::swap(&mut batch.stderr, &mut stderr_lines);
            mem::swap(&mut batch.audit, &mut audit_lines);
            written = batch.appended;
            drop(batch);
            // Nothing can be done with a failed write to stderr (closed, or its reader gone);
            // the audit log's failures are counted and reported (`Audit`).
            if let Some(stderr) = stderr.as_mut().filter(|_| !stderr_lines.is_empty()) {
                let _ = stderr.write_all(&stderr_lines);
                let _ = stderr.flush();
            }
            if let Some(audit) = audit.as_mut().filter(|_| !audit_lines.is_empty()) {
                audit.write(&audit_lines, reports, Instant::now());
            }
            for lines in [&mut stderr_lines, &mut audit_lines] {
                lines.clear();
                lines.shrink_to(RETAINED_BATCH_BYTES);
            }
            batch = shared.lock();
            if batch.waiting > 0 {
                shared.written.notify_all();
            }
        }
        // The audit log is synced within a second of a write, and at once for a flush.
        let sync_due = audit.as_ref().and_then(Audit::sync_due);
        if let (Some(audit), Some(due)) = (audit.as_mut(), sync_due) {
            if batch.flushes > 0 || is_alone || due <= Instant::now() {
                drop(batch);
                audit.sync(reports, Instant::now());
                batch = shared.lock();
            }
        }
        let sync_due = audit.as_ref().and_then(Audit::sync_due);
        if sync_due.is_none() && batch.flushed < written {
            batch.flushed = written;
            if batch.waiting > 0 {
                shared.written.notify_all();
            }
        }
        if !batch.is_empty() {
            continue;
        }
        // Read again, not `is_alone`: the last drain or guard may have gone while this pass
        // slept its window or wrote, and the wake-up it sent then found no one waiting.
        if batch.handles == 0 {
            if sync_due.is_none() {
                return;
            }
            // Alone with a sync due: the next pass syncs at once and ends.
            continue;
        }
        batch.idle = true;
        batch = match sync_due {
            None => shared
                .work
                .wait(batch)
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Some(due) => {
                let timeout = due.saturating_duration_since(Instant::now());
                let (batch, _) = shared
                    .work
                    .wait_timeout(batch, timeout)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                batch
            }
        };
        batch.idle = false;
    }
}

#[cfg(test)]
mod tests {
    use super::super::captured::Captured;
    use super::*;
    use std::path::Path;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;

    /// A queue writing to `stderr` from `level` and, when given, to the audit log `audit`.
    fn start_on<E: Write + Send + 'static, T: Target + 'static>(
        stderr: E,
        level: slog::Level,
        audit: Option<T>,
    ) -> (QueuedJson, QueueGuard) {
        start(Outputs {
            stderr: Some((stderr, level)),
            audit: audit.map(|audit| Audit::new(audit, Path::new("audit.log"))),
            reports: None,
            journal: false,
        })
        .unwrap()
    }

    #[test]
    fn every_record_is_written_by_the_time_the_guard_is_dropped() {
        let (stderr, audit) = (Captured::default(), Captured::default());
        let (drain, guard) = start_on(stderr.clone(), slog::Level::Info, Some(audit.clone()));
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

    /// Polls `done` until it holds, for at most ten seconds.
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_full_batch_blocks_the_logger_until_it_is_written_and_loses_nothing() {
        /// A writer that holds its first write until the test opens the gate.
        struct Gated(Captured, Option<mpsc::Receiver<()>>);
        impl Write for Gated {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if let Some(gate) = self.1.take() {
                    gate.recv().unwrap();
                }
                self.0.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (open, gate) = mpsc::channel();
        let stderr = Captured::default();
        let gated = Gated(stderr.clone(), Some(gate));
        let (drain, guard) = start_on(gated, slog::Level::Info, None::<Captured>);
        let shared = guard.shared.clone();
        let log = slog::Logger::root(drain.fuse(), slog::o!());
        let filler = "x".repeat(1024);
        // Enough lines for the first batch (held at the gate) and a full second one.
        let lines = 2 * BATCH_LIMIT_BYTES / 1024 + 64;
        let logger = std::thread::spawn(move || {
            for i in 0..lines {
                slog::info!(log, "filler"; "i" => i, "x" => &filler);
            }
        });
        wait_until("the logger blocks on a full batch", || {
            shared.lock().waiting > 0
        });
        assert!(shared.lock().bytes() < BATCH_LIMIT_BYTES + 2048);
        open.send(()).unwrap();
        logger.join().unwrap();
        drop(guard);
        let written: Vec<u64> = stderr
            .lines()
            .iter()
            .map(|line| line["i"].as_u64().unwrap())
            .collect();
        assert_eq!(
            written,
            (0..lines as u64).collect::<Vec<_>>(),
            "all, in order"
        );
    }

    #[test]
    fn the_log_thread_writes_what_is_left_and_ends_once_the_drain_and_the_guard_are_gone() {
        let stderr = Captured::default();
        let (drain, guard) = start_on(stderr.clone(), slog::Level::Info, None::<Captured>);
        let shared = guard.shared.clone();
        drop(guard);
        // The drain outlives the guard (loggers are cloned everywhere) and still logs.
        let log = slog::Logger::root(drain.fuse(), slog::o!());
        slog::info!(log, "after the guard");
        drop(log);
        wait_until("the log thread ends", || shared.lock().stopped);
        assert_eq!(stderr.lines()[0]["msg"], "after the guard");
    }

    #[test]
    fn the_log_thread_ends_when_the_last_handle_goes_while_it_writes() {
        /// A writer that says when a write begins and holds it until the test opens the gate.
        struct Held(Captured, mpsc::Sender<()>, mpsc::Receiver<()>);
        impl Write for Held {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let _ = self.1.send(());
                let _ = self.2.recv();
                self.0.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (entered_tx, entered) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let stderr = Captured::default();
        let held = Held(stderr.clone(), entered_tx, gate);
        let (drain, guard) = start_on(held, slog::Level::Info, None::<Captured>);
        let shared = guard.shared.clone();
        drop(guard);
        let log = slog::Logger::root(drain.fuse(), slog::o!());
        slog::info!(log, "written while the last handle goes");
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the log thread writes");
        // The last handle goes while the thread is writing, not waiting: its wake-up finds no
        // one, and the thread must see for itself that it is alone.
        drop(log);
        open.send(()).unwrap();
        wait_until("the log thread ends", || shared.lock().stopped);
        assert_eq!(
            stderr.lines()[0]["msg"],
            "written while the last handle goes"
        );
    }

    #[test]
    fn a_log_thread_that_dies_blocks_no_one() {
        /// A writer that panics, taking the log thread with it.
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                panic!("the writer broke");
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (drain, guard) = start_on(Broken, slog::Level::Info, None::<Captured>);
        let shared = guard.shared.clone();
        let log = slog::Logger::root(drain.fuse(), slog::o!());
        slog::info!(log, "kills the writer");
        wait_until("the log thread ends", || shared.lock().stopped);
        // Later records neither block nor pile up, and the guard's flush returns.
        slog::info!(log, "after");
        assert!(shared.lock().is_empty());
        drop(guard);
    }

    #[test]
    fn audit_records_below_the_stderr_level_still_reach_the_audit_log() {
        let (stderr, audit) = (Captured::default(), Captured::default());
        let (drain, guard) = start_on(stderr.clone(), slog::Level::Critical, Some(audit.clone()));
        let log = slog::Logger::root(drain.fuse(), slog::o!());
        slog::warn!(log, #"audit", "healing action suppressed");
        drop(guard);
        assert!(stderr.lines().is_empty());
        assert_eq!(audit.lines().len(), 1);
    }

    #[test]
    fn the_audit_log_is_synced_within_a_second_of_a_write_and_when_the_guard_is_dropped() {
        let (stderr, audit) = (Captured::default(), Captured::default());
        let (drain, guard) = start_on(stderr.clone(), slog::Level::Info, Some(audit.clone()));
        let log = slog::Logger::root(drain.fuse(), slog::o!());
        slog::info!(log, "not audited");
        slog::crit!(log, #"audit", "healing action triggered");
        // No more records: the idle log thread still syncs once the interval is up.
        wait_until("a sync", || audit.syncs() == 1);
        assert_eq!(audit.lines().len(), 1);
        slog::crit!(log, #"audit", "healing action finished");
        drop(guard);
        assert_eq!(audit.syncs(), 2, "the guard waits for the sync");
        assert_eq!(audit.lines().len(), 2);
        assert_eq!(stderr.lines().len(), 3);
    }

    /// An audit target whose writes fail until `healed` is set, as on a full disk.
    struct Full {
        healed: Arc<std::sync::atomic::AtomicBool>,
        written: Captured,
    }

    impl Full {
        /// A failing target, the switch that heals it, and what it holds once healed.
        fn failing() -> (Full, Arc<std::sync::atomic::AtomicBool>, Captured) {
            let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let written = Captured::default();
            let full = Full {
                healed: healed.clone(),
                written: written.clone(),
            };
            (full, healed, written)
        }
    }

    impl Target for Full {
        fn append(&mut self, lines: &[u8]) -> io::Result<()> {
            if !self.healed.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(28));
            }
            self.written.append(lines)
        }
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn under_the_journal_every_stderr_line_starts_with_its_priority_and_no_audit_line_does() {
        let stderr = Captured::default();
        let (full, healed, audited) = Full::failing();
        let (drain, guard) = start(Outputs {
            stderr: Some((stderr.clone(), slog::Level::Info)),
            audit: Some(Audit::new(full, Path::new("audit.log"))),
            reports: None,
            journal: true,
        })
        .unwrap();
        let log = slog::Logger::root(drain.fuse(), slog::o!());
        slog::info!(log, "plain");
        slog::crit!(log, #"audit", "healing action triggered");
        // The log thread's own records (the audit log failing, then recovering) too.
        wait_until("the failure on stderr", || {
            stderr.text().contains("audit log write failed")
        });
        healed.store(true, Ordering::SeqCst);
        slog::warn!(log, #"audit", "healing action suppressed");
        drop(guard);
        // The recovery is the log thread's own record, about the write the flush waited for:
        // it follows with the thread's next batch.
        wait_until("the recovery on stderr", || {
            stderr.text().contains("audit log recovered")
        });
        let text = stderr.text();
        let mut messages = Vec::new();
        for line in text.lines() {
            let (prefix, json) = line.split_at(line.find('{').unwrap());
            let record: serde_json::Value = serde_json::from_str(json).unwrap();
            let level = match record["level"].as_str().unwrap() {
                "CRIT" => slog::Level::Critical,
                "ERRO" => slog::Level::Error,
                "WARN" => slog::Level::Warning,
                "INFO" => slog::Level::Info,
                other => panic!("level {other}"),
            };
            assert_eq!(prefix.as_bytes(), journal::priority_prefix(level), "{line}");
            messages.push(record["msg"].as_str().unwrap().to_string());
        }
        for expected in [
            "plain",
            "healing action triggered",
            "audit log write failed",
            "audit log recovered",
            "healing action suppressed",
        ] {
            assert!(messages.iter().any(|m| m == expected), "{expected}: {text}");
        }
        // Plain JSON lines, or `lines` could not parse them.
        let audited = audited.lines();
        assert_eq!(audited.len(), 1);
        assert_eq!(audited[0]["msg"], "healing action suppressed");
    }

    #[test]
    fn a_failing_audit_log_is_reported_on_stderr_which_still_gets_every_record() {
        let stderr = Captured::default();
        let (full, healed, written) = Full::failing();
        let (drain, guard) = start_on(stderr.clone(), slog::Level::Info, Some(full));
        let log = slog::Logger::root(drain.fuse(), slog::o!());
        // Batches big enough to fill the queue: the log thread's own record must not wait for
        // room only it can make.
        let filler = "x".repeat(1024);
        let records = 2 * BATCH_LIMIT_BYTES / 1024;
        for i in 0..records {
            slog::crit!(log, #"audit", "healing action triggered"; "i" => i, "x" => &filler);
        }
        let count = |msg: &str| {
            stderr
                .lines()
                .iter()
                .filter(|line| line["msg"] == msg)
                .count()
        };
        wait_until("the failure on stderr", || {
            count("audit log write failed") == 1
        });
        healed.store(true, Ordering::SeqCst);
        slog::crit!(log, #"audit", "healing action finished");
        drop(guard);
        assert_eq!(count("healing action triggered"), records);
        assert_eq!(count("audit log write failed"), 1, "once per 10 s");
        assert_eq!(count("audit log recovered"), 1);
        let recovered = stderr
            .lines()
            .into_iter()
            .find(|line| line["msg"] == "audit log recovered")
            .unwrap();
        assert!(recovered["failed_writes"].as_u64().unwrap() >= 1);
        assert!(recovered["lost_records"].as_u64().unwrap() >= 1);
        let audited = written.lines();
        assert_eq!(audited.last().unwrap()["msg"], "healing action finished");
    }
}
