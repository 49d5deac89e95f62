//! From an anomaly to a running healing action: one snapshot of the map, one case, the safety
//! rails, one triggered record, then the action on the task tracker so shutdown can wait for it.
//! `answer` writes what the caller is told; `history` keeps the recent actions for
//! `GET /actions`; `follow_up` does what comes after an action: its verdict, its escalation,
//! and the sweeper that judges quiet verification windows and ends silences on time;
//! `silences` adds and ends the operators' silences, which are checked here after the match
//! and before every rail.

mod answer;
mod follow_up;
mod history;
mod silences;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use slog::Logger;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::{ContextV7, Timestamp, Uuid};

use crate::actions::{self, ActionId, ActionReport, ActionRun, Outcome};
use crate::anomaly::{Anomaly, Source};
use crate::log::records;
use crate::map::{MapHandle, Workflow};
use crate::rails::{Admission, Permit, Rails, Silences};

pub use answer::{Answer, DispatchOutcome};
pub use history::{ActionEntry, ActionHistory, Verdict, HISTORY_CAPACITY};

/// Orders action ids within a millisecond, as `Uuid::now_v7` does with a context of its own.
static ACTION_IDS: Mutex<ContextV7> = Mutex::new(ContextV7::new());

/// A version 7 UUID for an action dispatched `at`: unique, sorting by dispatch time, and from
/// the clock reading the action's `received_at` holds (`now_v7` would read the clock again).
fn action_id(at: SystemTime) -> ActionId {
    ActionId::new(action_id_in(&ACTION_IDS, at))
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
    /// The operators' silences, checked before the rails.
    silences: Silences,
    history: ActionHistory,
    /// Every running action, so shutdown can wait for each 202 to get its finished record.
    tracker: TaskTracker,
    /// Fired when shutdown runs out of time: running actions stop and report `failed`.
    cancel: CancellationToken,
    /// False once shutdown waits for the tracker. Dispatch holds the read side from its check to
    /// its spawn, so no action can start after the wait began and die without its record.
    accepting: Arc<RwLock<bool>>,
    dry_run: bool,
    /// Wakes the sweeper when a verification window opens that ends before any other.
    sweeper: Arc<Notify>,
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
            silences: Silences::default(),
            history: ActionHistory::default(),
            tracker,
            cancel,
            accepting: Arc::new(RwLock::new(true)),
            dry_run,
            sweeper: Arc::new(Notify::new()),
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

    /// The rail state, for the state file.
    pub fn rails(&self) -> &Rails {
        &self.rails
    }

    /// The silences in force, for `GET /silences` and the state file.
    pub fn silences(&self) -> &Silences {
        &self.silences
    }

    /// Matches `anomaly`; when a case takes it and the rails admit it, writes the triggered
    /// record and starts the action.
    pub fn dispatch(&self, anomaly: Anomaly, source: Source) -> DispatchOutcome {
        let accepting = self.accepting.read().unwrap_or_else(|p| p.into_inner());
        if !*accepting {
            return DispatchOutcome::ShuttingDown;
        }
        // One load per anomaly: match, workflow and version all come from the same snapshot.
        let snapshot = self.map.load();
        let Some(selected) = snapshot.map.select(&anomaly.name, &anomaly.details) else {
            records::unmatched(&self.log, &anomaly.name, source);
            return DispatchOutcome::Unmatched;
        };
        let (case, workflow) = (selected.case, selected.workflow);
        let admitted_at = Instant::now();
        let key = case.key_for(&anomaly.name, &anomaly.details);
        if let Some(silence_id) = self.silences.find(&anomaly.name, admitted_at) {
            // Silenced: nothing runs, but a recurrence still tells a window its remedy did
            // not hold (a silence stops actions, not the learning; SPEC §9).
            let events = self
                .rails
                .observe(&snapshot.map, selected.reflex, &key, admitted_at);
            drop(key);
            if !events.is_empty() {
                let details = Arc::new(anomaly.details);
                self.report(events, &snapshot, &anomaly.name, &details, source);
            }
            records::action_silenced(&self.log, &anomaly.name, &workflow.name, silence_id, source);
            return DispatchOutcome::Silenced {
                workflow: workflow.name.clone(),
                silence_id,
            };
        }
        let Admission { result, events } =
            self.rails
                .admit(&snapshot.map, selected, &anomaly.name, &key, admitted_at);
        drop(key);
        let permit = match result {
            Ok(permit) => permit,
            Err(reason) => {
                if !events.is_empty() {
                    let details = Arc::new(anomaly.details);
                    self.report(events, &snapshot, &anomaly.name, &details, source);
                }
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
        let details = Arc::new(anomaly.details);
        if !events.is_empty() {
            self.report(events, &snapshot, &anomaly.name, &details, source);
        }
        let received_at = SystemTime::now();
        let run = ActionRun {
            action_id: action_id(received_at),
            anomaly: anomaly.name,
            workflow: workflow.clone(),
            details,
            params: case.params.clone(),
            source,
            map_version: snapshot.version.clone(),
            dry_run: self.dry_run,
            received_at,
            escalated_from: None,
        };
        // Resolved now, from the snapshot that matched, for when the action ends.
        let escalate = snapshot.map.escalation(case).cloned();
        drop(snapshot);
        let outcome = DispatchOutcome::Dispatched {
            workflow: run.workflow.name.clone(),
            action_id: run.action_id,
        };
        self.start(run, permit, escalate, admitted_at);
        outcome
    }

    /// Writes the triggered record and runs the action: in place when it ends as it starts
    /// (log-only, or a dry run: no task to pay for, issue 5), else on the task tracker.
    fn start(
        &self,
        run: ActionRun,
        permit: Permit,
        escalate: Option<Arc<Workflow>>,
        admitted_at: Instant,
    ) {
        records::action_triggered(&self.log, &run);
        self.history.started(&run);
        if let Some(report) = actions::run_at_once(&run) {
            // Over within microseconds of its admission: the same instant serves both (a
            // breaker failure may so be recorded a few microseconds early, which no window
            // measured in seconds can tell).
            self.finish(&run, permit, &report, escalate, admitted_at);
            return;
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            let report = report_of(run_action(&run, &this.cancel)).await;
            this.finish(&run, permit, &report, escalate, Instant::now());
        });
    }

    /// Releases the rails, updates the history, writes the finished record, and escalates an
    /// action that failed or timed out when its case says so.
    fn finish(
        &self,
        run: &ActionRun,
        permit: Permit,
        report: &ActionReport,
        escalate: Option<Arc<Workflow>>,
        now: Instant,
    ) {
        let breaker = run.workflow.breaker;
        let finished =
            self.rails
                .finish(permit, report.outcome, breaker, run.action_id.uuid(), now);
        if let Some(opened) = &finished.circuit_opened {
            records::circuit_opened(&self.log, &run.workflow.name, opened);
        }
        self.history
            .finished(run.action_id.uuid(), report, finished.verifying);
        records::action_finished(&self.log, run, report);
        if let Some(overflow) = &finished.overflow {
            records::rail_state_overflow(&self.log, overflow);
        }
        if finished.wake_sweeper {
            self.sweeper.notify_one();
        }
        if report.outcome != Outcome::Ok {
            if let Some(to) = escalate {
                let limits = self.map.load().map.limits;
                self.escalate(run.into(), &to, report.outcome.as_str(), limits);
            }
        }
    }
}

/// Runs `action` to its report, turning a panic inside it into a `failed` report (SPEC §8): the
/// task then still frees the action's permit and writes its finished record, which a task that
/// unwound would lose, leaving the workflow held `in_flight` for good.
async fn report_of(action: impl Future<Output = ActionReport>) -> ActionReport {
    let started = Instant::now();
    let mut action = std::pin::pin!(action);
    // Each poll runs inside `catch_unwind`; after a panic the future is never polled again,
    // only dropped, so no broken state of it is ever observed.
    let caught = std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| action.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(report)) => Poll::Ready(Ok(report)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    })
    .await;
    caught.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        ActionReport::failed(started.elapsed(), format!("the action panicked: {message}"))
    })
}

/// The action's run. Tests can make one panic: a workflow named `PANICKING_WORKFLOW` does.
async fn run_action(run: &ActionRun, cancel: &CancellationToken) -> ActionReport {
    #[cfg(test)]
    if &*run.workflow.name == tests::PANICKING_WORKFLOW {
        panic!("a test made this action panic");
    }
    actions::run(run, cancel).await
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

    /// The workflow whose action `run_action` makes panic.
    pub const PANICKING_WORKFLOW: &str = "panics";

    /// Collects the `healing action finished` records a logger writes, as JSON.
    #[derive(Clone, Default)]
    struct Finished(Arc<Mutex<Vec<serde_json::Value>>>);

    impl slog::Drain for Finished {
        type Ok = ();
        type Err = slog::Never;
        fn log(
            &self,
            record: &slog::Record,
            values: &slog::OwnedKVList,
        ) -> Result<(), slog::Never> {
            let line = crate::log::json::with_line(record, values, |line| {
                serde_json::from_slice::<serde_json::Value>(line)
            });
            if let Ok(line @ serde_json::Value::Object(_)) = line {
                if line["msg"] == "healing action finished" {
                    self.0.lock().unwrap().push(line);
                }
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_action_that_panics_ends_failed_with_its_record_and_frees_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.yml");
        // A webhook: it runs on the tracker (log-only actions finish in place), and at most one
        // runs at a time (`max_concurrent` 1), so a leaked slot would suppress the second.
        let map = format!(
            "workflows: {{{PANICKING_WORKFLOW}: {{webhook: {{url: 'http://127.0.0.1:9/'}}}}}}\n\
             reflexes: {{a: {PANICKING_WORKFLOW}}}\n"
        );
        std::fs::write(&path, map).unwrap();
        let loaded = crate::map::load(&path, 1).unwrap();
        let map = Arc::new(arc_swap::ArcSwap::from_pointee(loaded));
        let finished = Finished::default();
        let log = Logger::root(slog::Fuse(finished.clone()), slog::o!());
        let tracker = TaskTracker::new();
        let dispatcher =
            Dispatcher::new(map, log, tracker.clone(), CancellationToken::new(), false);
        let anomaly = || Anomaly::from_json(br#"{"name":"a"}"#).unwrap();
        for round in 1..=2 {
            let outcome = dispatcher.dispatch(anomaly(), Source::Http);
            let DispatchOutcome::Dispatched { action_id, .. } = outcome else {
                panic!("round {round}: the in-flight slot was not freed: {outcome:?}");
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), async {
                while dispatcher.history().newest(1)[0].outcome == "running" {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the action ends");
            let entry = &dispatcher.history().newest(1)[0];
            assert_eq!(
                (entry.action_id, entry.outcome),
                (action_id.uuid(), "failed")
            );
            let error = "the action panicked: a test made this action panic";
            assert_eq!(entry.error.as_deref(), Some(error));
            let records = finished.0.lock().unwrap().clone();
            assert_eq!(records.len(), round);
            assert_eq!(records[round - 1]["action_id"], action_id.as_str());
            assert_eq!(records[round - 1]["outcome"], "failed");
            assert_eq!(records[round - 1]["error"], error);
        }
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn a_report_passes_through_and_a_panic_of_any_payload_becomes_failed() {
        let ok = ActionReport::new(crate::actions::Outcome::Ok, Default::default(), None);
        let report = report_of(async { ok }).await;
        assert_eq!(report.outcome, crate::actions::Outcome::Ok);
        let report = report_of(async {
            tokio::task::yield_now().await;
            std::panic::panic_any(42_u8)
        })
        .await;
        assert_eq!(report.outcome, crate::actions::Outcome::Failed);
        assert_eq!(
            report.error.as_deref(),
            Some("the action panicked: no message")
        );
    }

    /// A dispatcher on `text`, logging nowhere.
    fn dispatcher_on(dir: &tempfile::TempDir, text: &str) -> Dispatcher {
        let path = dir.path().join("map.yml");
        std::fs::write(&path, text).unwrap();
        let loaded = crate::map::load(&path, 1).unwrap();
        let map = Arc::new(arc_swap::ArcSwap::from_pointee(loaded));
        let log = Logger::root(slog::Discard, slog::o!());
        Dispatcher::new(
            map,
            log,
            TaskTracker::new(),
            CancellationToken::new(),
            false,
        )
    }

    fn verdict(dispatcher: &Dispatcher, action_id: Uuid) -> Option<&'static str> {
        let entries = dispatcher.history().newest(HISTORY_CAPACITY);
        entries.iter().find(|e| e.action_id == action_id)?.verdict
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_judges_a_quiet_window_exactly_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let dispatcher = dispatcher_on(
            &dir,
            "workflows: {page: {}}\nreflexes: {a: {workflow: page, verify: 10m}}\n",
        );
        let sweeper = dispatcher.spawn_sweeper();
        let start = Instant::now();
        let anomaly = Anomaly::from_json(br#"{"name":"a"}"#).unwrap();
        let DispatchOutcome::Dispatched { action_id, .. } =
            dispatcher.dispatch(anomaly, Source::Http)
        else {
            panic!("dispatched");
        };
        let action_id = action_id.uuid();
        assert_eq!(verdict(&dispatcher, action_id), Some("pending"));
        let end = start + std::time::Duration::from_secs(600);
        tokio::time::sleep_until(end - std::time::Duration::from_millis(1)).await;
        assert_eq!(verdict(&dispatcher, action_id), Some("pending"));
        tokio::time::sleep_until(end).await;
        // The sweeper wakes at the same instant; let it run.
        for _ in 0..10 {
            if verdict(&dispatcher, action_id) == Some("healed") {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(verdict(&dispatcher, action_id), Some("healed"));
        sweeper.abort();
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
