//! From an anomaly to a running healing action: one snapshot of the map, one match, the safety
//! rails, one triggered record, then the action on the task tracker so shutdown can wait for it.
//! `answer` writes what the caller is told; `history` keeps the recent actions for
//! `GET /actions`.

mod answer;
mod history;

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use slog::Logger;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::{ContextV7, Timestamp, Uuid};

use crate::actions::{self, ActionReport, ActionRun};
use crate::anomaly::{Anomaly, Source};
use crate::log::records;
use crate::map::MapHandle;
use crate::rails::{Permit, Rails};

pub use answer::{Answer, DispatchOutcome};
pub use history::{ActionEntry, ActionHistory, HISTORY_CAPACITY};

/// Orders action ids within a millisecond, as `Uuid::now_v7` does with a context of its own.
static ACTION_IDS: Mutex<ContextV7> = Mutex::new(ContextV7::new());

/// A version 7 UUID for an action dispatched `at`: unique, sorting by dispatch time, and from
/// the clock reading the action's `received_at` holds (`now_v7` would read the clock again).
fn action_id(at: SystemTime) -> Uuid {
    action_id_in(&ACTION_IDS, at)
}

fn action_id_in(context: &Mutex<ContextV7>, at: SystemTime) -> Uuid {
    // A clock set before 1970 gives the epoch rather than failing the dispatch.
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let context = context.lock().unwrap_or_else(PoisonError::into_inner);
    let timestamp =
        Timestamp::from_unix(&*context, since_epoch.as_secs(), since_epoch.subsec_nanos());
    Uuid::new_v7(timestamp)
}

/// Matches anomalies against the map in force, applies the rails and starts the actions.
#[derive(Clone)]
pub struct Dispatcher {
    map: MapHandle,
    log: Logger,
    rails: Rails,
    history: ActionHistory,
    /// Every running action, so shutdown can wait for each 202 to get its finished record.
    tracker: TaskTracker,
    /// Fired when shutdown runs out of time: running actions stop and report `failed`.
    cancel: CancellationToken,
    /// False once shutdown waits for the tracker. Dispatch holds the read side from its check to
    /// its spawn, so no action can start after the wait began and die without its record.
    accepting: Arc<RwLock<bool>>,
    dry_run: bool,
}

impl Dispatcher {
    /// A dispatcher reading `map`, logging to `log` and running actions on `tracker`.
    pub fn new(
        map: MapHandle,
        log: Logger,
        tracker: TaskTracker,
        cancel: CancellationToken,
        dry_run: bool,
    ) -> Dispatcher {
        Dispatcher {
            map,
            log,
            rails: Rails::default(),
            history: ActionHistory::default(),
            tracker,
            cancel,
            accepting: Arc::new(RwLock::new(true)),
            dry_run,
        }
    }

    /// Stops starting actions (later anomalies get `ShuttingDown`); returns once no dispatch is
    /// between its check and its spawn, so the tracker's count is final.
    pub fn stop_accepting(&self) {
        *self.accepting.write().unwrap_or_else(|p| p.into_inner()) = false;
    }

    /// The history behind `GET /actions`.
    pub fn history(&self) -> &ActionHistory {
        &self.history
    }

    /// Matches `anomaly`; when a reflex matches and the rails admit it, writes the triggered
    /// record and starts the action.
    pub fn dispatch(&self, anomaly: Anomaly, source: Source) -> DispatchOutcome {
        let accepting = self.accepting.read().unwrap_or_else(|p| p.into_inner());
        if !*accepting {
            return DispatchOutcome::ShuttingDown;
        }
        // One load per anomaly: match, workflow and version all come from the same snapshot.
        let snapshot = self.map.load();
        let Some((reflex, workflow)) = snapshot.map.lookup(&anomaly.name) else {
            records::unmatched(&self.log, &anomaly.name, source);
            return DispatchOutcome::Unmatched;
        };
        let admitted_at = Instant::now();
        let permit = match self
            .rails
            .admit(&anomaly.name, reflex, workflow, admitted_at)
        {
            Ok(permit) => permit,
            Err(reason) => {
                records::action_suppressed(
                    &self.log,
                    &anomaly.name,
                    &workflow.name,
                    reason,
                    source,
                );
                return DispatchOutcome::Suppressed {
                    workflow: workflow.name.clone(),
                    reason,
                };
            }
        };
        let received_at = SystemTime::now();
        let run = ActionRun {
            action_id: action_id(received_at),
            anomaly: anomaly.name,
            workflow: workflow.clone(),
            details: Arc::new(anomaly.details),
            params: reflex.params.clone(),
            source,
            map_version: snapshot.version.clone(),
            dry_run: self.dry_run,
            received_at,
        };
        drop(snapshot);
        records::action_triggered(&self.log, &run);
        self.history.started(&run);
        let outcome = DispatchOutcome::Dispatched {
            workflow: run.workflow.name.clone(),
            action_id: run.action_id,
        };
        // A log-only action (or a dry run) is over as soon as it starts: finish it here rather
        // than pay for a task (issue 5).
        if let Some(report) = actions::run_at_once(&run) {
            // Over within microseconds of its admission: the same instant serves both (a
            // breaker failure may so be recorded a few microseconds early, which no window
            // measured in seconds can tell).
            self.finish(&run, permit, &report, admitted_at);
            return outcome;
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            let report = actions::run(&run, &this.cancel).await;
            this.finish(&run, permit, &report, Instant::now());
        });
        outcome
    }

    /// Releases the rails, updates the history and writes the finished record.
    fn finish(&self, run: &ActionRun, permit: Permit, report: &ActionReport, now: Instant) {
        let breaker = run.workflow.breaker;
        if let Some(opened) = self.rails.finish(permit, report.outcome, breaker, now) {
            records::circuit_opened(&self.log, &run.workflow.name, &opened);
        }
        self.history.finished(run.action_id, report);
        records::action_finished(&self.log, run, report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_starts_once_shutdown_stops_accepting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.yml");
        std::fs::write(&path, "workflows: {page: {}}\nreflexes: {a: page}\n").unwrap();
        let loaded = crate::map::load(&path, 1).unwrap();
        let map = Arc::new(arc_swap::ArcSwap::from_pointee(loaded));
        let log = Logger::root(slog::Discard, slog::o!());
        let tracker = TaskTracker::new();
        let dispatcher =
            Dispatcher::new(map, log, tracker.clone(), CancellationToken::new(), false);
        let anomaly = || Anomaly::from_json(br#"{"name":"a"}"#).unwrap();
        assert!(matches!(
            dispatcher.dispatch(anomaly(), Source::Http),
            DispatchOutcome::Dispatched { .. }
        ));
        dispatcher.stop_accepting();
        assert_eq!(
            dispatcher.dispatch(anomaly(), Source::Http),
            DispatchOutcome::ShuttingDown
        );
        tracker.close();
        tracker.wait().await;
        assert_eq!(dispatcher.history().newest(10).len(), 1);
    }

    #[test]
    fn action_ids_are_version_7_and_sort_in_dispatch_order() {
        // A context of its own: the daemon's is shared with tests dispatching in parallel.
        let context = Mutex::new(ContextV7::new());
        let action_id = |at| action_id_in(&context, at);
        let at = SystemTime::now();
        // Many in one millisecond: the context's counter keeps them in order.
        let ids: Vec<Uuid> = (0..1000).map(|_| action_id(at)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(ids[0].get_version_num(), 7);
        let millis = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let (seconds, nanos) = ids[0].get_timestamp().unwrap().to_unix();
        assert_eq!(seconds * 1000 + u64::from(nanos) / 1_000_000, millis);
        assert!(action_id(at + std::time::Duration::from_secs(1)) > ids[999]);
    }
}
