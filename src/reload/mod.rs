//! Hot reload (SPEC §4, §8): the `Reloader`, sole writer of the `ArcSwap` that holds the map in
//! force, and the watcher that feeds it.
//!
//! Every trigger — a file-system event, SIGHUP, `POST /-/reload` — is one `ReloadMessage` on one
//! channel, handled in order on the `autohealer-reload` thread. A save is loaded when it is whole
//! (`save`): when the writer closes the file, or a rename or link puts it in place, and after
//! `save::QUIET` when the writer keeps it open; writes alone never make the file be read. Each
//! reload pass also re-reads the bearer token file and is bracketed by systemd's `RELOADING=1`
//! … `READY=1`, so every trigger gets both without a hook of its own.

mod save;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slog::Logger;
use tokio::sync::oneshot;

use crate::auth::TokenFile;
use crate::host::systemd::Notifier;
use crate::log::records::{self, Trigger};
use crate::map::{watch_dirs, LoadError, LoadedMap, MapFile, MapHandle};

use save::SaveTracker;
pub use save::{FileEvent, QUIET};
use watch::{watched_names, ConfigWatch};

/// How often the reload thread tries to watch the map's directory again while it is missing
/// (removed, or moved away), so that the file is loaded soon after the directory is back.
pub const REARM_EVERY: Duration = Duration::from_millis(100);

/// Messages taken from the channel in one go before a due look, so that events already queued
/// (a close followed by the next save's first write) are weighed before the file is read.
const BATCH: usize = 1024;

/// What a reload attempt did, for the HTTP endpoint and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new generation is in force.
    Loaded { version: Arc<str>, generation: u64 },
    /// The file's bytes equal the map in force; nothing was swapped.
    Unchanged { version: Arc<str>, generation: u64 },
    /// The file is missing, unreadable or invalid; the old map stays in force.
    Rejected {
        error: String,
        kept_version: Arc<str>,
    },
}

/// A request to the reload thread.
#[derive(Debug)]
pub enum ReloadMessage {
    /// The watcher saw an event about the config (or its symlink target).
    File(FileEvent),
    /// A watched directory was removed or moved away: its watch is dead, and is re-armed on
    /// whatever is at its path (now, or once it is back).
    DirGone(PathBuf),
    /// The watcher itself failed; events may have been lost.
    WatchFailed(String),
    /// Reload now, on behalf of SIGHUP or `POST /-/reload`, and answer on `reply` if given.
    Reload {
        trigger: Trigger,
        reply: Option<oneshot::Sender<ReloadOutcome>>,
    },
    /// Stop the thread (shutdown).
    Stop,
}

/// The sole writer of the map handle: turns triggers into validated swaps.
pub struct Reloader {
    path: PathBuf,
    handle: MapHandle,
    log: Logger,
    /// Digest of the last rejected content, so one bad save is reported once, not per event.
    rejected_digest: Option<[u8; 32]>,
    /// Whether the missing file was already reported.
    missing_reported: bool,
    /// Told about every reload pass (`RELOADING=1`, then `READY=1` with the map in force).
    notifier: Notifier,
    /// The bearer token, re-read on every pass (`--token-file`).
    token: Option<Arc<TokenFile>>,
    /// The file watcher feeding this reloader, once `start_watching` built it.
    watch: Option<ConfigWatch>,
    /// When to try arming the config's directory again; set while it cannot be watched.
    rearm_at: Option<Instant>,
}

impl Reloader {
    /// A reloader for the map at `path`, whose current generation is in `handle`.
    pub fn new(path: PathBuf, handle: MapHandle, log: Logger) -> Reloader {
        Reloader {
            path,
            handle,
            log,
            rejected_digest: None,
            missing_reported: false,
            notifier: Notifier::default(),
            token: None,
            watch: None,
            rearm_at: None,
        }
    }

    /// Reports every reload pass to systemd.
    pub fn with_notifier(mut self, notifier: Notifier) -> Reloader {
        self.notifier = notifier;
        self
    }

    /// Re-reads the bearer token file on every reload pass.
    pub fn with_token(mut self, token: Option<Arc<TokenFile>>) -> Reloader {
        self.token = token;
        self
    }

    /// One reload pass, whatever triggered it: the map, then the token, told to systemd.
    pub fn reload(&mut self, trigger: Trigger) -> ReloadOutcome {
        self.notifier.reloading();
        self.follow_names();
        let file = MapFile::read(&self.path);
        let outcome = self.pass(trigger, file);
        self.follow_dirs();
        outcome
    }

    /// The rest of a pass, on the file as read: the map, then the token, told to systemd.
    fn pass(&mut self, trigger: Trigger, file: Result<MapFile, LoadError>) -> ReloadOutcome {
        let outcome = self.reload_map(trigger, file);
        if let Some(token) = &self.token {
            token.reload(&self.log);
        }
        let rejected = match &outcome {
            ReloadOutcome::Rejected { error, .. } => Some(error.as_str()),
            _ => None,
        };
        self.notifier
            .ready(&self.handle.load().status_line(rejected));
        outcome
    }

    /// A look at the file on behalf of the watcher: read it once, and run a reload pass only when
    /// it is not the map in force, or when an earlier rejection or absence is to be cleared. A
    /// save that changed nothing (a chmod, a touch, the same bytes) costs a read and a digest,
    /// and tells systemd nothing.
    fn look(&mut self) {
        self.look_at_file();
        self.follow_dirs();
    }

    /// `look` without re-arming the watch.
    fn look_at_file(&mut self) {
        self.follow_names();
        let file = MapFile::read(&self.path);
        let settled = self.rejected_digest.is_none() && !self.missing_reported;
        let unchanged = file
            .as_ref()
            .is_ok_and(|file| self.handle.load().is_content_of(file));
        if !(unchanged && settled) {
            self.notifier.reloading();
            self.pass(Trigger::Watch, file);
        }
    }

    /// Digest (unchanged: record, stop) → compile → count, store and record.
    fn reload_map(&mut self, trigger: Trigger, file: Result<MapFile, LoadError>) -> ReloadOutcome {
        let current = self.handle.load_full();
        let file = match file {
            Ok(file) => file,
            Err(err) => return self.reject(err, None, &current),
        };
        self.missing_reported = false;
        if current.is_content_of(&file) {
            self.rejected_digest = None;
            records::map_unchanged(&self.log, &current.version, trigger);
            return ReloadOutcome::Unchanged {
                version: current.version.clone(),
                generation: current.generation,
            };
        }
        let loaded = match file.compile(&self.path, current.generation + 1) {
            Ok(loaded) => Arc::new(loaded),
            Err(err) => return self.reject(err, Some(*file.digest()), &current),
        };
        self.rejected_digest = None;
        // In force first, then told: whoever reads the record can rely on the map it names.
        self.handle.store(loaded.clone());
        records::map_loaded(&self.log, &loaded, trigger);
        ReloadOutcome::Loaded {
            version: loaded.version.clone(),
            generation: loaded.generation,
        }
    }

    fn reject(
        &mut self,
        err: LoadError,
        digest: Option<[u8; 32]>,
        current: &LoadedMap,
    ) -> ReloadOutcome {
        let kept_version = current.version.clone();
        // Every rejected attempt counts; the record is written once per bad content.
        if err.is_missing() {
            records::map_missing(&self.log, &self.path, &kept_version, !self.missing_reported);
            self.missing_reported = true;
        } else {
            let repeat = digest.is_some() && digest == self.rejected_digest;
            records::map_rejected(&self.log, &err.to_string(), &kept_version, !repeat);
            self.rejected_digest = digest;
        }
        ReloadOutcome::Rejected {
            error: err.to_string(),
            kept_version,
        }
    }

    /// Runs the reload loop on its own thread until `Stop` or every sender is gone.
    pub fn spawn(
        mut self,
        messages: mpsc::Receiver<ReloadMessage>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("autohealer-reload".into())
            .spawn(move || self.serve(messages))
    }

    /// Waits for the next message or deadline (a save's look, a re-arm), takes in everything
    /// already queued, then does what is due.
    fn serve(&mut self, messages: mpsc::Receiver<ReloadMessage>) {
        let mut saves = SaveTracker::default();
        loop {
            let wake = match (saves.due(), self.rearm_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let first = match wake {
                Some(at) => {
                    match messages.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Ok(message) => Some(message),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                None => match messages.recv() {
                    Ok(message) => Some(message),
                    Err(_) => return,
                },
            };
            let queued = first
                .into_iter()
                .chain(std::iter::from_fn(|| messages.try_recv().ok()).take(BATCH));
            for message in queued {
                if !self.handle_message(message, &mut saves) {
                    return;
                }
            }
            let now = Instant::now();
            if self.rearm_at.is_some_and(|at| at <= now) {
                self.rearm();
            }
            if saves.take_due(now) {
                self.look();
            }
        }
    }

    /// Handles one message; false when the loop should stop.
    fn handle_message(&mut self, message: ReloadMessage, saves: &mut SaveTracker) -> bool {
        match message {
            ReloadMessage::File(event) => saves.saw(event, Instant::now()),
            ReloadMessage::DirGone(dir) => {
                if let Some(watch) = self.watch.as_mut() {
                    watch.forget(&dir);
                }
                // Watch what is at the paths now; the file may have gone with the directory.
                self.follow_dirs();
                saves.saw(FileEvent::Removed, Instant::now());
            }
            ReloadMessage::WatchFailed(error) => {
                records::watcher_failed(&self.log, &error);
                // The watcher may be dead: build a new one, then look at the file once, since
                // events may have been lost meanwhile. A new watcher takes that look itself;
                // without one, look now.
                let rearmed = match self.watch.take() {
                    Some(old) => {
                        let messages = old.messages.clone();
                        drop(old);
                        self.start_watching(messages)
                            .map_err(|err| records::watcher_failed(&self.log, &err.to_string()))
                            .is_ok()
                    }
                    None => false,
                };
                if !rearmed {
                    self.look();
                }
            }
            ReloadMessage::Reload { trigger, reply } => {
                let outcome = self.reload(trigger);
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            ReloadMessage::Stop => return false,
        }
        true
    }

    /// Builds a notify watcher feeding `messages`, arms it on the config's directory (and its
    /// symlink target's), then looks at the file once, so an edit made between the startup load
    /// and now is not missed. The look runs here, before the caller goes on (at startup: before
    /// the daemon says it is listening), rather than queued for the reload thread: queued, it
    /// could run after a writer had begun its next save and load that file while still open.
    /// The error is the watcher's own; a directory that cannot be watched is reported by `arm`
    /// and tried again every `REARM_EVERY`.
    pub fn start_watching(&mut self, messages: mpsc::Sender<ReloadMessage>) -> notify::Result<()> {
        self.watch = Some(ConfigWatch::new(
            messages.clone(),
            watched_names(&self.path),
        )?);
        let _ = self.arm();
        self.look_at_file();
        Ok(())
    }

    /// Follows a re-pointed symlink's names: events about its new target count from now on.
    fn follow_names(&self) {
        if let Some(watch) = self.watch.as_ref() {
            watch.set_names(watched_names(&self.path));
        }
    }

    /// Follows a re-pointed symlink's directories. Called after the map is in force, since
    /// re-arming waits on the watcher's thread (twice per directory swapped); an edit made in
    /// the new directory before its watch existed is caught by one more look.
    fn follow_dirs(&mut self) {
        let moved = self
            .watch
            .as_ref()
            .is_some_and(|watch| watch.dirs() != watch_dirs(&self.path));
        // A failure is reported and retried by `arm`.
        if moved && self.arm().is_ok() {
            self.look_at_file();
        }
    }

    /// Watches the directories that decide what the path reads. When the config's own cannot
    /// be watched (it is gone), says so once and schedules another try.
    fn arm(&mut self) -> notify::Result<()> {
        let Some(watch) = self.watch.as_mut() else {
            return Ok(());
        };
        let armed = watch.arm(&watch_dirs(&self.path));
        match &armed {
            Ok(()) => self.rearm_at = None,
            Err(err) => {
                if self.rearm_at.is_none() {
                    records::watcher_failed(&self.log, &unwatchable(&self.path, err));
                }
                self.rearm_at = Some(Instant::now() + REARM_EVERY);
            }
        }
        armed
    }

    /// Another try at watching the config's directory; once it is back, one look at the file
    /// (it may have been written before the watch existed).
    fn rearm(&mut self) {
        self.follow_names();
        if self.arm().is_ok() {
            self.look();
        }
    }
}

/// What the log says when the directory of the map at `path` cannot be watched.
fn unwatchable(path: &Path, err: &notify::Error) -> String {
    let why = match &err.kind {
        notify::ErrorKind::PathNotFound => "it does not exist".to_string(),
        notify::ErrorKind::Io(io) => io.to_string(),
        _ => err.to_string(),
    };
    format!(
        "cannot watch the directory of {}: {why}; edits are picked up again once it is back",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_look_after_arming_reloads_and_tells_systemd_only_when_the_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.yml");
        std::fs::write(&path, "workflows: {page: {}}\nreflexes: {a: page}\n").unwrap();
        let handle: MapHandle = Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::map::load(&path, 1).unwrap(),
        ));
        let socket_path = dir.path().join("notify.sock");
        let systemd = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
        systemd.set_nonblocking(true).unwrap();
        let log = Logger::root(slog::Discard, slog::o!());
        let mut reloader = Reloader::new(path.clone(), handle.clone(), log)
            .with_notifier(Notifier::connect(socket_path.as_os_str()).unwrap());
        let received = || {
            let mut buf = [0; 512];
            std::iter::from_fn(|| {
                let len = systemd.recv(&mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf[..len]).into_owned())
            })
            .collect::<Vec<_>>()
        };

        // Arming takes the look; an unchanged file is no reload and no message.
        let (messages, _requests) = mpsc::channel();
        reloader.start_watching(messages).unwrap();
        assert_eq!(handle.load().generation, 1);
        assert_eq!(received(), Vec::<String>::new());

        // An edit the watch did not see (made before it existed) is loaded by the look.
        std::fs::write(
            &path,
            "workflows: {page: {}}\nreflexes: {a: page, b: page}\n",
        )
        .unwrap();
        reloader.look();
        assert_eq!(handle.load().generation, 2);
        let sent = received();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(sent[0].starts_with("RELOADING=1"), "{sent:?}");
        assert!(sent[1].starts_with("READY=1"), "{sent:?}");
    }
}
