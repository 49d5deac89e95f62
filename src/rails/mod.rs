//! Safety rails (SPEC §3): cooldown per anomaly name, `max_concurrent` per workflow, and the
//! circuit breaker per workflow.
//!
//! The state lives here, outside the reflex map, so a reload never re-arms a flapping workflow:
//! it is keyed by anomaly and workflow names, and each check reads the rail settings from the map
//! snapshot that matched. Critical sections are short `std::sync::Mutex` sections, never held
//! across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::actions::Outcome;
use crate::map::{Action, Breaker, Reflex, Workflow};

/// Cooldown entries kept before the first sweep of expired ones (patterns can match unbounded
/// names, so the map must be swept; the next sweep waits until it doubles, so sweeping stays
/// amortized O(1) per dispatch even when every entry is still cooling down).
const FIRST_COOLDOWN_SWEEP: usize = 4096;

/// Why a matched anomaly was held back, as the `reason` of the suppressed answer and record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuppressReason {
    Cooldown,
    InFlight,
    CircuitOpen,
}

impl SuppressReason {
    /// The value written to answers and records.
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressReason::Cooldown => "cooldown",
            SuppressReason::InFlight => "in_flight",
            SuppressReason::CircuitOpen => "circuit_open",
        }
    }
}

/// A breaker that just opened, for the CRIT `circuit opened` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpened {
    pub failures: u32,
    pub within: Duration,
    /// How long from now the workflow stays suspended.
    pub open_for: Duration,
}

/// The shared rail state; cloning shares it.
#[derive(Clone, Default)]
pub struct Rails {
    state: Arc<Mutex<RailState>>,
}

struct RailState {
    /// Anomaly name → when its cooldown ends.
    cooldown_until: HashMap<String, Instant>,
    /// Size of `cooldown_until` at which expired entries are next swept.
    next_cooldown_sweep: usize,
    /// Workflow name → runs in flight (exec and webhook workflows only).
    in_flight: HashMap<Arc<str>, u32>,
    /// Workflow name → recent failures and whether the circuit is open.
    breakers: HashMap<Arc<str>, BreakerState>,
}

impl Default for RailState {
    fn default() -> Self {
        RailState {
            cooldown_until: HashMap::new(),
            next_cooldown_sweep: FIRST_COOLDOWN_SWEEP,
            in_flight: HashMap::new(),
            breakers: HashMap::new(),
        }
    }
}

#[derive(Default)]
struct BreakerState {
    failures: VecDeque<Instant>,
    open_until: Option<Instant>,
}

/// Proof that a run was admitted; hand it back to `Rails::finish` when the run ends.
#[derive(Debug)]
pub struct Permit {
    workflow: Arc<str>,
    counted: bool,
}

impl Rails {
    /// Admits a run of `workflow` for `anomaly` via `reflex`, or says which rail holds it back.
    pub fn admit(
        &self,
        anomaly: &str,
        reflex: &Reflex,
        workflow: &Workflow,
        now: Instant,
    ) -> Result<Permit, SuppressReason> {
        let mut state = self.lock();
        if state
            .cooldown_until
            .get(anomaly)
            .is_some_and(|until| now < *until)
        {
            return Err(SuppressReason::Cooldown);
        }
        if let Some(breaker) = state.breakers.get_mut(&workflow.name) {
            match breaker.open_until {
                Some(until) if now < until => return Err(SuppressReason::CircuitOpen),
                Some(_) => *breaker = BreakerState::default(), // the window is over: close
                None => {}
            }
        }
        // Log-only workflows cannot pile up, so max_concurrent never holds them back.
        let counted = !matches!(workflow.action, Action::Log);
        if counted {
            let running = state.in_flight.entry(workflow.name.clone()).or_insert(0);
            if *running >= workflow.max_concurrent {
                return Err(SuppressReason::InFlight);
            }
            *running += 1;
        }
        if !reflex.cooldown.is_zero() {
            if state.cooldown_until.len() >= state.next_cooldown_sweep {
                state.cooldown_until.retain(|_, until| now < *until);
                state.next_cooldown_sweep =
                    (state.cooldown_until.len() * 2).max(FIRST_COOLDOWN_SWEEP);
            }
            state
                .cooldown_until
                .insert(anomaly.to_string(), now + reflex.cooldown);
        }
        Ok(Permit {
            workflow: workflow.name.clone(),
            counted,
        })
    }

    /// Releases `permit` and feeds the outcome to the breaker; returns the breaker if it opened.
    pub fn finish(
        &self,
        permit: Permit,
        outcome: Outcome,
        breaker: Option<Breaker>,
        now: Instant,
    ) -> Option<CircuitOpened> {
        let mut state = self.lock();
        if permit.counted {
            if let Some(running) = state.in_flight.get_mut(&permit.workflow) {
                *running = running.saturating_sub(1);
                if *running == 0 {
                    state.in_flight.remove(&permit.workflow);
                }
            }
        }
        let config = breaker?;
        if outcome == Outcome::Ok {
            return None;
        }
        let entry = state.breakers.entry(permit.workflow).or_default();
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
        Some(CircuitOpened {
            failures: config.failures,
            within: config.within,
            open_for: until.saturating_duration_since(now),
        })
    }

    /// Runs of `workflow` in flight now.
    #[cfg(test)]
    pub fn in_flight(&self, workflow: &str) -> u32 {
        self.lock().in_flight.get(workflow).copied().unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, RailState> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the daemon would, so keep going with the data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::JsonObject;
    use crate::map::{ExecAction, Template};

    fn reflex(cooldown: Duration) -> Reflex {
        Reflex {
            key: "a.*".into(),
            is_pattern: true,
            workflow: "w".into(),
            workflow_index: 0,
            params: Arc::new(JsonObject::new()),
            cooldown,
        }
    }

    fn exec_workflow(max_concurrent: u32, breaker: Option<Breaker>) -> Workflow {
        Workflow {
            name: "w".into(),
            action: Action::Exec(ExecAction {
                command: vec![Template::parse("true").unwrap()],
                timeout: Duration::from_secs(1),
            }),
            max_concurrent,
            breaker,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cooldown_holds_back_the_same_name_only() {
        let rails = Rails::default();
        let (r, w) = (reflex(Duration::from_secs(60)), exec_workflow(10, None));
        let now = Instant::now();
        rails.admit("a.x", &r, &w, now).unwrap();
        assert_eq!(
            rails.admit("a.x", &r, &w, now).unwrap_err(),
            SuppressReason::Cooldown
        );
        assert!(rails.admit("a.y", &r, &w, now).is_ok());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(rails.admit("a.x", &r, &w, Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_cooldowns_are_swept_and_live_ones_kept() {
        let rails = Rails::default();
        let (short, long) = (
            reflex(Duration::from_secs(1)),
            reflex(Duration::from_secs(3600)),
        );
        let w = exec_workflow(u32::MAX, None);
        let now = Instant::now();
        for i in 0..FIRST_COOLDOWN_SWEEP - 1 {
            rails.admit(&format!("a.{i}"), &short, &w, now).unwrap();
        }
        rails.admit("a.kept", &long, &w, now).unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        rails.admit("a.new", &long, &w, Instant::now()).unwrap();
        let state = rails.lock();
        assert_eq!(
            state.cooldown_until.len(),
            2,
            "only live entries survive the sweep"
        );
        assert_eq!(state.next_cooldown_sweep, FIRST_COOLDOWN_SWEEP);
    }

    #[tokio::test(start_paused = true)]
    async fn max_concurrent_bounds_runs_in_flight() {
        let rails = Rails::default();
        let (r, w) = (reflex(Duration::ZERO), exec_workflow(2, None));
        let now = Instant::now();
        let first = rails.admit("a.1", &r, &w, now).unwrap();
        let _second = rails.admit("a.2", &r, &w, now).unwrap();
        assert_eq!(
            rails.admit("a.3", &r, &w, now).unwrap_err(),
            SuppressReason::InFlight
        );
        rails.finish(first, Outcome::Ok, None, now);
        assert_eq!(rails.in_flight("w"), 1);
        assert!(rails.admit("a.3", &r, &w, now).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn log_only_workflows_are_never_held_in_flight() {
        let rails = Rails::default();
        let r = reflex(Duration::ZERO);
        let w = Workflow {
            name: "log".into(),
            action: Action::Log,
            max_concurrent: 1,
            breaker: None,
        };
        let now = Instant::now();
        let _a = rails.admit("a.1", &r, &w, now).unwrap();
        let _b = rails.admit("a.1", &r, &w, now).unwrap();
        assert_eq!(rails.in_flight("log"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_failures_within_the_window_and_closes_after_it() {
        let rails = Rails::default();
        let breaker = Breaker {
            failures: 3,
            within: Duration::from_secs(600),
        };
        let (r, w) = (reflex(Duration::ZERO), exec_workflow(10, Some(breaker)));
        let start = Instant::now();
        for i in 0..2 {
            let permit = rails.admit("a.x", &r, &w, Instant::now()).unwrap();
            assert_eq!(
                rails.finish(permit, Outcome::Failed, Some(breaker), Instant::now()),
                None,
                "failure {i}"
            );
            tokio::time::advance(Duration::from_secs(60)).await;
        }
        let permit = rails.admit("a.x", &r, &w, Instant::now()).unwrap();
        let opened = rails
            .finish(permit, Outcome::Timeout, Some(breaker), Instant::now())
            .unwrap();
        assert_eq!(opened.failures, 3);
        assert_eq!(opened.open_for, Duration::from_secs(600 - 120));
        assert_eq!(
            rails.admit("a.x", &r, &w, Instant::now()).unwrap_err(),
            SuppressReason::CircuitOpen
        );
        tokio::time::advance(start + Duration::from_secs(601) - Instant::now()).await;
        assert!(rails.admit("a.x", &r, &w, Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_count() {
        let rails = Rails::default();
        let breaker = Breaker {
            failures: 2,
            within: Duration::from_secs(10),
        };
        let (r, w) = (reflex(Duration::ZERO), exec_workflow(10, Some(breaker)));
        let permit = rails.admit("a.x", &r, &w, Instant::now()).unwrap();
        rails.finish(permit, Outcome::Failed, Some(breaker), Instant::now());
        tokio::time::advance(Duration::from_secs(11)).await;
        let permit = rails.admit("a.x", &r, &w, Instant::now()).unwrap();
        assert_eq!(
            rails.finish(permit, Outcome::Failed, Some(breaker), Instant::now()),
            None
        );
        let permit = rails.admit("a.x", &r, &w, Instant::now()).unwrap();
        assert!(rails
            .finish(permit, Outcome::Ok, Some(breaker), Instant::now())
            .is_none());
    }
}
