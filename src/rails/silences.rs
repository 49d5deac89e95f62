//! Silences (SPEC §9): an operator's maintenance window. While a silence whose matcher covers an
//! anomaly's name is in force, the anomaly runs nothing (`suppressed`, reason `silenced`), without
//! editing the map and without forgetting to undo it: every silence ends by itself.
//!
//! A matcher is a name or a pattern in the reflex syntax, checked as the map checks its keys. The
//! table is bounded (`MAX_SILENCES`), lives outside the map (so reloads keep it), and is kept in
//! the state file (`state`). With no silence in force, checking costs one atomic load: the hot
//! path of every anomaly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use tokio::time::Instant;
use uuid::Uuid;

use super::state::{unix_ms, Changes, Clock, Persisted};
use crate::anomaly::validate_name;
use crate::map::{is_pattern, parse_duration, Pattern};

/// Silences in force at once: far more than any maintenance needs, and a bound on what a caller
/// with the token can make the daemon hold and scan for every anomaly.
pub const MAX_SILENCES: usize = 1000;

/// Longest comment, in characters: a sentence or a ticket link, not a document.
pub const MAX_COMMENT_CHARS: usize = 1024;

/// Shortest silence (SPEC §9).
pub const MIN_SILENCE_DURATION: Duration = Duration::from_secs(1);

/// Longest silence (SPEC §9): 30 days; a longer one is a change to the map.
pub const MAX_SILENCE_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a silence covers: one exact name, or a pattern as in `reflexes:`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Exact(Box<str>),
    Pattern {
        pattern: Pattern,
        /// The literal text before the first wildcard and after the last: every name the
        /// pattern matches starts and ends with them, so most names are told apart by two
        /// comparisons (a whole match cost 300 instructions, callgrind: 16% of a request with
        /// ten silences in force).
        head: usize,
        tail: usize,
    },
}

impl Matcher {
    /// Checks `text` as the map checks a reflex key.
    fn parse(text: &str) -> Result<Matcher, String> {
        if is_pattern(text) {
            let pattern = Pattern::parse(text)?;
            let wildcard = |c: char| c == '*' || c == '?';
            let head = text.find(wildcard).unwrap_or(text.len());
            let tail = text.len() - text.rfind(wildcard).map_or(text.len(), |at| at + 1);
            return Ok(Matcher::Pattern {
                pattern,
                head,
                tail,
            });
        }
        validate_name(text).map_err(|why| format!("the matcher {why}"))?;
        Ok(Matcher::Exact(text.into()))
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Exact(exact) => **exact == *name,
            Matcher::Pattern {
                pattern,
                head,
                tail,
            } => {
                let source = pattern.as_str().as_bytes();
                let name_bytes = name.as_bytes();
                name_bytes.starts_with(&source[..*head])
                    && name_bytes.ends_with(&source[source.len() - tail..])
                    && pattern.matches(name)
            }
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Matcher::Exact(exact) => exact,
            Matcher::Pattern { pattern, .. } => pattern.as_str(),
        }
    }
}

/// One silence, as `GET /silences` shows it.
#[derive(Debug, Clone)]
pub struct Silence {
    pub id: Uuid,
    matcher: Matcher,
    pub comment: String,
    pub starts_at: SystemTime,
    pub ends_at: SystemTime,
    /// When it ends on the daemon's own clock, which a stepped wall clock does not move.
    until: Instant,
}

impl Silence {
    /// The name or pattern it covers, as given.
    pub fn matcher(&self) -> &str {
        self.matcher.as_str()
    }
}

impl Serialize for Silence {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut object = s.serialize_struct("Silence", 5)?;
        object.serialize_field("id", &self.id)?;
        object.serialize_field("matcher", self.matcher())?;
        object.serialize_field("comment", &self.comment)?;
        let time = |at| humantime::format_rfc3339_millis(at).to_string();
        object.serialize_field("starts_at", &time(self.starts_at))?;
        object.serialize_field("ends_at", &time(self.ends_at))?;
        object.end()
    }
}

/// A silence asked for, checked: what `POST /silences` may add.
#[derive(Debug, Clone)]
pub struct NewSilence {
    matcher: Matcher,
    duration: Duration,
    comment: String,
}

/// The body of `POST /silences`, before its checks. Unknown fields are refused: a misspelt
/// `comment` or `for` silently dropped would leave a silence other than the one meant.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    matcher: String,
    duration: String,
    #[serde(default)]
    comment: Option<String>,
}

impl NewSilence {
    /// Parses and checks a `POST /silences` body; the error is the message for a 400 answer.
    pub fn from_json(body: &[u8]) -> Result<NewSilence, String> {
        let request: Request = serde_json::from_slice(body).map_err(|err| {
            format!("the body must be {{\"matcher\": NAME_OR_PATTERN, \"duration\": \"2h\", \"comment\": TEXT}}: {err}")
        })?;
        NewSilence::new(
            &request.matcher,
            &request.duration,
            request.comment.as_deref().unwrap_or(""),
        )
    }

    /// Checks each value: the matcher as a reflex key, the duration from 1s to 30 days, the
    /// comment short and free of control characters (it goes into log records).
    pub fn new(matcher: &str, duration: &str, comment: &str) -> Result<NewSilence, String> {
        let matcher = Matcher::parse(matcher)?;
        let text = duration;
        let duration = parse_duration(text)?;
        if !(MIN_SILENCE_DURATION..=MAX_SILENCE_DURATION).contains(&duration) {
            return Err(format!("a silence lasts from 1s to 30d, not `{text}`"));
        }
        let chars = comment.chars().count();
        if chars > MAX_COMMENT_CHARS {
            return Err(format!(
                "the comment is {chars} characters long; the limit is {MAX_COMMENT_CHARS}"
            ));
        }
        if comment.chars().any(char::is_control) {
            return Err("the comment must not contain control characters".into());
        }
        Ok(NewSilence {
            matcher,
            duration,
            comment: comment.to_string(),
        })
    }
}

/// Why a silence could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SilenceError {
    /// `MAX_SILENCES` are in force.
    Full,
}

impl std::fmt::Display for SilenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SilenceError::Full => write!(
                f,
                "{MAX_SILENCES} silences are in force, the most the daemon keeps; expire one first"
            ),
        }
    }
}

/// The silences in force; cloning shares them.
#[derive(Clone, Default)]
pub struct Silences {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Oldest first. A silence stays until it is expired, by time or by request.
    table: Mutex<Vec<Silence>>,
    /// `table.len()`, read without the lock by every anomaly.
    count: AtomicUsize,
    changes: Changes,
}

impl Silences {
    /// Adds `new` at `now` (the wall clock reading `wall`).
    pub fn add(
        &self,
        new: NewSilence,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Silence, SilenceError> {
        let mut table = self.lock();
        if table.len() >= MAX_SILENCES {
            return Err(SilenceError::Full);
        }
        let silence = Silence {
            id: Uuid::now_v7(),
            matcher: new.matcher,
            comment: new.comment,
            starts_at: wall,
            ends_at: wall + new.duration,
            until: now + new.duration,
        };
        table.push(silence.clone());
        self.changed(&table);
        Ok(silence)
    }

    /// The silence that holds back `name` at `now`, if any (the oldest of those that do).
    pub fn find(&self, name: &str, now: Instant) -> Option<Uuid> {
        // The hot path: no silence, no lock.
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let table = self.lock();
        table
            .iter()
            .find(|s| now < s.until && s.matcher.matches(name))
            .map(|s| s.id)
    }

    /// The silences in force at `now`, oldest first.
    pub fn active(&self, now: Instant) -> Vec<Silence> {
        let table = self.lock();
        table.iter().filter(|s| now < s.until).cloned().collect()
    }

    /// How many silences are in force at `now`.
    pub fn active_count(&self, now: Instant) -> usize {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.lock().iter().filter(|s| now < s.until).count()
    }

    /// Ends silence `id` at `now`; `None` when no silence in force has that id.
    pub fn expire(&self, id: Uuid, now: Instant) -> Option<Silence> {
        let mut table = self.lock();
        let index = table.iter().position(|s| s.id == id && now < s.until)?;
        let silence = table.remove(index);
        self.changed(&table);
        Some(silence)
    }

    /// Takes out the silences that have ended by `now`.
    pub fn expire_due(&self, now: Instant) -> Vec<Silence> {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let mut table = self.lock();
        let (ended, active): (Vec<Silence>, Vec<Silence>) =
            table.drain(..).partition(|s| s.until <= now);
        *table = active;
        if !ended.is_empty() {
            self.changed(&table);
        }
        ended
    }

    /// When the first silence in force ends.
    pub fn next_end(&self) -> Option<Instant> {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.lock().iter().map(|s| s.until).min()
    }

    fn changed(&self, table: &[Silence]) {
        self.inner.count.store(table.len(), Ordering::Relaxed);
        self.inner.changes.mark();
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Silence>> {
        // A list of plain values: nothing a panicking holder could leave half-done.
        self.inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One silence in the state file.
#[derive(Debug, Serialize, Deserialize)]
struct SavedSilence {
    id: Uuid,
    matcher: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    comment: String,
    starts_at: u64,
    /// As shown: the wall clock at `starts_at` plus the duration.
    ends_at: u64,
    /// When it ends by the daemon's own clock, which a wall clock stepped since may have moved
    /// away from `ends_at`: what holds.
    until: u64,
}

impl Persisted for Silences {
    fn name(&self) -> &'static str {
        "silences"
    }

    fn take_changed(&self) -> bool {
        self.inner.changes.take()
    }

    fn save(&self, clock: &Clock) -> serde_json::Result<Box<RawValue>> {
        let saved: Vec<SavedSilence> = self
            .lock()
            .iter()
            .map(|s| SavedSilence {
                id: s.id,
                matcher: s.matcher().to_string(),
                comment: s.comment.clone(),
                starts_at: unix_ms(s.starts_at),
                ends_at: unix_ms(s.ends_at),
                until: clock.wall(s.until),
            })
            .collect();
        serde_json::value::to_raw_value(&saved)
    }

    /// Silences that ended while the daemon was down come back due now, so the sweeper
    /// writes their `silence expired` as it would have.
    fn restore(&self, saved: &RawValue, clock: &Clock) -> Result<(), String> {
        let saved: Vec<SavedSilence> =
            serde_json::from_str(saved.get()).map_err(|err| err.to_string())?;
        let skip = saved.len().saturating_sub(MAX_SILENCES);
        let restored: Vec<Silence> = saved[skip..]
            .iter()
            .filter_map(|s| {
                Some(Silence {
                    id: s.id,
                    matcher: Matcher::parse(&s.matcher).ok()?,
                    comment: s.comment.chars().take(MAX_COMMENT_CHARS).collect(),
                    starts_at: UNIX_EPOCH + Duration::from_millis(s.starts_at),
                    ends_at: UNIX_EPOCH + Duration::from_millis(s.ends_at),
                    until: clock
                        .deadline(s.until, MAX_SILENCE_DURATION)
                        .unwrap_or(clock.instant),
                })
            })
            .collect();
        let mut table = self.lock();
        *table = restored;
        self.inner.count.store(table.len(), Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(matcher: &str, duration: &str) -> NewSilence {
        NewSilence::new(matcher, duration, "upgrade").unwrap()
    }

    #[test]
    fn requests_are_checked_value_by_value() {
        let err = |body: &str| NewSilence::from_json(body.as_bytes()).unwrap_err();
        assert!(NewSilence::from_json(br#"{"matcher": "nginx.**", "duration": "2h"}"#).is_ok());
        assert_eq!(
            err(r#"{"matcher": "nginx.***", "duration": "2h"}"#),
            "invalid pattern `nginx.***`: `***` is ambiguous; use `*` within a segment or `**` across dots"
        );
        assert_eq!(
            err(r#"{"matcher": "", "duration": "2h"}"#),
            "the matcher must not be empty"
        );
        assert_eq!(
            err(&format!(
                r#"{{"matcher": "{}", "duration": "2h"}}"#,
                "x".repeat(257)
            )),
            "the matcher is 257 characters long; the limit is 256"
        );
        assert_eq!(
            err(r#"{"matcher": "a", "duration": "500ms"}"#),
            "a silence lasts from 1s to 30d, not `500ms`"
        );
        assert_eq!(
            err(r#"{"matcher": "a", "duration": "31days"}"#),
            "a silence lasts from 1s to 30d, not `31days`"
        );
        assert!(NewSilence::new("a", "30d", "").is_ok());
        assert!(
            err(r#"{"matcher": "a", "duration": "soon"}"#).starts_with("invalid duration `soon`")
        );
        assert_eq!(
            err(r#"{"matcher": "a", "duration": "1h", "comment": "a\nb"}"#),
            "the comment must not contain control characters"
        );
        assert_eq!(
            err(&format!(
                r#"{{"matcher": "a", "duration": "1h", "comment": "{}"}}"#,
                "é".repeat(1025)
            )),
            "the comment is 1025 characters long; the limit is 1024"
        );
        assert_eq!(
            err(r#"{"matcher": "a", "for": "1h"}"#),
            "the body must be {\"matcher\": NAME_OR_PATTERN, \"duration\": \"2h\", \"comment\": TEXT}: unknown field `for`, expected one of `matcher`, `duration`, `comment` at line 1 column 22"
        );
        assert!(err(r#"{"matcher": 5, "duration": "1h"}"#).contains("invalid type: integer `5`"));
    }

    #[test]
    fn patterns_match_as_in_the_map() {
        let matches = |pattern: &str, name: &str| Matcher::parse(pattern).unwrap().matches(name);
        assert!(matches("nginx.**", "nginx.web1.down"));
        assert!(!matches("nginx.**", "apache.web1.down"));
        assert!(matches("nginx.*.down", "nginx.web1.down"));
        assert!(!matches("nginx.*.down", "nginx.web1.up"));
        assert!(
            !matches("nginx.*.down", "nginx.a.b.down"),
            "* stays in its segment"
        );
        assert!(matches("**.down", "db.main.down"));
        assert!(matches("?.x", "é.x"));
        assert!(!matches("a*a", "a"), "head and tail may not overlap");
        assert!(matches("a*a", "aa"));
        assert!(matches("disk.full", "disk.full"));
        assert!(!matches("disk.full", "disk.full.now"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silence_covers_its_names_until_it_ends() {
        let silences = Silences::default();
        let now = Instant::now();
        assert_eq!(silences.find("nginx.web1.down", now), None);
        let wall = SystemTime::now();
        let pattern = silences.add(new("nginx.**", "1m"), now, wall).unwrap();
        let exact = silences.add(new("disk.full", "2m"), now, wall).unwrap();
        assert_eq!(pattern.ends_at, wall + Duration::from_secs(60));
        assert_eq!(silences.find("nginx.web1.down", now), Some(pattern.id));
        assert_eq!(silences.find("disk.full", now), Some(exact.id));
        assert_eq!(silences.find("disk.full.now", now), None);
        assert_eq!(silences.find("apache.down", now), None);
        assert_eq!(silences.next_end(), Some(now + Duration::from_secs(60)));
        // Half-open: at its end the silence no longer holds.
        let end = now + Duration::from_secs(60);
        assert_eq!(
            silences.find("nginx.x", end - Duration::from_nanos(1)),
            Some(pattern.id)
        );
        assert_eq!(silences.find("nginx.x", end), None);
        assert_eq!(silences.active_count(end), 1);
        let ended = silences.expire_due(end);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].id, pattern.id);
        assert_eq!(silences.active(end).len(), 1);
        // Expired by request: gone, and a second expiry finds nothing.
        assert_eq!(silences.expire(exact.id, end).map(|s| s.id), Some(exact.id));
        assert!(silences.expire(exact.id, end).is_none());
        assert_eq!(silences.next_end(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded() {
        let silences = Silences::default();
        let now = Instant::now();
        for _ in 0..MAX_SILENCES {
            silences
                .add(new("a", "1h"), now, SystemTime::now())
                .unwrap();
        }
        let full = silences.add(new("b", "1h"), now, SystemTime::now());
        assert_eq!(full.unwrap_err(), SilenceError::Full);
        assert_eq!(
            SilenceError::Full.to_string(),
            "1000 silences are in force, the most the daemon keeps; expire one first"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silences_come_back_from_the_state_file() {
        let silences = Silences::default();
        let now = Instant::now();
        let wall = SystemTime::now();
        let kept = silences.add(new("nginx.*", "1h"), now, wall).unwrap();
        let short = silences.add(new("db", "1s"), now, wall).unwrap();
        assert!(silences.take_changed());
        let clock = Clock::now();
        let saved = silences.save(&clock).unwrap();

        // Read back two seconds later: the short one ended while the daemon was down.
        let later = Clock {
            instant: clock.instant + Duration::from_secs(2),
            wall_ms: clock.wall_ms + 2_000,
        };
        let restored = Silences::default();
        restored.restore(&saved, &later).unwrap();
        assert_eq!(restored.find("nginx.a", later.instant), Some(kept.id));
        assert_eq!(restored.find("db", later.instant), None);
        let due = restored.expire_due(later.instant);
        assert_eq!(due.iter().map(|s| s.id).collect::<Vec<_>>(), [short.id]);
        let active = restored.active(later.instant);
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].comment, "upgrade");
        let shown = |at| humantime::format_rfc3339_millis(at).to_string();
        assert_eq!(
            shown(active[0].ends_at),
            shown(kept.ends_at),
            "shown as it was"
        );
        assert_eq!(active[0].matcher(), "nginx.*");
        assert_eq!(
            active[0].until,
            later.instant + Duration::from_secs(3600 - 2)
        );
    }

    #[test]
    fn the_answer_is_the_contract_object() {
        let silence = Silence {
            id: Uuid::nil(),
            matcher: Matcher::parse("nginx.**").unwrap(),
            comment: "upgrade".into(),
            starts_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            ends_at: UNIX_EPOCH + Duration::from_secs(1_700_007_200),
            until: Instant::now(),
        };
        assert_eq!(
            serde_json::to_value(&silence).unwrap(),
            serde_json::json!({
                "id": "00000000-0000-0000-0000-000000000000",
                "matcher": "nginx.**",
                "comment": "upgrade",
                "starts_at": "2023-11-14T22:13:20.000Z",
                "ends_at": "2023-11-15T00:13:20.000Z",
            })
        );
    }
}
