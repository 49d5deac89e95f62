//! The notify watcher on the map's directory (and its symlink target's), and what its events
//! mean: each event that touches the map becomes one `ReloadMessage` for the reload thread.
//!
//! On Linux (inotify), an in-place save is `Modify(Data)` events and then `Access(Close(Write))`;
//! a save by rename is `Modify(Name(To))` (and `Name(Both)` when the source was in a watched
//! directory too); a Kubernetes ConfigMap's swap is a rename of the `..data` symlink; `ln -s`
//! and `ln` are a `Create` of a link. A watched directory that is removed or moved away sends
//! its own `Remove` or `Modify(Name(From))`, after which its watch is dead.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::save::FileEvent;
use super::ReloadMessage;

/// What the watcher callback compares events with; the reload thread keeps it current.
#[derive(Debug, Default)]
struct Watched {
    /// Names whose events matter (see `watched_names`).
    names: Vec<OsString>,
    /// The directories armed; an event removing one of them means its watch is dead.
    dirs: Vec<PathBuf>,
}

/// A notify watcher and the directories it watches: the config's own, and its symlink target's
/// when that lies elsewhere (re-armed when the link is re-pointed).
pub(super) struct ConfigWatch {
    watcher: RecommendedWatcher,
    watched: Arc<Mutex<Watched>>,
    /// Where the callback sends; kept to build a new watcher if this one fails.
    pub(super) messages: mpsc::Sender<ReloadMessage>,
}

impl ConfigWatch {
    /// A watcher that sends what it sees about files called `names` to `messages`; it watches
    /// nothing until `arm`.
    pub(super) fn new(
        messages: mpsc::Sender<ReloadMessage>,
        names: Vec<OsString>,
    ) -> notify::Result<ConfigWatch> {
        let watched = Arc::new(Mutex::new(Watched {
            names,
            dirs: Vec::new(),
        }));
        let shared = watched.clone();
        let sender = messages.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let message = match event {
                Ok(event) => {
                    let watched = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    match classify(&event, &watched) {
                        Some(message) => message,
                        None => return,
                    }
                }
                Err(err) => ReloadMessage::WatchFailed(err.to_string()),
            };
            let _ = sender.send(message);
        })?;
        Ok(ConfigWatch {
            watcher,
            watched,
            messages,
        })
    }

    fn watched(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows a re-pointed symlink: events about `names` count from now on.
    pub(super) fn set_names(&self, names: Vec<OsString>) {
        self.watched().names = names;
    }

    /// The directories armed now.
    pub(super) fn dirs(&self) -> Vec<PathBuf> {
        self.watched().dirs.clone()
    }

    /// Makes the watcher watch exactly `wanted`. The first (the config's directory) must succeed;
    /// the others (a symlink target's) are a bonus, SIGHUP still covers edits there.
    pub(super) fn arm(&mut self, wanted: &[PathBuf]) -> notify::Result<()> {
        let current = self.dirs();
        for dir in current.iter().filter(|d| !wanted.contains(d)) {
            let _ = self.watcher.unwatch(dir);
        }
        let mut armed = Vec::new();
        let mut result = Ok(());
        for (i, dir) in wanted.iter().enumerate() {
            if current.contains(dir) {
                armed.push(dir.clone());
                continue;
            }
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => armed.push(dir.clone()),
                Err(err) if i == 0 => result = Err(err),
                Err(_) => {}
            }
        }
        self.watched().dirs = armed;
        result
    }

    /// Drops a directory whose watch died (removed) or follows another inode (moved away), so
    /// that the next `arm` watches whatever is at that path now.
    pub(super) fn forget(&mut self, dir: &Path) {
        // After a removal notify has dropped the watch already; the error says so.
        let _ = self.watcher.unwatch(dir);
        self.watched().dirs.retain(|d| d != dir);
    }
}

/// The message an event means for the map, if any.
fn classify(event: &notify::Event, watched: &Watched) -> Option<ReloadMessage> {
    // An overflowed queue lost events: anything may have changed.
    if event.need_rescan() {
        return Some(ReloadMessage::File(FileEvent::Complete));
    }
    if let Some(dir) = gone_dir(event, watched) {
        return Some(ReloadMessage::DirGone(dir));
    }
    let paths: &[PathBuf] = match event.kind {
        // A paired rename lists [from, to]; only the destination can be put in place.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.get(1..)?,
        // The source of a rename is gone from its name, but nothing new is there yet: an editor
        // moving the map to a backup writes the new one next.
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => return None,
        // Opens and reads, the reloader's own among them.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => &event.paths,
        EventKind::Access(_) => return None,
        _ => &event.paths,
    };
    let path = paths.iter().find(|path| {
        path.file_name()
            .is_some_and(|name| watched.names.iter().any(|n| n == name))
    })?;
    let file_event = match event.kind {
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Name(_)) => FileEvent::Complete,
        EventKind::Modify(ModifyKind::Metadata(_)) => FileEvent::Changed,
        EventKind::Modify(_) => FileEvent::Written,
        EventKind::Create(_) => created(path),
        EventKind::Remove(_) => FileEvent::Removed,
        EventKind::Any | EventKind::Other => FileEvent::Changed,
    };
    Some(ReloadMessage::File(file_event))
}

/// The watched directory an event removes or moves away, if it does.
fn gone_dir(event: &notify::Event, watched: &Watched) -> Option<PathBuf> {
    let source = match event.kind {
        // The directory's own removal, or its removal as an entry of a watched parent (a
        // ConfigMap deleting the old target directory).
        EventKind::Remove(_) => event.paths.first(),
        EventKind::Modify(ModifyKind::Name(RenameMode::From | RenameMode::Both)) => {
            event.paths.first()
        }
        _ => None,
    }?;
    watched.dirs.iter().find(|dir| *dir == source).cloned()
}

/// What a new entry at the map's name is: a link is a finished file put in place (`ln -s`,
/// `ln`); a new regular file is being written, and its close completes the save.
fn created(path: &Path) -> FileEvent {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() || (meta.is_file() && meta.nlink() > 1) => {
            FileEvent::Complete
        }
        Ok(meta) if meta.is_file() => FileEvent::Written,
        // A directory or a device: the look reports what is wrong with it.
        Ok(_) => FileEvent::Changed,
        Err(_) => FileEvent::Removed,
    }
}

/// File names in the config's directory whose changes can change what the path reads.
///
/// The file's own name, plus, when it is a symlink with a relative target, the first component of
/// that target: a Kubernetes ConfigMap swaps `..data`, and a hand-made link `map.yml -> v2.yml`
/// may be edited through `v2.yml`.
pub(super) fn watched_names(path: &Path) -> Vec<OsString> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind};

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut event = notify::Event::new(kind);
        event.paths = paths.iter().map(PathBuf::from).collect();
        event
    }

    fn watching(names: &[&str], dirs: &[&str]) -> Watched {
        Watched {
            names: names.iter().map(OsString::from).collect(),
            dirs: dirs.iter().map(PathBuf::from).collect(),
        }
    }

    fn file_event(message: Option<ReloadMessage>) -> Option<FileEvent> {
        match message {
            Some(ReloadMessage::File(event)) => Some(event),
            None => None,
            Some(other) => panic!("not a file event: {other:?}"),
        }
    }

    #[test]
    fn events_are_classified_by_what_they_say_about_a_save() {
        let watched = watching(&["map.yml"], &["/etc/x"]);
        let seen = |kind, paths: &[&str]| file_event(classify(&event(kind, paths), &watched));
        let map = &["/etc/x/map.yml"][..];

        // In place: writes, then the close that ends the save.
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(seen(write, map), Some(FileEvent::Written));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(seen(closed, map), Some(FileEvent::Complete));
        // Opens and reads (the reloader's own) say nothing.
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert_eq!(seen(open, map), None);
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert_eq!(seen(read, map), None);

        // By rename: the destination counts, the source does not.
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert_eq!(seen(to, map), Some(FileEvent::Complete));
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert_eq!(seen(from, map), None);
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert_eq!(
            seen(both, &["/etc/x/.tmp", "/etc/x/map.yml"]),
            Some(FileEvent::Complete)
        );
        assert_eq!(seen(both, &["/etc/x/map.yml", "/etc/x/map.yml~"]), None);

        // Other names, owner and mode, removal.
        assert_eq!(seen(write, &["/etc/x/other.yml"]), None);
        let chmod = EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions));
        assert_eq!(seen(chmod, map), Some(FileEvent::Changed));
        let removed = EventKind::Remove(RemoveKind::File);
        assert_eq!(seen(removed, map), Some(FileEvent::Removed));

        // An overflowed queue: look at once.
        let rescan = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(
            file_event(classify(&rescan, &watched)),
            Some(FileEvent::Complete)
        );
    }

    #[test]
    fn a_watched_directory_removed_or_moved_away_is_reported() {
        let watched = watching(&["map.yml"], &["/etc/x", "/etc/x/..2024_01"]);
        let gone = |kind, paths: &[&str]| match classify(&event(kind, paths), &watched) {
            Some(ReloadMessage::DirGone(dir)) => Some(dir),
            _ => None,
        };
        let removed = EventKind::Remove(RemoveKind::Folder);
        assert_eq!(gone(removed, &["/etc/x"]), Some(PathBuf::from("/etc/x")));
        // A ConfigMap deleting the old target directory.
        assert_eq!(
            gone(removed, &["/etc/x/..2024_01"]),
            Some(PathBuf::from("/etc/x/..2024_01"))
        );
        let moved = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert_eq!(gone(moved, &["/etc/x"]), Some(PathBuf::from("/etc/x")));
        assert_eq!(gone(removed, &["/etc/x/..2023_12"]), None);
    }

    #[test]
    fn created_links_are_whole_and_created_files_are_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("new.yml");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(created(&file), FileEvent::Written);
        let symlink = dir.path().join("symlink.yml");
        std::os::unix::fs::symlink("new.yml", &symlink).unwrap();
        assert_eq!(created(&symlink), FileEvent::Complete);
        let hard = dir.path().join("hard.yml");
        std::fs::hard_link(&file, &hard).unwrap();
        assert_eq!(created(&hard), FileEvent::Complete);
        assert_eq!(created(&dir.path().join("gone.yml")), FileEvent::Removed);

        let fresh = dir.path().join("fresh.yml");
        std::fs::write(&fresh, "x").unwrap();
        let watched = watching(&["fresh.yml"], &[]);
        let create = event(
            EventKind::Create(CreateKind::File),
            &[fresh.to_str().unwrap()],
        );
        assert_eq!(
            file_event(classify(&create, &watched)),
            Some(FileEvent::Written)
        );
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
}
