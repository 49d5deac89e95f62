//! The rails' part of the state file (SPEC §9 "Memory across restarts"): per-key cooldowns and
//! verification windows, breaker windows and the budget window, as wall-clock times.
//!
//! What is left out on purpose: runs in flight (their processes are gone with the daemon, and a
//! restart must not hold a workflow back for a run nobody waits for), and when `rail state
//! overflow` was last said. On the way back in, what has ended is dropped, every deadline keeps
//! at most what was left of it (`Clock`), each table keeps its bound, and a verification window
//! that ended while the daemon was down is judged at once by the sweeper, as it would have been.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;
use uuid::Uuid;

use super::breaker::{BreakerState, Breakers};
use super::budget::BudgetState;
use super::keys::{KeyState, KeyTable, KeyTables, MAX_KEYS_PER_REFLEX};
use super::state::{Clock, Persisted, MAX_RESTORED_DEADLINE};
use super::verification::{Deadlines, Window, WindowAt};
use super::Rails;
use crate::anomaly::JsonObject;
use crate::map::MAX_BUDGET_ACTIONS;

/// Everything the rails keep across a restart.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedRails {
    #[serde(default)]
    keys: Vec<SavedTable>,
    #[serde(default)]
    breakers: Vec<SavedBreaker>,
    #[serde(default)]
    budget: SavedBudget,
}

/// One reflex's per-key table.
#[derive(Debug, Serialize, Deserialize)]
struct SavedTable {
    reflex: Arc<str>,
    /// Least recently seen first, so the order of forgetting survives too.
    #[serde(default)]
    keys: Vec<SavedKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    overflow: Option<SavedKey>,
}

/// One key's cooldown and open windows; the overflow slot has no key.
#[derive(Debug, Serialize, Deserialize)]
struct SavedKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cooldown_until: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    windows: Vec<SavedWindow>,
}

/// A verification window still waiting for its verdict.
#[derive(Debug, Serialize, Deserialize)]
struct SavedWindow {
    action_id: Uuid,
    anomaly: Arc<str>,
    workflow: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    escalate: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    params: JsonObject,
    opened_at: u64,
    until: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedBreaker {
    workflow: Arc<str>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    failures: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open_until: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedBudget {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    spent: Vec<u64>,
    #[serde(default)]
    tripped: bool,
}

impl Persisted for Rails {
    fn name(&self) -> &'static str {
        "rails"
    }

    fn take_changed(&self) -> bool {
        self.changes.take()
    }

    fn save(&self, clock: &Clock) -> serde_json::Result<Box<RawValue>> {
        // Copied under the lock, written out after it.
        let saved = {
            let state = self.lock();
            SavedRails {
                keys: state
                    .keys
                    .by_reflex
                    .iter()
                    .map(|(reflex, table)| save_table(reflex, table, clock))
                    .collect(),
                breakers: state
                    .breakers
                    .by_workflow
                    .iter()
                    .map(|(workflow, breaker)| SavedBreaker {
                        workflow: workflow.clone(),
                        failures: breaker.failures.iter().map(|at| clock.wall(*at)).collect(),
                        open_until: breaker.open_until.map(|at| clock.wall(at)),
                    })
                    .collect(),
                budget: SavedBudget {
                    spent: state
                        .budget
                        .spent
                        .iter()
                        .map(|at| clock.wall(*at))
                        .collect(),
                    tripped: state.budget.tripped,
                },
            }
        };
        serde_json::value::to_raw_value(&saved)
    }

    fn restore(&self, saved: &RawValue, clock: &Clock) -> Result<(), String> {
        let saved: SavedRails = serde_json::from_str(saved.get()).map_err(|err| err.to_string())?;
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut deadlines = Deadlines::default();
        let mut keys = KeyTables::default();
        for table in saved.keys {
            if let Some(restored) = restore_table(&table, clock, &mut deadlines) {
                keys.by_reflex.insert(table.reflex, restored);
            }
        }
        let mut breakers = Breakers::default();
        for saved in saved.breakers {
            let mut failures: Vec<Instant> = saved
                .failures
                .iter()
                .filter_map(|at| clock.past(*at))
                .collect();
            failures.sort();
            let breaker = BreakerState {
                failures: failures.into(),
                open_until: saved
                    .open_until
                    .and_then(|at| clock.deadline(at, MAX_RESTORED_DEADLINE)),
            };
            if !breaker.failures.is_empty() || breaker.open_until.is_some() {
                breakers.by_workflow.insert(saved.workflow, breaker);
            }
        }
        let mut spent: Vec<Instant> = saved
            .budget
            .spent
            .iter()
            .filter_map(|at| clock.past(*at))
            .collect();
        spent.sort();
        // No budget counts more actions than its largest `max`.
        let keep_from = spent.len().saturating_sub(MAX_BUDGET_ACTIONS as usize);
        state.keys = keys;
        state.deadlines = deadlines;
        state.breakers = breakers;
        state.budget = BudgetState {
            spent: spent.drain(keep_from..).collect::<VecDeque<_>>(),
            tripped: saved.budget.tripped,
        };
        Ok(())
    }
}

fn save_table(reflex: &Arc<str>, table: &KeyTable, clock: &Clock) -> SavedTable {
    SavedTable {
        reflex: reflex.clone(),
        // The cache iterates most recent first.
        keys: table
            .keys
            .iter()
            .rev()
            .map(|(key, state)| save_key(Some(key), state, clock))
            .collect(),
        overflow: (!table.overflow.windows.is_empty() || table.overflow.cooldown_until.is_some())
            .then(|| save_key(None, &table.overflow, clock)),
    }
}

fn save_key(key: Option<&str>, state: &KeyState, clock: &Clock) -> SavedKey {
    SavedKey {
        key: key.map(Box::from),
        cooldown_until: state.cooldown_until.map(|at| clock.wall(at)),
        windows: state
            .windows
            .iter()
            .map(|window| SavedWindow {
                action_id: window.action_id,
                anomaly: window.anomaly.clone(),
                workflow: window.workflow.clone(),
                escalate: window.escalate.clone(),
                params: (*window.params).clone(),
                opened_at: clock.wall(window.opened_at),
                until: clock.wall(window.until),
            })
            .collect(),
    }
}

/// The table of `saved.reflex`, with what is still live; `None` when nothing is.
fn restore_table(saved: &SavedTable, clock: &Clock, deadlines: &mut Deadlines) -> Option<KeyTable> {
    let mut table = KeyTable::new(MAX_KEYS_PER_REFLEX);
    // The most recently seen keys are the ones a full table keeps.
    let skip = saved.keys.len().saturating_sub(MAX_KEYS_PER_REFLEX);
    for key in &saved.keys[skip..] {
        let Some(name) = &key.key else { continue };
        let at = WindowAt {
            reflex: saved.reflex.clone(),
            key: Some(name.clone()),
        };
        if let Some(state) = restore_key(key, clock, deadlines, at) {
            table.keys.put(name.clone(), state);
        }
    }
    if let Some(overflow) = &saved.overflow {
        let at = WindowAt {
            reflex: saved.reflex.clone(),
            key: None,
        };
        if let Some(state) = restore_key(overflow, clock, deadlines, at) {
            table.overflow = state;
        }
    }
    let live = !table.keys.is_empty() || !table.overflow.is_idle(clock.instant);
    live.then_some(table)
}

/// One key's state, its windows registered in `deadlines` at `at`; `None` when nothing in it
/// is live.
fn restore_key(
    saved: &SavedKey,
    clock: &Clock,
    deadlines: &mut Deadlines,
    at: WindowAt,
) -> Option<KeyState> {
    let mut state = KeyState {
        cooldown_until: saved
            .cooldown_until
            .and_then(|until| clock.deadline(until, MAX_RESTORED_DEADLINE)),
        windows: Vec::new(),
    };
    for window in &saved.windows {
        let Some(opened_at) = clock.past(window.opened_at) else {
            continue;
        };
        // One that ended while the daemon was down is due now: the sweeper judges it.
        let until = clock
            .deadline(window.until, MAX_RESTORED_DEADLINE)
            .unwrap_or(clock.instant);
        let window = Window {
            id: deadlines.next_id(),
            action_id: window.action_id,
            anomaly: window.anomaly.clone(),
            workflow: window.workflow.clone(),
            escalate: window.escalate.clone(),
            params: Arc::new(window.params.clone()),
            opened_at,
            until,
        };
        deadlines.add(&window, at.clone());
        state.windows.push(window);
    }
    (!state.is_idle(clock.instant)).then_some(state)
}
