//! Hot reload (SPEC §4): the `Reloader`, sole writer of the `ArcSwap` that holds the map in
//! force, and the notify watcher that feeds it.
//!
//! Every trigger — a file-system event, SIGHUP, `POST /-/reload` — is one `ReloadMessage` on one
//! channel, handled in order on the `autohealer-reload` thread. File events are debounced: the
//! first one opens a short window, and everything arriving within it becomes a single reload.
//! Each reload pass also re-reads the bearer token file and is bracketed by systemd's
//! `RELOADING=1` … `READY=1`, so every trigger gets both without a hook of its own.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use slog::Logger;
use tokio::sync::oneshot;

use crate::auth::TokenFile;
use crate::host::systemd::Notifier;
use crate::log::records::{self, Trigger};
use crate::map::{watch_dirs, LoadError, LoadedMap, MapFile, MapHandle};

/// How long file events are coalesced before one reload; editors write in several steps.
pub const DEBOUNCE_DELAY: Duration = Duration::from_millis(10);

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
    /// The watcher saw the config (or its symlink target) change.
    FileChanged,
    /// The watcher itself failed; events may have been lost.
    WatchFailed(String),
    /// The watcher was just armed: look at the file once, and run a reload pass only if it is
    /// not the map in force (an edit made before the watch existed).
    Recheck,
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
    /// Names whose events matter (the config's, and a symlink's final target's in its own
    /// directory); shared with the watcher callback.
    watched_names: Arc<Mutex<Vec<OsString>>>,
    /// Digest of the last rejected content, so one bad save is reported once, not per event.
    rejected_digest: Option<[u8; 32]>,
    /// Whether the missing file was already reported.
    missing_reported: bool,
    /// Told about every reload pass (`RELOADING=1`, then `READY=1` with the map in force).
    notifier: Notifier,
    /// The bearer token, re-read on every pass (`--token-file`).
    token: Option<Arc<TokenFile>>,
    /// The file watcher feeding this reloader, once `start_watching` armed it.
    watch: Option<ConfigWatch>,
}

/// A notify watcher and the directories it watches: the config's own, and its symlink target's
/// when that lies elsewhere (re-armed when the link is re-pointed).
struct ConfigWatch {
    watcher: RecommendedWatcher,
    dirs: Vec<PathBuf>,
    messages: mpsc::Sender<ReloadMessage>,
}

impl Reloader {
    /// A reloader for the map at `path`, whose current generation is in `handle`.
    pub fn new(path: PathBuf, handle: MapHandle, log: Logger) -> Reloader {
        let watched_names = Arc::new(Mutex::new(watched_names(&path)));
        Reloader {
            path,
            handle,
            log,
            watched_names,
            rejected_digest: None,
            missing_reported: false,
            notifier: Notifier::default(),
            token: None,
            watch: None,
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
        let outcome = self.reload_map(trigger);
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

    /// Read → digest (unchanged: record, stop) → compile → count, store and record.
    fn reload_map(&mut self, trigger: Trigger) -> ReloadOutcome {
        // A symlink may have been re-pointed; follow its new target from now on.
        let names = watched_names(&self.path);
        if let Ok(mut shared) = self.watched_names.lock() {
            *shared = names;
        }
        self.refresh_watch();
        let current = self.handle.load_full();
        let file = match MapFile::read(&self.path) {
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

    fn serve(&mut self, messages: mpsc::Receiver<ReloadMessage>) {
        while let Ok(message) = messages.recv() {
            match message {
                ReloadMessage::FileChanged => {
                    // Coalesce a burst of events into one reload, answering requests after it.
                    let deadline = Instant::now() + DEBOUNCE_DELAY;
                    let mut deferred = Vec::new();
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match messages.recv_timeout(left) {
                            Ok(ReloadMessage::FileChanged) => continue,
                            Ok(other) => deferred.push(other),
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    self.reload(Trigger::Watch);
                    for message in deferred {
                        if !self.handle_request(message) {
                            return;
                        }
                    }
                }
                other => {
                    if !self.handle_request(other) {
                        return;
                    }
                }
            }
        }
    }

    /// Handles a non-file message; false when the loop should stop.
    fn handle_request(&mut self, message: ReloadMessage) -> bool {
        match message {
            ReloadMessage::FileChanged => {
                self.reload(Trigger::Watch);
            }
            ReloadMessage::WatchFailed(error) => {
                records::watcher_failed(&self.log, &error);
                // The watcher may be dead (its directory moved away): build a new one, then look
                // at the file once, since events may have been lost meanwhile. A new watcher
                // queues that look itself; without one, look now.
                let rearmed = match self.watch.take() {
                    Some(old) => {
                        drop(old.watcher);
                        self.start_watching(old.messages)
                            .map_err(|err| records::watcher_failed(&self.log, &err.to_string()))
                            .is_ok()
                    }
                    None => false,
                };
                if !rearmed {
                    self.reload(Trigger::Watch);
                }
            }
            ReloadMessage::Recheck => self.recheck(),
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

    /// A reload pass only if the file is not the map in force. The look after the watcher is
    /// armed is not a reload anyone asked for: an unchanged file costs one read and a digest,
    /// and tells systemd nothing (a pass would send RELOADING=1 and READY=1 right after
    /// startup's READY=1).
    fn recheck(&mut self) {
        let unchanged =
            MapFile::read(&self.path).is_ok_and(|file| self.handle.load().is_content_of(&file));
        if !unchanged {
            self.reload(Trigger::Watch);
        }
    }

    /// Arms a notify watcher on the config's directory (and its symlink target's) that feeds
    /// `messages`, then asks for one look at the file (`Recheck`), so an edit made between the
    /// startup load and now is not missed.
    pub fn start_watching(&mut self, messages: mpsc::Sender<ReloadMessage>) -> notify::Result<()> {
        let names = self.watched_names.clone();
        let sender = messages.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let message = match event {
                Ok(event) => {
                    let relevant = names
                        .lock()
                        .map(|names| is_relevant(&event, &names))
                        .unwrap_or(true);
                    if !relevant {
                        return;
                    }
                    ReloadMessage::FileChanged
                }
                Err(err) => ReloadMessage::WatchFailed(err.to_string()),
            };
            let _ = sender.send(message);
        })?;
        self.watch = Some(ConfigWatch {
            watcher,
            dirs: Vec::new(),
            messages: messages.clone(),
        });
        if let Err(err) = self.arm(&watch_dirs(&self.path)) {
            self.watch = None;
            return Err(err);
        }
        let _ = messages.send(ReloadMessage::Recheck);
        Ok(())
    }

    /// Follows a re-pointed symlink: watches its target's directory if that changed.
    fn refresh_watch(&mut self) {
        let wanted = watch_dirs(&self.path);
        let current = self.watch.as_ref().map(|w| w.dirs.clone());
        if current.is_some_and(|dirs| dirs != wanted) {
            if let Err(err) = self.arm(&wanted) {
                records::watcher_failed(&self.log, &err.to_string());
            }
        }
    }

    /// Makes the watcher watch exactly `wanted` (the config's directory must succeed).
    fn arm(&mut self, wanted: &[PathBuf]) -> notify::Result<()> {
        let Some(watch) = self.watch.as_mut() else {
            return Ok(());
        };
        for dir in watch.dirs.iter().filter(|d| !wanted.contains(d)) {
            let _ = watch.watcher.unwatch(dir);
        }
        let mut armed = Vec::new();
        for (i, dir) in wanted.iter().enumerate() {
            if watch.dirs.contains(dir) {
                armed.push(dir.clone());
                continue;
            }
            match watch.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => armed.push(dir.clone()),
                // The target's directory is a bonus; SIGHUP still covers edits there.
                Err(err) if i == 0 => return Err(err),
                Err(_) => {}
            }
        }
        watch.dirs = armed;
        Ok(())
    }
}

/// File names in the config's directory whose changes can change what the path reads.
///
/// The file's own name, plus, when it is a symlink with a relative target, the first component of
/// that target: a Kubernetes ConfigMap swaps `..data`, and a hand-made link `map.yml -> v2.yml`
/// may be edited through `v2.yml`.
fn watched_names(path: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = path.file_name().map(OsString::from).into_iter().collect();
    if let Ok(target) = std::fs::read_link(path) {
        if target.is_relative() {
            if let Some(Component::Normal(first)) = target.components().next() {
                names.push(first.to_os_string());
            }
        }
        // The final target's own name, for edits in its directory.
        if let Some(name) = std::fs::canonicalize(path)
            .ok()
            .and_then(|t| t.file_name().map(OsString::from))
        {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Keeps events that touch a watched name; drops reads and the "from" half of a rename.
/// An overflowed event queue (a rescan request) always counts: anything may have changed.
fn is_relevant(event: &notify::Event, names: &[OsString]) -> bool {
    if event.need_rescan() {
        return true;
    }
    let paths: &[PathBuf] = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => &event.paths,
        EventKind::Access(_) => return false,
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => return false,
        // A paired rename lists [from, to]; only the destination can be our file.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            event.paths.get(1..).unwrap_or(&[])
        }
        _ => &event.paths,
    };
    paths.iter().any(|path| {
        path.file_name()
            .is_some_and(|name| names.iter().any(|n| n == name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut event = notify::Event::new(kind);
        event.paths = paths.iter().map(PathBuf::from).collect();
        event
    }

    #[test]
    fn relevant_events_are_those_naming_the_file() {
        let names = vec![OsString::from("map.yml")];
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(is_relevant(&event(modify, &["/etc/x/map.yml"]), &names));
        assert!(!is_relevant(&event(modify, &["/etc/x/other.yml"]), &names));
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert!(!is_relevant(&event(from, &["/etc/x/map.yml"]), &names));
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert!(is_relevant(
            &event(both, &["/x/.tmp", "/x/map.yml"]),
            &names
        ));
        assert!(!is_relevant(
            &event(both, &["/x/map.yml", "/x/map.yml~"]),
            &names
        ));
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!is_relevant(&event(open, &["/etc/x/map.yml"]), &names));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(is_relevant(&event(closed, &["/etc/x/map.yml"]), &names));
    }

    #[test]
    fn symlink_targets_are_watched_by_their_first_component() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::write(dir.path().join("..data/map.yml"), "x").unwrap();
        let link = dir.path().join("map.yml");
        std::os::unix::fs::symlink("..data/map.yml", &link).unwrap();
        assert_eq!(
            watched_names(&link),
            [OsString::from("map.yml"), OsString::from("..data")]
        );
    }

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

        // Arming asks for the look; an unchanged file is no reload and no message.
        let (messages, requests) = mpsc::channel();
        reloader.start_watching(messages).unwrap();
        assert!(matches!(requests.try_recv(), Ok(ReloadMessage::Recheck)));
        reloader.recheck();
        assert_eq!(handle.load().generation, 1);
        assert_eq!(received(), Vec::<String>::new());

        // An edit the watch did not see (made before it existed) is loaded by the look.
        std::fs::write(
            &path,
            "workflows: {page: {}}\nreflexes: {a: page, b: page}\n",
        )
        .unwrap();
        reloader.recheck();
        assert_eq!(handle.load().generation, 2);
        let sent = received();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(sent[0].starts_with("RELOADING=1"), "{sent:?}");
        assert!(sent[1].starts_with("READY=1"), "{sent:?}");
    }
}
