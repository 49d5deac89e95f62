//! Memory across restarts (SPEC §9): what the daemon remembers — cooldowns, breaker windows,
//! pending verifications, the budget window, silences, Alertmanager's duplicate memory — kept
//! in one file under `--state-dir`, so a restart (an upgrade, a watchdog kill, a crash) does not
//! re-arm a flapping remedy.
//!
//! Each kind of state is a `Persisted` part with a name; the file holds every part under its
//! name, so adding a kind is one `impl Persisted` and one entry in the list `app` hands to
//! `StateFile`. A part missing from the file starts empty, so a new kind needs no new format.
//!
//! The file is JSON (a few MiB at most: SPEC §8 bounds every table): readable with `jq` when
//! an operator wonders why a remedy is held back, and parsed by the serde the daemon already
//! has. It is written whole — temp file, fsync, rename, fsync of the directory — so a crash
//! leaves the old file or the new one, never half of one.
//!
//! Monotonic instants mean nothing to another process, so the file holds wall-clock times
//! (Unix milliseconds). `Clock` converts both ways, and `Clock::restoring` makes the wall clock
//! read at least what it was when the file was written: a clock stepped back between the two
//! cannot stretch a cooldown beyond what was left of it, and one stepped forward can only
//! shorten what is left (never resurrect what was over).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;

/// The file's format. A file of another format (an older or a newer daemon's) is discarded
/// with a WARN rather than half-read.
pub const STATE_FORMAT: u32 = 1;

/// The state file's name inside `--state-dir`.
pub const STATE_FILE_NAME: &str = "state.json";

/// The temp file a write goes to before it is renamed over `STATE_FILE_NAME`.
const TEMP_FILE_NAME: &str = ".state.json.tmp";

/// How often, at most, the state is written while it changes.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Largest state file read: far above what the bounded tables can fill (100,000 cooldown keys
/// are about 6 MiB), so only a file that is not ours reaches it.
pub const MAX_STATE_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Longest time left on any restored deadline: the longest duration a map may set (a year).
pub const MAX_RESTORED_DEADLINE: Duration = Duration::from_secs(366 * 24 * 3600);

/// One kind of state kept across restarts.
pub trait Persisted: Send + Sync {
    /// The part's name in the file; never reused for another kind.
    fn name(&self) -> &'static str;

    /// Whether the state changed since the last call; the call clears the mark.
    fn take_changed(&self) -> bool;

    /// The state now, as JSON, its times made wall-clock times by `clock`. Copies what it
    /// needs under its lock and serializes after, so dispatch is held up as little as possible.
    fn save(&self, clock: &Clock) -> serde_json::Result<Box<RawValue>>;

    /// Puts `saved` (what `save` wrote, maybe long ago) in force. All or nothing: on an error
    /// (the message says what is wrong) the state is left as it was.
    fn restore(&self, saved: &RawValue, clock: &Clock) -> Result<(), String>;
}

/// A part that lives inside something shared rather than in a handle of its own (a field of the
/// server's state, say): `part` finds it in `owner`.
pub struct Within<O> {
    owner: Arc<O>,
    part: fn(&O) -> &dyn Persisted,
}

impl<O> Within<O> {
    /// The part `part` finds in `owner`.
    pub fn new(owner: Arc<O>, part: fn(&O) -> &dyn Persisted) -> Within<O> {
        Within { owner, part }
    }

    fn get(&self) -> &dyn Persisted {
        (self.part)(&self.owner)
    }
}

impl<O: Send + Sync> Persisted for Within<O> {
    fn name(&self) -> &'static str {
        self.get().name()
    }
    fn take_changed(&self) -> bool {
        self.get().take_changed()
    }
    fn save(&self, clock: &Clock) -> serde_json::Result<Box<RawValue>> {
        self.get().save(clock)
    }
    fn restore(&self, saved: &RawValue, clock: &Clock) -> Result<(), String> {
        self.get().restore(saved, clock)
    }
}

/// Marks that a part's state changed since it was last written; cloning shares the mark.
#[derive(Debug, Clone, Default)]
pub struct Changes(Arc<AtomicBool>);

impl Changes {
    /// Notes a change. Read first, so a hot path that changes state on every call writes the
    /// shared cache line only once per save.
    pub fn mark(&self) {
        if !self.0.load(Ordering::Relaxed) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// Whether anything changed since the last call; clears the mark.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// One reading of both clocks, to convert between monotonic instants and wall-clock times.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub instant: Instant,
    /// The wall clock at `instant`, in Unix milliseconds.
    pub wall_ms: u64,
}

impl Clock {
    /// Both clocks now.
    pub fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            wall_ms: unix_ms(SystemTime::now()),
        }
    }

    /// The clock to restore a file written at `written_ms` with: never earlier than that, so
    /// every deadline has at most what was left of it when written, and nothing that was over
    /// then comes back.
    pub fn restoring(written_ms: u64) -> Clock {
        Clock::now().at_least(written_ms)
    }

    /// This clock, its wall clock read as no earlier than `written_ms`.
    pub fn at_least(self, written_ms: u64) -> Clock {
        Clock {
            wall_ms: self.wall_ms.max(written_ms),
            ..self
        }
    }

    /// `at` as Unix milliseconds.
    pub fn wall(&self, at: Instant) -> u64 {
        if at >= self.instant {
            let ahead = at.duration_since(self.instant).as_millis() as u64;
            self.wall_ms.saturating_add(ahead)
        } else {
            let behind = self.instant.duration_since(at).as_millis() as u64;
            self.wall_ms.saturating_sub(behind)
        }
    }

    /// A deadline read back: `None` when it is over, else when it ends, at most `longest` from
    /// now.
    pub fn deadline(&self, wall_ms: u64, longest: Duration) -> Option<Instant> {
        let left = Duration::from_millis(wall_ms.checked_sub(self.wall_ms)?);
        (!left.is_zero()).then(|| self.instant + left.min(longest))
    }

    /// A moment in the past read back. One written as later than the clock reads (a corrupt
    /// file) counts as now; one too old to be an `Instant` is `None` (it is centuries old).
    pub fn past(&self, wall_ms: u64) -> Option<Instant> {
        let ago = Duration::from_millis(self.wall_ms.saturating_sub(wall_ms));
        self.instant.checked_sub(ago)
    }
}

/// `at` in Unix milliseconds; a clock set before 1970 reads as 1970.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The file as written: the format first, so a reader can refuse a file it does not know
/// before reading the rest.
#[derive(Serialize)]
struct Envelope<'a> {
    format: u32,
    written_at_ms: u64,
    parts: IndexMap<&'static str, &'a RawValue>,
}

/// The file as read; parts by name, each read by its own kind.
#[derive(Deserialize)]
struct ReadEnvelope {
    format: u32,
    written_at_ms: u64,
    #[serde(default)]
    parts: IndexMap<String, Box<RawValue>>,
}

/// Just the format, read when the whole envelope does not parse: a newer daemon's file may
/// be laid out differently, and saying "format 2" beats a parse error.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// What reading the state file found.
#[derive(Debug)]
pub enum Restored {
    /// There was no file: a first start.
    Nothing,
    /// The file was read: written at this time; `discarded` lists the parts that could not be
    /// restored (part name, reason), which start empty.
    File {
        written_at: SystemTime,
        discarded: Vec<(String, String)>,
    },
    /// The file could not be used at all (reason); every part starts empty.
    Discarded(String),
}

/// The state file in `--state-dir`, and the parts it holds.
pub struct StateFile {
    dir: PathBuf,
    parts: Vec<Arc<dyn Persisted>>,
}

impl StateFile {
    /// The state file of `dir`, holding `parts`.
    pub fn new(dir: PathBuf, parts: Vec<Arc<dyn Persisted>>) -> StateFile {
        StateFile { dir, parts }
    }

    /// Where the file is.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE_NAME)
    }

    /// Reads the file and restores each part from it; never fails, since a daemon that cannot
    /// remember must still heal (SPEC §9: a WARN and a fresh start).
    pub fn restore(&self) -> Restored {
        let path = self.path();
        let bytes = match read_limited(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Restored::Nothing,
            Err(reason) => return Restored::Discarded(reason),
        };
        let envelope = match parse(&bytes) {
            Ok(envelope) => envelope,
            Err(reason) => return Restored::Discarded(reason),
        };
        let clock = Clock::restoring(envelope.written_at_ms);
        let mut discarded = Vec::new();
        for part in &self.parts {
            let Some(saved) = envelope.parts.get(part.name()) else {
                continue; // a kind this file predates starts empty
            };
            if let Err(reason) = part.restore(saved, &clock) {
                discarded.push((part.name().to_string(), reason));
            }
        }
        Restored::File {
            written_at: UNIX_EPOCH + Duration::from_millis(envelope.written_at_ms),
            discarded,
        }
    }

    /// Whether any part changed since the last call (clears every part's mark).
    pub fn take_changed(&self) -> bool {
        // Every mark is taken, not just the first one set.
        self.parts
            .iter()
            .fold(false, |changed, part| part.take_changed() | changed)
    }

    /// Writes every part's state now, atomically; blocking (file writes and fsyncs), so the
    /// daemon calls it off its async workers. Returns the file's size.
    pub fn save(&self) -> io::Result<usize> {
        let clock = Clock::now();
        let saved: Vec<(&'static str, Box<RawValue>)> = self
            .parts
            .iter()
            .map(|part| Ok((part.name(), part.save(&clock)?)))
            .collect::<serde_json::Result<_>>()
            .map_err(io::Error::other)?;
        let envelope = Envelope {
            format: STATE_FORMAT,
            written_at_ms: clock.wall_ms,
            parts: saved.iter().map(|(name, raw)| (*name, &**raw)).collect(),
        };
        // Streamed into the file: the parts' text is not copied once more into one buffer.
        write_atomically(&self.dir, |out| {
            serde_json::to_writer(&mut *out, &envelope).map_err(io::Error::other)?;
            out.write_all(b"\n")
        })
    }
}

/// The file's bytes; `None` when there is none. Read through a limit, so a file that is not
/// ours cannot exhaust memory.
fn read_limited(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot open {}: {err}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(format!(
            "{} is larger than {} MiB, far more than the daemon writes",
            path.display(),
            MAX_STATE_FILE_BYTES / (1024 * 1024)
        ));
    }
    Ok(Some(bytes))
}

/// The envelope, or why the file is no state file of this daemon's.
fn parse(bytes: &[u8]) -> Result<ReadEnvelope, String> {
    let other_format = |format: u32| {
        let whose = if format > STATE_FORMAT {
            "a newer"
        } else {
            "an older"
        };
        format!(
            "the file is in format {format}, written by {whose} AutoHealer; this one reads format {STATE_FORMAT}"
        )
    };
    match serde_json::from_slice::<ReadEnvelope>(bytes) {
        Ok(envelope) if envelope.format == STATE_FORMAT => Ok(envelope),
        Ok(envelope) => Err(other_format(envelope.format)),
        Err(err) => match serde_json::from_slice::<FormatOnly>(bytes) {
            Ok(only) if only.format != STATE_FORMAT => Err(other_format(only.format)),
            _ => Err(format!("the file is not a valid state file: {err}")),
        },
    }
}

/// Replaces `dir/STATE_FILE_NAME` with `bytes`: temp file, fsync, rename, fsync of `dir`.
fn write_atomically(
    dir: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<usize> {
    let temp = dir.join(TEMP_FILE_NAME);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        // Owner only: the file names the host's alerts and the operators' comments.
        .mode(0o600)
        .open(&temp)?;
    let mut out = BufWriter::new(file);
    let written = write(&mut out)
        .and_then(|()| out.into_inner().map_err(io::IntoInnerError::into_error))
        .and_then(|file| {
            file.sync_all()?;
            Ok(file.metadata()?.len() as usize)
        });
    let len = match written {
        Ok(len) => len,
        Err(err) => {
            // A full disk: do not leave a partial temp file taking what room is left (nor one
            // a failed rename below would leave).
            let _ = fs::remove_file(&temp);
            return Err(err);
        }
    };
    if let Err(err) = fs::rename(&temp, dir.join(STATE_FILE_NAME)) {
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    // The rename is durable once the directory is: without this a crash could bring back the
    // old file (or none) after the new one was reported written.
    File::open(dir)?.sync_all()?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A part holding one number, for the file's own tests.
    #[derive(Default)]
    struct Number {
        value: Mutex<u64>,
        changes: Changes,
    }

    impl Persisted for Number {
        fn name(&self) -> &'static str {
            "number"
        }
        fn take_changed(&self) -> bool {
            self.changes.take()
        }
        fn save(&self, _clock: &Clock) -> serde_json::Result<Box<RawValue>> {
            serde_json::value::to_raw_value(&*self.value.lock().unwrap())
        }
        fn restore(&self, saved: &RawValue, _clock: &Clock) -> Result<(), String> {
            *self.value.lock().unwrap() =
                serde_json::from_str(saved.get()).map_err(|e| e.to_string())?;
            Ok(())
        }
    }

    fn file_with(dir: &Path, value: u64) -> (StateFile, Arc<Number>) {
        let number = Arc::new(Number::default());
        *number.value.lock().unwrap() = value;
        let file = StateFile::new(dir.to_path_buf(), vec![number.clone()]);
        (file, number)
    }

    #[test]
    fn a_saved_file_restores_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = file_with(dir.path(), 42);
        assert!(matches!(file.restore(), Restored::Nothing));
        file.save().unwrap();
        let text = fs::read_to_string(file.path()).unwrap();
        assert!(
            text.starts_with(r#"{"format":1,"written_at_ms":"#),
            "{text}"
        );
        assert!(!dir.path().join(TEMP_FILE_NAME).exists());
        let (again, number) = file_with(dir.path(), 0);
        match again.restore() {
            Restored::File { discarded, .. } => assert!(discarded.is_empty()),
            other => panic!("{other:?}"),
        }
        assert_eq!(*number.value.lock().unwrap(), 42);
    }

    #[test]
    fn files_of_other_formats_and_garbage_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (file, number) = file_with(dir.path(), 7);
        let reason = |text: &str| {
            fs::write(file.path(), text).unwrap();
            match file.restore() {
                Restored::Discarded(reason) => reason,
                other => panic!("{text}: {other:?}"),
            }
        };
        assert_eq!(
            reason(r#"{"format": 2, "written_at_ms": 0, "parts": {"number": 1}}"#),
            "the file is in format 2, written by a newer AutoHealer; this one reads format 1"
        );
        assert_eq!(
            reason(r#"{"format": 0, "layout": "unknown"}"#),
            "the file is in format 0, written by an older AutoHealer; this one reads format 1"
        );
        assert_eq!(
            reason(r#"{"format": 1, "written_at_ms": 0, "parts": {"#),
            "the file is not a valid state file: EOF while parsing an object at line 1 column 44"
        );
        assert_eq!(
            reason("\u{0}\u{1}garbage"),
            "the file is not a valid state file: expected value at line 1 column 1"
        );
        assert_eq!(*number.value.lock().unwrap(), 7, "nothing was restored");

        // A part that does not read is discarded alone.
        fs::write(
            file.path(),
            r#"{"format": 1, "written_at_ms": 0, "parts": {"number": "x"}}"#,
        )
        .unwrap();
        match file.restore() {
            Restored::File { discarded, .. } => assert_eq!(
                discarded,
                [(
                    "number".to_string(),
                    "invalid type: string \"x\", expected u64 at line 1 column 3".to_string()
                )]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unreadable_path_is_a_reason_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = file_with(dir.path(), 1);
        fs::create_dir(file.path()).unwrap();
        match file.restore() {
            Restored::Discarded(reason) => {
                assert!(reason.starts_with("cannot read"), "{reason}");
                assert!(reason.contains("Is a directory"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // And a write there fails with the OS error, leaving no temp file behind.
        let err = file.save().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory, "{err}");
        assert!(!dir.path().join(TEMP_FILE_NAME).exists());
    }

    #[test]
    fn marks_are_taken_from_every_part() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Arc::new(Number::default()), Arc::new(Number::default()));
        let file = StateFile::new(dir.path().to_path_buf(), vec![a.clone(), b.clone()]);
        assert!(!file.take_changed());
        a.changes.mark();
        b.changes.mark();
        assert!(file.take_changed());
        assert!(!file.take_changed(), "both marks were cleared at once");
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_keep_at_most_what_was_left_whatever_the_clock_did() {
        let hour = Duration::from_secs(3600);
        let written = Clock::now();
        let until = written.wall(written.instant + hour);
        assert_eq!(until, written.wall_ms + 3_600_000);
        // Read back with the wall clock stepped back a day: still at most an hour.
        let stepped_back = Clock {
            wall_ms: written.wall_ms - 86_400_000,
            ..Clock::now()
        };
        let clock = stepped_back.at_least(written.wall_ms);
        assert_eq!(
            clock.deadline(until, MAX_RESTORED_DEADLINE),
            Some(clock.instant + hour)
        );
        // Stepped forward past the end: over, not resurrected.
        let forward = Clock {
            wall_ms: until + 1,
            ..Clock::now()
        };
        assert_eq!(forward.deadline(until, MAX_RESTORED_DEADLINE), None);
        assert_eq!(forward.deadline(until - 1, MAX_RESTORED_DEADLINE), None);
        // An absurd deadline is cut to the longest any setting allows.
        assert_eq!(
            clock.deadline(u64::MAX, MAX_RESTORED_DEADLINE),
            Some(clock.instant + MAX_RESTORED_DEADLINE)
        );
        // The past: as long ago as the wall clock says, and a future "past" is now.
        assert_eq!(
            clock.past(clock.wall_ms - 5_000),
            Some(clock.instant - Duration::from_secs(5))
        );
        assert_eq!(clock.past(clock.wall_ms + 5_000), Some(clock.instant));
        assert_eq!(clock.wall(clock.instant - hour), clock.wall_ms - 3_600_000);
    }

    #[test]
    fn restoring_never_reads_the_clock_as_earlier_than_the_file() {
        let far_future = unix_ms(SystemTime::now()) + 86_400_000;
        assert_eq!(Clock::restoring(far_future).wall_ms, far_future);
        let past = 1_000;
        assert!(Clock::restoring(past).wall_ms > past);
    }
}
