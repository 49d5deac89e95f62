//! When a save is whole (SPEC §8): the file-system events of one save, turned into the moment
//! the reloader looks at the file.
//!
//! A save ends with an event of its own: the writer closes the file it wrote, or a rename or a
//! link puts a finished file in place. Writes before that only say a save is under way, so the
//! file is not read then: an in-place writer that pauses mid-file is never loaded half-written.
//! A writer that keeps the file open never sends that last event; its file is looked at once it
//! has been quiet for `QUIET`.

use std::time::{Duration, Instant};

/// How long a file written but not closed must stay unwritten before it is loaded anyway.
pub const QUIET: Duration = Duration::from_secs(2);

/// How long a removed file gets to be replaced before its absence is reported: a tool that
/// deletes and then re-creates (`ln -sf`, some installers) is one save, not a missing map.
pub const REMOVED_GRACE: Duration = Duration::from_millis(50);

/// What one file-system event says about a save of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEvent {
    /// The save is whole: the writer closed the file after writing, a rename or a link put a file
    /// in place, or the event queue overflowed (anything may have changed).
    Complete,
    /// Bytes were written, or a new file created, and the writer may still hold it open.
    Written,
    /// Something else changed (owner, mode, times): worth a look unless a write is under way.
    Changed,
    /// The file was removed (or its directory was).
    Removed,
}

/// The state between a save's first event and its last: when the reloader should look next.
#[derive(Debug, Default)]
pub struct SaveTracker {
    /// When to look at the file; `None` while nothing is pending.
    look_at: Option<Instant>,
    /// A write was seen and its close was not.
    writing: bool,
}

impl SaveTracker {
    /// Takes one event into account, seen at `now`.
    pub fn saw(&mut self, event: FileEvent, now: Instant) {
        match event {
            FileEvent::Complete => {
                self.writing = false;
                self.look_at = Some(now);
            }
            // Every write pushes the quiet deadline out; a close brings it back to now.
            FileEvent::Written => {
                self.writing = true;
                self.look_at = Some(now + QUIET);
            }
            FileEvent::Changed if !self.writing => self.no_later_than(now),
            FileEvent::Changed => {}
            FileEvent::Removed => {
                // A file deleted while open for writing will never be closed under its name.
                self.writing = false;
                self.no_later_than(now + REMOVED_GRACE);
            }
        }
    }

    fn no_later_than(&mut self, at: Instant) {
        self.look_at = Some(self.look_at.map_or(at, |pending| pending.min(at)));
    }

    /// When the next look is due, if one is pending.
    pub fn due(&self) -> Option<Instant> {
        self.look_at
    }

    /// True, once, when the pending look is due at `now`.
    pub fn take_due(&mut self, now: Instant) -> bool {
        match self.look_at {
            Some(at) if at <= now => {
                self.look_at = None;
                // The quiet deadline passed: the writer is done as far as anyone can tell.
                self.writing = false;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_close_after_writes_is_due_at_once() {
        let t0 = Instant::now();
        let mut saves = SaveTracker::default();
        saves.saw(FileEvent::Written, t0);
        saves.saw(FileEvent::Written, t0 + ms(1));
        assert!(!saves.take_due(t0 + ms(500)), "a write alone is not a save");
        saves.saw(FileEvent::Complete, t0 + ms(600));
        assert_eq!(saves.due(), Some(t0 + ms(600)));
        assert!(saves.take_due(t0 + ms(600)));
        assert!(!saves.take_due(t0 + ms(601)), "one look per save");
        assert_eq!(saves.due(), None);
    }

    #[test]
    fn a_writer_that_keeps_the_file_open_is_due_after_quiet() {
        let t0 = Instant::now();
        let mut saves = SaveTracker::default();
        saves.saw(FileEvent::Written, t0);
        saves.saw(FileEvent::Written, t0 + ms(1500));
        assert!(
            !saves.take_due(t0 + ms(2000)),
            "each write restarts the quiet"
        );
        assert_eq!(saves.due(), Some(t0 + ms(1500) + QUIET));
        assert!(saves.take_due(t0 + ms(1500) + QUIET));
    }

    #[test]
    fn a_write_after_a_close_waits_for_its_own_close() {
        let t0 = Instant::now();
        let mut saves = SaveTracker::default();
        saves.saw(FileEvent::Complete, t0);
        // The next save truncated the file before the look: it is half-written again.
        saves.saw(FileEvent::Written, t0);
        assert!(!saves.take_due(t0 + ms(10)));
    }

    #[test]
    fn metadata_changes_are_looked_at_unless_a_write_is_under_way() {
        let t0 = Instant::now();
        let mut saves = SaveTracker::default();
        saves.saw(FileEvent::Changed, t0);
        assert!(saves.take_due(t0));
        saves.saw(FileEvent::Written, t0);
        saves.saw(FileEvent::Changed, t0 + ms(1));
        assert!(
            !saves.take_due(t0 + ms(1)),
            "a chmod mid-write is not a save"
        );
    }

    #[test]
    fn a_removal_waits_briefly_for_a_replacement() {
        let t0 = Instant::now();
        let mut saves = SaveTracker::default();
        saves.saw(FileEvent::Removed, t0);
        assert!(!saves.take_due(t0));
        assert_eq!(saves.due(), Some(t0 + REMOVED_GRACE));
        // Re-created and being written: the new file's close decides.
        saves.saw(FileEvent::Written, t0 + ms(1));
        assert!(!saves.take_due(t0 + REMOVED_GRACE));
        saves.saw(FileEvent::Complete, t0 + ms(2));
        assert!(saves.take_due(t0 + ms(2)));

        // Removed while a writer held it: reported after the grace, not after the quiet.
        saves.saw(FileEvent::Written, t0 + ms(3));
        saves.saw(FileEvent::Removed, t0 + ms(4));
        assert!(saves.take_due(t0 + ms(4) + REMOVED_GRACE));
    }
}
