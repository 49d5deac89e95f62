//! The circuit breaker (SPEC §3): a workflow that fails `failures` times within `within` is
//! suspended for the rest of that window. Failed and timed-out runs count, and so does an
//! action found not healed (SPEC §9 "Verification").

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::map::Breaker;

/// A breaker that just opened, for the CRIT `circuit opened` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpened {
    pub failures: u32,
    pub within: Duration,
    /// How long from now the workflow stays suspended.
    pub open_for: Duration,
}

/// Workflow name → its recent failures and whether its circuit is open. Keyed by the names
/// the map declares, which the operator controls.
#[derive(Debug, Default)]
pub struct Breakers {
    pub by_workflow: HashMap<Arc<str>, BreakerState>,
}

/// One workflow's breaker.
#[derive(Debug, Default)]
pub struct BreakerState {
    /// When the failures inside the window happened, oldest first; at most `failures` of them.
    pub failures: VecDeque<Instant>,
    /// Set while the circuit is open.
    pub open_until: Option<Instant>,
}

impl Breakers {
    /// Whether `workflow`'s circuit is open at `now`; one whose window is over closes here.
    pub fn is_open(&mut self, workflow: &str, now: Instant) -> bool {
        let Some(breaker) = self.by_workflow.get_mut(workflow) else {
            return false;
        };
        match breaker.open_until {
            Some(until) if now < until => true,
            Some(_) => {
                // The window is over: close, with a clean slate.
                self.by_workflow.remove(workflow);
                false
            }
            None => false,
        }
    }

    /// Counts a failure of `workflow`; returns the breaker if this one opened it.
    pub fn record_failure(
        &mut self,
        workflow: &Arc<str>,
        config: Breaker,
        now: Instant,
    ) -> Option<CircuitOpened> {
        let entry = self.by_workflow.entry(workflow.clone()).or_default();
        if entry.open_until.is_some() {
            return None; // already open: one record per opening
        }
        entry.failures.push_back(now);
        while entry
            .failures
            .front()
            .is_some_and(|first| now.duration_since(*first) > config.within)
        {
            entry.failures.pop_front();
        }
        if entry.failures.len() < config.failures as usize {
            return None;
        }
        // Suspended for the rest of the window that the counted failures span.
        let first = entry.failures.front().copied().unwrap_or(now);
        let until = first + config.within;
        entry.open_until = Some(until);
        entry.failures.clear();
        Some(CircuitOpened {
            failures: config.failures,
            within: config.within,
            open_for: until.saturating_duration_since(now),
        })
    }
}
