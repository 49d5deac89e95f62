//! Did it heal? (SPEC §9 "Verification"). An action with `verify: D` that finished `ok` opens a
//! window of D on its cooldown key. The key arriving again inside the window means the remedy
//! did not hold; a window that passes quietly, or an Alertmanager `resolved` for the anomaly,
//! means it did.
//!
//! Windows live in the per-key tables (`keys`), so they share their bound; `Deadlines` orders
//! their ends so a quiet window is judged on time by the dispatcher's sweeper, without waiting
//! for a request. A window is half-open: an arrival at exactly its end is after it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::keys::KeyState;
use crate::anomaly::JsonObject;

/// One action waiting for its verdict.
#[derive(Debug, Clone)]
pub struct Window {
    /// Tells this window from others in `Deadlines`.
    pub id: u64,
    pub action_id: Uuid,
    pub anomaly: Arc<str>,
    pub workflow: Arc<str>,
    /// The workflow to escalate to when it is not healed, by name (resolved in the map in
    /// force then).
    pub escalate: Option<Arc<str>>,
    /// The case's params, handed to the escalation.
    pub params: Arc<JsonObject>,
    /// When the action finished `ok`.
    pub opened_at: Instant,
    pub until: Instant,
}

/// An action whose key came back inside its window: the CRIT `healing action not healed`.
#[derive(Debug, Clone)]
pub struct NotHealed {
    pub action_id: Uuid,
    pub anomaly: Arc<str>,
    pub workflow: Arc<str>,
    pub recurred_after: Duration,
    pub escalate: Option<Arc<str>>,
    pub params: Arc<JsonObject>,
}

/// An action judged healed: the INFO `healing action verified`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub action_id: Uuid,
    pub anomaly: Arc<str>,
    pub workflow: Arc<str>,
    pub by: VerifiedBy,
}

/// What showed the action healed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifiedBy {
    /// The window passed without the key coming back.
    QuietWindow,
    /// Alertmanager reported the alert resolved.
    Resolved,
}

impl VerifiedBy {
    /// The value of the record's `verified_by` key.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifiedBy::QuietWindow => "quiet_window",
            VerifiedBy::Resolved => "resolved",
        }
    }
}

impl Window {
    fn verified(self, by: VerifiedBy) -> Verified {
        Verified {
            action_id: self.action_id,
            anomaly: self.anomaly,
            workflow: self.workflow,
            by,
        }
    }
}

/// Where a window is: its reflex's table and its key (`None`: the table's overflow slot).
#[derive(Debug, Clone)]
pub struct WindowAt {
    pub reflex: Arc<str>,
    pub key: Option<Box<str>>,
}

/// Every open window by its end, earliest first; one entry per open window, so it is bounded
/// as the tables are.
#[derive(Debug, Default)]
pub struct Deadlines {
    pub by_end: BTreeMap<(Instant, u64), WindowAt>,
    next_id: u64,
}

impl Deadlines {
    /// A new window's id.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Registers a window's end; true when it is now the earliest (the sweeper must wake).
    pub fn add(&mut self, window: &Window, at: WindowAt) -> bool {
        self.by_end.insert((window.until, window.id), at);
        self.earliest() == Some(window.until)
    }

    /// When the earliest open window ends.
    pub fn earliest(&self) -> Option<Instant> {
        self.by_end.keys().next().map(|(until, _)| *until)
    }

    /// The earliest window that has ended by `now`, taken out.
    pub fn pop_due(&mut self, now: Instant) -> Option<(u64, WindowAt)> {
        let entry = self.by_end.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let ((_, id), at) = entry.remove_entry();
        Some((id, at))
    }

    fn remove(&mut self, window: &Window) {
        self.by_end.remove(&(window.until, window.id));
    }
}

/// The key arrived at `now`: every window open on it is judged. One it arrived inside is not
/// healed; one already over (its end not yet seen by the sweeper) is healed.
pub fn on_arrival(
    state: &mut KeyState,
    deadlines: &mut Deadlines,
    now: Instant,
    not_healed: &mut Vec<NotHealed>,
    verified: &mut Vec<Verified>,
) {
    for window in state.windows.drain(..) {
        deadlines.remove(&window);
        if now < window.until {
            not_healed.push(NotHealed {
                recurred_after: now.saturating_duration_since(window.opened_at),
                action_id: window.action_id,
                anomaly: window.anomaly,
                workflow: window.workflow,
                escalate: window.escalate,
                params: window.params,
            });
        } else {
            verified.push(window.verified(VerifiedBy::QuietWindow));
        }
    }
}

/// Alertmanager resolved `anomaly`: its windows on this key are healed.
pub fn on_resolved(
    state: &mut KeyState,
    deadlines: &mut Deadlines,
    anomaly: &str,
    verified: &mut Vec<Verified>,
) {
    let mut index = 0;
    while index < state.windows.len() {
        if &*state.windows[index].anomaly == anomaly {
            let window = state.windows.swap_remove(index);
            deadlines.remove(&window);
            verified.push(window.verified(VerifiedBy::Resolved));
        } else {
            index += 1;
        }
    }
}

/// The window `id` has ended quietly: taken out of `state` and healed.
pub fn on_quiet_end(state: &mut KeyState, id: u64) -> Option<Verified> {
    let index = state.windows.iter().position(|w| w.id == id)?;
    Some(
        state
            .windows
            .swap_remove(index)
            .verified(VerifiedBy::QuietWindow),
    )
}
