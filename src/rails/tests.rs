//! The rails on maps compiled as the daemon compiles them, with tokio's clock paused so every
//! boundary is exact.

use std::path::Path;

use super::*;
use crate::anomaly::Details;

fn compile(yaml: &str) -> ReflexMap {
    crate::map::compile(Path::new("map.yml"), yaml).unwrap()
}

/// Asks the rails about `name` with its name as the key, as a reflex without `cooldown_key` does.
fn admit(rails: &Rails, map: &ReflexMap, name: &str, now: Instant) -> Admission {
    admit_key(rails, map, name, name, now)
}

fn admit_key(rails: &Rails, map: &ReflexMap, name: &str, key: &str, now: Instant) -> Admission {
    let details = Details::empty();
    let selected = map.select(name, &details).expect("a reflex matches");
    rails.admit(map, selected, &Arc::from(name), key, now)
}

fn reason(admission: Admission) -> SuppressReason {
    admission.result.expect_err("held back")
}

fn permit(admission: Admission) -> Permit {
    admission.result.expect("admitted")
}

fn finish(
    rails: &Rails,
    map: &ReflexMap,
    permit: Permit,
    outcome: Outcome,
    now: Instant,
) -> Finished {
    let breaker = map.workflows.get(&*permit.workflow).and_then(|w| w.breaker);
    rails.finish(permit, outcome, breaker, Uuid::nil(), now)
}

const EXEC: &str = "{exec: {command: ['true']}, max_concurrent: 100}";

#[tokio::test(start_paused = true)]
async fn cooldown_holds_back_the_same_key_only() {
    let map = compile(&format!(
        "workflows: {{w: {EXEC}}}\nreflexes: {{'a.*': {{workflow: w, cooldown: 1m}}}}\n"
    ));
    let rails = Rails::default();
    let now = Instant::now();
    permit(admit(&rails, &map, "a.x", now));
    assert_eq!(
        reason(admit(&rails, &map, "a.x", now)),
        SuppressReason::Cooldown
    );
    permit(admit(&rails, &map, "a.y", now));
    let later = now + Duration::from_secs(60);
    permit(admit(&rails, &map, "a.x", later));
}

#[tokio::test(start_paused = true)]
async fn a_reflex_without_cooldown_or_verify_keeps_no_keys() {
    let map = compile("workflows: {page: {}}\nreflexes: {'a.*': page}\n");
    let rails = Rails::default();
    for i in 0..100 {
        permit(admit(&rails, &map, &format!("a.{i}"), Instant::now()));
    }
    assert!(rails.lock().keys.by_reflex.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_new_keys_shares_one_cooldown_and_is_reported_once_a_minute() {
    let map = compile("workflows: {page: {}}\nreflexes: {'a.*': {workflow: page, cooldown: 1h}}\n");
    let rails = Rails::default();
    let start = Instant::now();
    for i in 0..MAX_KEYS_PER_REFLEX {
        let admission = admit(&rails, &map, &format!("a.{i}"), start);
        assert!(admission.events.is_empty());
        permit(admission);
    }
    // Full: the first new key is let through and starts the shared cooldown...
    let first = admit(&rails, &map, "a.new1", start);
    assert_eq!(
        first.events.overflow,
        Some(Overflow {
            reflex: Arc::from("a.*"),
            max_keys: MAX_KEYS_PER_REFLEX,
        })
    );
    permit(first);
    // ...which holds back every other new key, reported again only after a minute.
    let second = admit(&rails, &map, "a.new2", start + Duration::from_secs(59));
    assert_eq!(second.events.overflow, None);
    assert_eq!(reason(second), SuppressReason::Cooldown);
    let third = admit(&rails, &map, "a.new3", start + Duration::from_secs(60));
    assert!(third.events.overflow.is_some());
    assert_eq!(reason(third), SuppressReason::Cooldown);
    // The keys that fit are still remembered, and the table holds no more than its bound.
    assert_eq!(
        reason(admit(&rails, &map, "a.0", start)),
        SuppressReason::Cooldown
    );
    assert_eq!(
        rails.lock().keys.by_reflex["a.*"].keys.len(),
        MAX_KEYS_PER_REFLEX
    );
    // Once the cooldowns are over, the entries are idle and leave as new keys come.
    let later = start + Duration::from_secs(3600);
    let admission = admit(&rails, &map, "a.fresh", later);
    assert!(admission.events.is_empty());
    permit(admission);
    assert_eq!(rails.lock().keys.by_reflex["a.*"].keys.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn housekeeping_forgets_idle_keys_and_empty_tables() {
    let map = compile("workflows: {page: {}}\nreflexes: {'a.*': {workflow: page, cooldown: 1s}}\n");
    let rails = Rails::default();
    let now = Instant::now();
    for i in 0..10 {
        permit(admit(&rails, &map, &format!("a.{i}"), now));
    }
    rails.sweep(now, true);
    assert_eq!(rails.lock().keys.by_reflex["a.*"].keys.len(), 10);
    rails.sweep(now + Duration::from_secs(1), true);
    assert!(rails.lock().keys.by_reflex.is_empty());
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_bounds_runs_in_flight() {
    let map = compile(
        "workflows: {w: {exec: {command: ['true']}, max_concurrent: 2}}\nreflexes: {'a.*': w}\n",
    );
    let rails = Rails::default();
    let now = Instant::now();
    let first = permit(admit(&rails, &map, "a.1", now));
    let _second = permit(admit(&rails, &map, "a.2", now));
    assert_eq!(
        reason(admit(&rails, &map, "a.3", now)),
        SuppressReason::InFlight
    );
    finish(&rails, &map, first, Outcome::Ok, now);
    assert_eq!(rails.in_flight("w"), 1);
    permit(admit(&rails, &map, "a.3", now));
}

#[tokio::test(start_paused = true)]
async fn log_only_workflows_are_never_held_in_flight() {
    let map = compile("workflows: {log: {}}\nreflexes: {'a.*': log}\n");
    let rails = Rails::default();
    let now = Instant::now();
    let _a = permit(admit(&rails, &map, "a.1", now));
    let _b = permit(admit(&rails, &map, "a.1", now));
    assert_eq!(rails.in_flight("log"), 0);
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_after_failures_within_the_window_and_closes_after_it() {
    let map = compile(
        "workflows:\n  w: {exec: {command: ['true']}, max_concurrent: 10, breaker: {failures: 3, within: 10m}}\nreflexes: {'a.*': w}\n",
    );
    let rails = Rails::default();
    let start = Instant::now();
    for i in 0..2 {
        let at = start + Duration::from_secs(60 * i);
        let run = permit(admit(&rails, &map, "a.x", at));
        assert_eq!(
            finish(&rails, &map, run, Outcome::Failed, at).circuit_opened,
            None
        );
    }
    let at = start + Duration::from_secs(120);
    let run = permit(admit(&rails, &map, "a.x", at));
    let opened = finish(&rails, &map, run, Outcome::Timeout, at)
        .circuit_opened
        .unwrap();
    assert_eq!(opened.failures, 3);
    assert_eq!(opened.open_for, Duration::from_secs(600 - 120));
    let almost = start + Duration::from_secs(600) - Duration::from_nanos(1);
    assert_eq!(
        reason(admit(&rails, &map, "a.x", almost)),
        SuppressReason::CircuitOpen
    );
    permit(admit(&rails, &map, "a.x", start + Duration::from_secs(600)));
}

#[tokio::test(start_paused = true)]
async fn failures_outside_the_window_do_not_count() {
    let map = compile(
        "workflows:\n  w: {exec: {command: ['true']}, max_concurrent: 10, breaker: {failures: 2, within: 10s}}\nreflexes: {'a.*': w}\n",
    );
    let rails = Rails::default();
    let start = Instant::now();
    let run = permit(admit(&rails, &map, "a.x", start));
    finish(&rails, &map, run, Outcome::Failed, start);
    let later = start + Duration::from_secs(11);
    let run = permit(admit(&rails, &map, "a.x", later));
    assert_eq!(
        finish(&rails, &map, run, Outcome::Failed, later).circuit_opened,
        None
    );
    let run = permit(admit(&rails, &map, "a.x", later));
    assert!(finish(&rails, &map, run, Outcome::Ok, later)
        .circuit_opened
        .is_none());
}

const VERIFYING: &str = "workflows:\n  restart: {exec: {command: ['true']}, breaker: {failures: 1, within: 1h}}\n  page: {}\nreflexes:\n  'nginx.*.down': {workflow: restart, verify: 10m, escalate: page}\n";

/// Runs `name` through the verifying map to an `ok` finish at `at`.
fn healed_once(rails: &Rails, map: &ReflexMap, name: &str, at: Instant) {
    let run = permit(admit(rails, map, name, at));
    assert!(run.verifies());
    let finished = finish(rails, map, run, Outcome::Ok, at);
    assert!(finished.verifying);
}

#[tokio::test(start_paused = true)]
async fn a_recurrence_inside_the_window_is_not_healed_and_counts_against_the_breaker() {
    let map = compile(VERIFYING);
    let rails = Rails::default();
    let start = Instant::now();
    healed_once(&rails, &map, "nginx.web1.down", start);
    assert_eq!(
        rails.next_deadline(),
        Some(start + Duration::from_secs(600))
    );
    // Another key of the same reflex is not a recurrence.
    let other = admit(
        &rails,
        &map,
        "nginx.web2.down",
        start + Duration::from_secs(1),
    );
    assert!(other.events.not_healed.is_empty());
    finish(&rails, &map, permit(other), Outcome::Failed, start);
    let almost = start + Duration::from_secs(600) - Duration::from_nanos(1);
    // The breaker opened on web2's failure; the recurrence is judged all the same.
    let recurred = admit(&rails, &map, "nginx.web1.down", almost);
    let not_healed = &recurred.events.not_healed;
    assert_eq!(not_healed.len(), 1);
    assert_eq!(&*not_healed[0].workflow, "restart");
    assert_eq!(not_healed[0].escalate.as_deref(), Some("page"));
    assert_eq!(
        not_healed[0].recurred_after,
        Duration::from_secs(600) - Duration::from_nanos(1)
    );
    assert_eq!(reason(recurred), SuppressReason::CircuitOpen);
    assert_eq!(rails.next_deadline(), None, "the window is closed");
}

#[tokio::test(start_paused = true)]
async fn a_not_healed_verdict_opens_the_breaker_before_the_new_run_is_admitted() {
    let map = compile(VERIFYING);
    let rails = Rails::default();
    let start = Instant::now();
    healed_once(&rails, &map, "nginx.web1.down", start);
    let recurred = admit(
        &rails,
        &map,
        "nginx.web1.down",
        start + Duration::from_secs(5),
    );
    assert_eq!(recurred.events.not_healed.len(), 1);
    assert_eq!(recurred.events.circuits_opened.len(), 1);
    assert_eq!(&*recurred.events.circuits_opened[0].0, "restart");
    assert_eq!(reason(recurred), SuppressReason::CircuitOpen);
}

#[tokio::test(start_paused = true)]
async fn a_recurrence_exactly_at_the_windows_end_is_after_it() {
    let map = compile(VERIFYING);
    let rails = Rails::default();
    let start = Instant::now();
    healed_once(&rails, &map, "nginx.web1.down", start);
    let end = start + Duration::from_secs(600);
    let arrival = admit(&rails, &map, "nginx.web1.down", end);
    assert!(arrival.events.not_healed.is_empty());
    assert_eq!(arrival.events.verified.len(), 1);
    assert_eq!(arrival.events.verified[0].by, VerifiedBy::QuietWindow);
    permit(arrival);
    assert!(
        rails.sweep(end, false).is_empty(),
        "judged once, not again by the sweeper"
    );
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_judges_a_quiet_window_at_its_end() {
    let map = compile(VERIFYING);
    let rails = Rails::default();
    let start = Instant::now();
    healed_once(&rails, &map, "nginx.web1.down", start);
    let end = start + Duration::from_secs(600);
    assert!(rails.sweep(end - Duration::from_nanos(1), false).is_empty());
    let verified = rails.sweep(end, false);
    assert_eq!(verified.len(), 1);
    assert_eq!(&*verified[0].anomaly, "nginx.web1.down");
    assert_eq!(verified[0].by, VerifiedBy::QuietWindow);
    assert_eq!(rails.next_deadline(), None);
    // The key is free: a later arrival is a new problem, not a recurrence.
    let later = admit(&rails, &map, "nginx.web1.down", end);
    assert!(later.events.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_resolved_alert_heals_its_windows_only() {
    let map = compile(VERIFYING);
    let rails = Rails::default();
    let start = Instant::now();
    healed_once(&rails, &map, "nginx.web1.down", start);
    assert!(rails
        .resolve("nginx.*.down", "nginx.web1.down", "nginx.web9.down")
        .is_empty());
    let verified = rails.resolve("nginx.*.down", "nginx.web1.down", "nginx.web1.down");
    assert_eq!(verified.len(), 1);
    assert_eq!(verified[0].by, VerifiedBy::Resolved);
    assert!(rails
        .sweep(start + Duration::from_secs(600), false)
        .is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_opens_no_window() {
    let map = compile(VERIFYING);
    let rails = Rails::default();
    let now = Instant::now();
    let run = permit(admit(&rails, &map, "nginx.web1.down", now));
    let finished = finish(&rails, &map, run, Outcome::Failed, now);
    assert!(!finished.verifying);
    assert_eq!(rails.next_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn escalations_skip_the_cooldown_but_not_the_breaker_or_budget() {
    let map = compile(
        "limits: {actions: {max: 1, within: 1m}}\nworkflows:\n  fix: {exec: {command: ['true']}, max_concurrent: 5, breaker: {failures: 1, within: 1h}}\nreflexes: {'a.*': {workflow: fix, cooldown: 1h}}\n",
    );
    let fix = &map.workflows["fix"];
    let rails = Rails::default();
    let now = Instant::now();
    let run = permit(admit(&rails, &map, "a.x", now));
    assert_eq!(
        reason(admit(&rails, &map, "a.x", now)),
        SuppressReason::Cooldown
    );
    // The budget of one is spent.
    let escalation = rails.admit_escalation(fix, map.limits, now);
    assert!(escalation.events.budget_exhausted.is_some());
    assert_eq!(reason(escalation), SuppressReason::Budget);
    let later = now + Duration::from_secs(60);
    let escalation = permit(rails.admit_escalation(fix, map.limits, later));
    finish(&rails, &map, escalation, Outcome::Failed, later);
    assert_eq!(
        reason(rails.admit_escalation(fix, map.limits, later)),
        SuppressReason::CircuitOpen
    );
    finish(&rails, &map, run, Outcome::Ok, later);
}

#[tokio::test(start_paused = true)]
async fn the_budget_counts_exec_and_webhook_runs_only_and_trips_once() {
    let map = compile(
        "limits: {actions: {max: 2, within: 1m}}\nworkflows:\n  fix: {exec: {command: ['true']}, max_concurrent: 10}\n  page: {}\nreflexes: {'a.*': fix, 'p.*': page}\n",
    );
    let rails = Rails::default();
    let budget = map.limits.actions.unwrap();
    let start = Instant::now();
    for i in 0..2 {
        permit(admit(&rails, &map, &format!("a.{i}"), start));
    }
    for i in 0..5 {
        permit(admit(&rails, &map, &format!("p.{i}"), start));
    }
    assert_eq!(rails.budget_remaining(budget, start), 0);
    let tripped = admit(&rails, &map, "a.2", start);
    assert_eq!(
        tripped.events.budget_exhausted,
        Some(BudgetExhausted {
            max: 2,
            within: Duration::from_secs(60),
            open_for: Duration::from_secs(60),
        })
    );
    assert_eq!(reason(tripped), SuppressReason::Budget);
    let again = admit(&rails, &map, "a.3", start + Duration::from_secs(30));
    assert!(again.events.budget_exhausted.is_none());
    assert_eq!(reason(again), SuppressReason::Budget);
    assert_eq!(rails.in_flight("fix"), 2, "a refused run holds no slot");
    let rolled = start + Duration::from_secs(60);
    assert_eq!(rails.budget_remaining(budget, rolled), 2);
    permit(admit(&rails, &map, "a.4", rolled));
}

/// The rails' state written at `written` and read back into new rails `later` on both clocks.
fn restart(rails: &Rails, written: state::Clock, later: Duration) -> Rails {
    use state::Persisted;
    let saved = rails.save(&written).unwrap();
    let restored = Rails::default();
    let clock = state::Clock {
        instant: written.instant + later,
        wall_ms: written.wall_ms + later.as_millis() as u64,
    };
    restored.restore(&saved, &clock).unwrap();
    restored
}

#[tokio::test(start_paused = true)]
async fn cooldowns_breakers_windows_and_the_budget_survive_a_restart() {
    use state::Persisted;
    let map = compile(
        "limits: {actions: {max: 3, within: 1h}}\nworkflows:\n  restart: {exec: {command: ['true']}, max_concurrent: 9, breaker: {failures: 1, within: 1h}}\n  fix: {exec: {command: ['true']}, max_concurrent: 9, breaker: {failures: 1, within: 1h}}\n  page: {}\nreflexes:\n  'nginx.*.down': {workflow: restart, verify: 10m, escalate: page}\n  'disk.*': {workflow: fix, cooldown: 5m}\n",
    );
    let rails = Rails::default();
    let start = Instant::now();
    assert!(!rails.take_changed());
    healed_once(&rails, &map, "nginx.web1.down", start);
    permit(admit(&rails, &map, "disk.a", start)); // the budget's second action
    let failing = permit(admit(&rails, &map, "disk.b", start));
    assert!(finish(&rails, &map, failing, Outcome::Failed, start)
        .circuit_opened
        .is_some());
    assert!(rails.take_changed());
    let written = state::Clock::now();

    // Back a minute later: every kind of state still holds.
    let back = restart(&rails, written, Duration::from_secs(60));
    let now = start + Duration::from_secs(60);
    assert_eq!(
        reason(admit(&back, &map, "disk.a", now)),
        SuppressReason::Cooldown
    );
    assert_eq!(
        reason(admit(&back, &map, "disk.c", now)),
        SuppressReason::CircuitOpen
    );
    assert_eq!(back.next_deadline(), Some(start + Duration::from_secs(600)));
    assert_eq!(
        back.budget_remaining(map.limits.actions.unwrap(), now),
        0,
        "three actions were spent"
    );
    let recurred = admit(&back, &map, "nginx.web1.down", now);
    assert_eq!(recurred.events.not_healed.len(), 1);
    assert_eq!(
        recurred.events.not_healed[0].recurred_after,
        Duration::from_secs(60)
    );
    assert_eq!(
        recurred.events.not_healed[0].escalate.as_deref(),
        Some("page")
    );
    assert_eq!(reason(recurred), SuppressReason::CircuitOpen);

    // Back an hour later: it has all run out, and nothing is resurrected.
    let late = restart(&rails, written, Duration::from_secs(3601));
    let now = start + Duration::from_secs(3601);
    assert!(late.lock().breakers.by_workflow.is_empty());
    assert_eq!(late.budget_remaining(map.limits.actions.unwrap(), now), 3);
    assert!(late.lock().keys.get("disk.*").is_none());
    // The window ended while the daemon was down: due now, healed by the next sweep.
    assert_eq!(late.next_deadline(), Some(now));
    let verified = late.sweep(now, false);
    assert_eq!(verified.len(), 1);
    assert_eq!(verified[0].by, VerifiedBy::QuietWindow);
    permit(admit(&late, &map, "disk.a", now));
}

#[tokio::test(start_paused = true)]
async fn a_clock_stepped_back_cannot_stretch_a_cooldown() {
    use state::Persisted;
    let map = compile("workflows: {page: {}}\nreflexes: {'a.*': {workflow: page, cooldown: 5m}}\n");
    let rails = Rails::default();
    let start = Instant::now();
    permit(admit(&rails, &map, "a.x", start));
    let written = state::Clock::now();
    let saved = rails.save(&written).unwrap();
    // Read back with the wall clock a day behind the file: the cooldown keeps its 5 minutes.
    let back = Rails::default();
    let stepped_back = state::Clock {
        wall_ms: written.wall_ms - 86_400_000,
        ..written
    };
    back.restore(&saved, &stepped_back.at_least(written.wall_ms))
        .unwrap();
    let cooling_until = back
        .lock()
        .keys
        .get("a.*")
        .unwrap()
        .peek(Some("a.x"))
        .unwrap()
        .cooldown_until;
    assert_eq!(cooling_until, Some(start + Duration::from_secs(300)));
    // A file that is not the rails' is refused whole, leaving the state as it was.
    let bad = serde_json::value::RawValue::from_string(r#"{"keys": 5}"#.into()).unwrap();
    assert!(back
        .restore(&bad, &written)
        .unwrap_err()
        .starts_with("invalid type: integer `5`"));
    assert!(back.lock().keys.get("a.*").is_some());
}
