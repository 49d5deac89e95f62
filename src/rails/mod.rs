//! Safety rails (SPEC §3, §8, §9): what may hold a matched anomaly back, and what the daemon
//! remembers to judge it. One file per rail:
//!
//! - `keys`: per-reflex tables by cooldown key (cooldowns and verification windows), bounded;
//! - `in_flight`: `max_concurrent` per workflow;
//! - `breaker`: the circuit breaker per workflow;
//! - `budget`: the global budget of exec and webhook actions;
//! - `verification`: verification windows and the order they end in;
//! - `silences`: the operators' maintenance windows, checked before every other rail;
//! - `state` and `saved`: the state file that carries all of it across a restart.
//!
//! The state lives here, outside the reflex map, so a reload never re-arms a flapping workflow:
//! it is keyed by reflex, key and workflow names, and each check reads the rail settings from
//! the map snapshot that matched. `RailState` is plain data, one field per kind of state, so it
//! can be written out and read back whole (`saved`). Critical sections are short `std::sync::Mutex`
//! sections, never held across an `.await`. The rails change state and report what happened
//! (`RailEvents`); the dispatcher writes the records.

mod breaker;
mod budget;
mod in_flight;
mod keys;
mod saved;
mod silences;
pub mod state;
mod verification;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::actions::Outcome;
use crate::anomaly::JsonObject;
use crate::map::{Action, Breaker, Budget, Limits, Reflex, ReflexMap, Selected, Workflow};
use state::Changes;

pub use breaker::{BreakerState, Breakers, CircuitOpened};
pub use budget::{BudgetExhausted, BudgetState};
pub use in_flight::InFlight;
pub use keys::{KeyState, KeyTable, KeyTables, MAX_KEYS_PER_REFLEX};
pub use silences::{
    NewSilence, Silence, SilenceError, Silences, MAX_COMMENT_CHARS, MAX_SILENCES,
    MAX_SILENCE_DURATION, MIN_SILENCE_DURATION,
};
pub use verification::{Deadlines, NotHealed, Verified, VerifiedBy, Window, WindowAt};

/// How often idle per-key state is swept out, and how seldom `rail state overflow` is repeated.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Windows judged per call of `sweep`, so one call never holds the lock long; the sweeper calls
/// again at once while more are due.
pub const MAX_VERDICTS_PER_SWEEP: usize = 1000;

/// Why a matched anomaly was held back, as the `reason` of the suppressed answer and record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuppressReason {
    Cooldown,
    InFlight,
    CircuitOpen,
    Budget,
    /// An operator's silence covers the anomaly (SPEC §9 "Silences").
    Silenced,
}

impl SuppressReason {
    /// The value written to answers and records.
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressReason::Cooldown => "cooldown",
            SuppressReason::InFlight => "in_flight",
            SuppressReason::CircuitOpen => "circuit_open",
            SuppressReason::Budget => "budget",
            SuppressReason::Silenced => "silenced",
        }
    }
}

/// A reflex whose per-key table was full, for the WARN `rail state overflow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow {
    pub reflex: Arc<str>,
    pub max_keys: usize,
}

/// What changed in the rails besides the admission itself, each for a record.
#[derive(Debug, Default)]
pub struct RailEvents {
    pub not_healed: Vec<NotHealed>,
    pub verified: Vec<Verified>,
    /// Breakers opened by actions found not healed, by workflow.
    pub circuits_opened: Vec<(Arc<str>, CircuitOpened)>,
    pub budget_exhausted: Option<BudgetExhausted>,
    pub overflow: Option<Overflow>,
}

impl RailEvents {
    /// Nothing happened: what almost every admission reports.
    pub fn is_empty(&self) -> bool {
        self.not_healed.is_empty()
            && self.verified.is_empty()
            && self.circuits_opened.is_empty()
            && self.budget_exhausted.is_none()
            && self.overflow.is_none()
    }
}

/// The rails' answer about one anomaly: a permit or the reason it is held back, and what else
/// the arrival changed.
#[derive(Debug)]
pub struct Admission {
    pub result: Result<Permit, SuppressReason>,
    pub events: RailEvents,
}

/// Proof that a run was admitted; hand it back to `Rails::finish` when the run ends.
#[derive(Debug)]
pub struct Permit {
    workflow: Arc<str>,
    counted: bool,
    /// Set when the case verifies: where to open the window if the run ends `ok`.
    verify: Option<Box<VerifyTicket>>,
}

impl Permit {
    /// Whether an `ok` finish opens a verification window.
    pub fn verifies(&self) -> bool {
        self.verify.is_some()
    }
}

/// What a verification window needs from the dispatch that opens it.
#[derive(Debug)]
struct VerifyTicket {
    reflex: Arc<str>,
    key: Box<str>,
    window: Duration,
    anomaly: Arc<str>,
    escalate: Option<Arc<str>>,
    params: Arc<JsonObject>,
}

/// What finishing a run changed.
#[derive(Debug, Default)]
pub struct Finished {
    pub circuit_opened: Option<CircuitOpened>,
    /// A verification window opened: the action's verdict is pending.
    pub verifying: bool,
    /// The new window ends before any other: the sweeper must re-arm its timer.
    pub wake_sweeper: bool,
    pub overflow: Option<Overflow>,
}

/// The shared rail state; cloning shares it.
#[derive(Clone, Default)]
pub struct Rails {
    state: Arc<Mutex<RailState>>,
    /// Set whenever something the state file keeps changes (`saved`).
    changes: Changes,
}

/// Everything the rails remember, one field per kind of state.
#[derive(Debug, Default)]
pub struct RailState {
    pub keys: KeyTables,
    pub in_flight: InFlight,
    pub breakers: Breakers,
    pub budget: BudgetState,
    pub deadlines: Deadlines,
    /// When `rail state overflow` was last reported.
    pub overflow_warned_at: Option<Instant>,
}

impl Rails {
    /// Admits a run of the `selected` case for `anomaly`, whose cooldown key is `key`, or says
    /// which rail holds it back. Judges the verification windows open on the key first: an
    /// arrival inside one, admitted or not, means that action did not heal.
    pub fn admit(
        &self,
        map: &ReflexMap,
        selected: Selected<'_>,
        anomaly: &Arc<str>,
        key: &str,
        now: Instant,
    ) -> Admission {
        let Selected {
            reflex,
            case,
            workflow,
            ..
        } = selected;
        let mut events = RailEvents::default();
        let mut guard = self.lock();
        let state = &mut *guard;
        let cooling = judge_arrival(state, map, reflex, key, now, &mut events);
        if reflex.keyed {
            self.changes.mark();
        }
        if cooling {
            return Admission {
                result: Err(SuppressReason::Cooldown),
                events,
            };
        }
        let mut permit = match admit_run(state, workflow, map.limits, now, &mut events) {
            Ok(permit) => permit,
            Err(reason) => {
                return Admission {
                    result: Err(reason),
                    events,
                }
            }
        };
        if permit.counted && map.limits.actions.is_some() {
            self.changes.mark(); // the budget spent one
        }
        if !case.cooldown.is_zero() {
            let (key_state, _) = state.keys.table(&reflex.key).state_for(key, now);
            key_state.cooldown_until = Some(now + case.cooldown);
        }
        if let Some(window) = case.verify {
            permit.verify = Some(Box::new(VerifyTicket {
                reflex: reflex.key.clone(),
                key: key.into(),
                window,
                anomaly: anomaly.clone(),
                escalate: case
                    .escalate
                    .as_ref()
                    .map(|escalate| Arc::from(escalate.workflow.as_str())),
                params: case.params.clone(),
            }));
        }
        Admission {
            result: Ok(permit),
            events,
        }
    }

    /// An arrival the rails are not asked to admit, because a silence holds it back: the
    /// windows open on its key are judged all the same (a silence stops actions, not the
    /// learning; SPEC §9), and nothing else changes.
    pub fn observe(&self, map: &ReflexMap, reflex: &Reflex, key: &str, now: Instant) -> RailEvents {
        let mut events = RailEvents::default();
        if reflex.keyed {
            judge_arrival(&mut self.lock(), map, reflex, key, now, &mut events);
            self.changes.mark();
        }
        events
    }

    /// Admits an escalation to `workflow`: through its own breaker, in-flight bound and the
    /// budget, but never the cooldown of the anomaly that caused it (SPEC §9 "Escalation").
    pub fn admit_escalation(&self, workflow: &Workflow, limits: Limits, now: Instant) -> Admission {
        let mut events = RailEvents::default();
        let mut state = self.lock();
        let result = admit_run(&mut state, workflow, limits, now, &mut events);
        if result.as_ref().is_ok_and(|permit| permit.counted) && limits.actions.is_some() {
            self.changes.mark();
        }
        Admission { result, events }
    }

    /// Releases `permit` for action `action_id`, feeds the outcome to the breaker, and opens
    /// the verification window of an `ok` run whose case verifies.
    pub fn finish(
        &self,
        permit: Permit,
        outcome: Outcome,
        breaker: Option<Breaker>,
        action_id: Uuid,
        now: Instant,
    ) -> Finished {
        // A run that holds no slot, and whose ending neither feeds a breaker nor opens a
        // window, changes nothing here: most log-only actions. No lock for them (issue 17).
        let changes_state = permit.counted
            || match outcome {
                Outcome::Ok => permit.verify.is_some(),
                _ => breaker.is_some(),
            };
        if !changes_state {
            return Finished::default();
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        if permit.counted {
            state.in_flight.end(&permit.workflow);
        }
        let mut finished = Finished::default();
        if outcome != Outcome::Ok {
            if let Some(config) = breaker {
                self.changes.mark();
                finished.circuit_opened =
                    state.breakers.record_failure(&permit.workflow, config, now);
            }
            return finished;
        }
        let Some(ticket) = permit.verify else {
            return finished;
        };
        let VerifyTicket {
            reflex,
            key,
            window,
            anomaly,
            escalate,
            params,
        } = *ticket;
        let window = Window {
            id: state.deadlines.next_id(),
            action_id,
            anomaly,
            workflow: permit.workflow,
            escalate,
            params,
            opened_at: now,
            until: now + window,
        };
        let (key_state, overflowed) = state.keys.table(&reflex).state_for(&key, now);
        if overflowed {
            finished.overflow = warn_overflow(&mut state.overflow_warned_at, &reflex, now);
        }
        let at = WindowAt {
            reflex,
            key: (!overflowed).then_some(key),
        };
        finished.wake_sweeper = state.deadlines.add(&window, at);
        key_state.windows.push(window);
        finished.verifying = true;
        self.changes.mark();
        finished
    }

    /// Alertmanager resolved `anomaly`, whose key under `reflex` is `key`: the windows it has
    /// open there are healed.
    pub fn resolve(&self, reflex: &str, key: &str, anomaly: &str) -> Vec<Verified> {
        let mut verified = Vec::new();
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(table) = state.keys.get(reflex) else {
            return verified;
        };
        // A key that never fit in the full table has its windows in the overflow slot.
        let key_state = match table.keys.contains(key) {
            true => table.peek(Some(key)),
            false => table.peek(None),
        };
        if let Some(key_state) = key_state {
            verification::on_resolved(key_state, &mut state.deadlines, anomaly, &mut verified);
        }
        if !verified.is_empty() {
            self.changes.mark();
        }
        verified
    }

    /// Judges the windows that have ended by `now` (at most `MAX_VERDICTS_PER_SWEEP`) as healed;
    /// with `housekeeping`, also forgets every idle key.
    pub fn sweep(&self, now: Instant, housekeeping: bool) -> Vec<Verified> {
        let mut verified = Vec::new();
        let mut guard = self.lock();
        let state = &mut *guard;
        while verified.len() < MAX_VERDICTS_PER_SWEEP {
            let Some((id, at)) = state.deadlines.pop_due(now) else {
                break;
            };
            let key_state = state
                .keys
                .get(&at.reflex)
                .and_then(|table| table.peek(at.key.as_deref()));
            // A window judged already (its key came back) left no deadline, so one is found.
            if let Some(done) = key_state.and_then(|s| verification::on_quiet_end(s, id)) {
                verified.push(done);
            }
        }
        if housekeeping {
            state.keys.sweep(now);
        }
        if !verified.is_empty() {
            self.changes.mark();
        }
        verified
    }

    /// When the earliest open verification window ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lock().deadlines.earliest()
    }

    /// Actions left in `budget` at `now`.
    pub fn budget_remaining(&self, budget: Budget, now: Instant) -> u32 {
        self.lock().budget.remaining(budget, now)
    }

    /// Runs of `workflow` in flight now.
    #[cfg(test)]
    pub fn in_flight(&self, workflow: &str) -> u32 {
        self.lock().in_flight.count(workflow)
    }

    fn lock(&self) -> MutexGuard<'_, RailState> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the daemon would, so keep going with the data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Judges the windows open on `key` of `reflex` (arriving at `now`: the remedy did not hold),
/// counting each failure against its workflow's breaker; true when the key is cooling down.
fn judge_arrival(
    state: &mut RailState,
    map: &ReflexMap,
    reflex: &Reflex,
    key: &str,
    now: Instant,
    events: &mut RailEvents,
) -> bool {
    let mut cooling = false;
    // Only a reflex with a cooldown or a verify window keeps per-key state.
    if reflex.keyed {
        let mut slot = state.keys.table(&reflex.key).slot(key, now);
        if matches!(slot, keys::Slot::Overflow(_)) {
            events.overflow = warn_overflow(&mut state.overflow_warned_at, &reflex.key, now);
        }
        if let Some(key_state) = slot.state() {
            verification::on_arrival(
                key_state,
                &mut state.deadlines,
                now,
                &mut events.not_healed,
                &mut events.verified,
            );
            cooling = key_state.cooling(now);
        }
    }
    for failed in &events.not_healed {
        // A remedy that did not hold counts against its workflow's breaker.
        let Some(failed_workflow) = map.workflows.get(&*failed.workflow) else {
            continue;
        };
        let Some(config) = failed_workflow.breaker else {
            continue;
        };
        if let Some(opened) = state
            .breakers
            .record_failure(&failed_workflow.name, config, now)
        {
            events
                .circuits_opened
                .push((failed_workflow.name.clone(), opened));
        }
    }
    cooling
}

/// The rails every run passes, escalations included: the breaker, then (for exec and webhook
/// workflows) the in-flight bound and the budget.
fn admit_run(
    state: &mut RailState,
    workflow: &Workflow,
    limits: Limits,
    now: Instant,
    events: &mut RailEvents,
) -> Result<Permit, SuppressReason> {
    if state.breakers.is_open(&workflow.name, now) {
        return Err(SuppressReason::CircuitOpen);
    }
    // Log-only workflows cannot pile up and cost nothing, so neither max_concurrent nor the
    // budget holds them back.
    let counted = !matches!(workflow.action, Action::Log);
    if counted {
        if !state
            .in_flight
            .try_start(&workflow.name, workflow.max_concurrent)
        {
            return Err(SuppressReason::InFlight);
        }
        if let Some(budget) = limits.actions {
            if let Err(tripped) = state.budget.check(budget, now) {
                state.in_flight.end(&workflow.name);
                events.budget_exhausted = tripped;
                return Err(SuppressReason::Budget);
            }
            state.budget.spend(now);
        }
    }
    Ok(Permit {
        workflow: workflow.name.clone(),
        counted,
        verify: None,
    })
}

/// The overflow to report for `reflex`, unless one was reported within `SWEEP_INTERVAL`.
fn warn_overflow(
    warned_at: &mut Option<Instant>,
    reflex: &Arc<str>,
    now: Instant,
) -> Option<Overflow> {
    if warned_at.is_some_and(|at| now.duration_since(at) < SWEEP_INTERVAL) {
        return None;
    }
    *warned_at = Some(now);
    Some(Overflow {
        reflex: reflex.clone(),
        max_keys: MAX_KEYS_PER_REFLEX,
    })
}

#[cfg(test)]
mod tests;
