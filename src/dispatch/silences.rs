//! Adding and ending silences (SPEC §9 "Silences"): the table is the rails' (`rails::Silences`);
//! here each change gets its record, and the sweeper is told of a silence that ends sooner than
//! what it sleeps until, so `silence expired` is written when the silence runs out.

use std::time::SystemTime;

use tokio::time::Instant;
use uuid::Uuid;

use super::Dispatcher;
use crate::log::records;
use crate::rails::{NewSilence, Silence, SilenceError};

/// The `expired_by` of a silence ended by `DELETE /silences/ID`.
const EXPIRED_BY_REQUEST: &str = "request";

/// The `expired_by` of a silence that ran out.
pub(super) const EXPIRED_BY_TIME: &str = "time";

impl Dispatcher {
    /// Puts `new` in force from now: INFO `silence added`.
    pub fn add_silence(&self, new: NewSilence) -> Result<Silence, SilenceError> {
        let silence = self.silences.add(new, Instant::now(), SystemTime::now())?;
        records::silence_added(&self.log, &silence);
        // It may end before anything the sweeper waits for.
        self.sweeper.notify_one();
        Ok(silence)
    }

    /// Ends silence `id` now: INFO `silence expired`; `None` when none in force has that id.
    pub fn expire_silence(&self, id: Uuid) -> Option<Silence> {
        let silence = self.silences.expire(id, Instant::now())?;
        records::silence_expired(&self.log, &silence, EXPIRED_BY_REQUEST);
        Some(silence)
    }

    /// The silences in force, oldest first.
    pub fn active_silences(&self) -> Vec<Silence> {
        self.silences.active(Instant::now())
    }
}
