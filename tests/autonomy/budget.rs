//! The global budget (SPEC §9 "Budget"): exec and webhook actions across all workflows, log-only
//! free, one record per trip, a window that rolls over, and the gauge.

use serde_json::json;

use super::{answer, dispatch, finished, metric, suppressed};
use crate::util::{wait_until, Daemon, MapDir, Receiver};

#[test]
fn the_budget_caps_exec_and_webhook_actions_and_rolls_over() {
    let hook = Receiver::start(&[]);
    let map = MapDir::new(&format!(
        "limits:\n  actions: {{max: 2, within: 2s}}\nworkflows:\n  fix: {{exec: {{command: ['true']}}, max_concurrent: 10}}\n  hook: {{webhook: {{url: '{}'}}, max_concurrent: 10}}\n  page: {{}}\nreflexes:\n  'fix.*': fix\n  'hook.*': hook\n  'page.*': page\n",
        hook.url("/heal")
    ));
    let daemon = Daemon::start(&map.path(), &[]);
    assert_eq!(
        metric(&daemon, "autohealer_budget_remaining").as_deref(),
        Some("2")
    );
    let spent = [
        dispatch(&daemon, "fix.a", json!({})),
        dispatch(&daemon, "hook.a", json!({})),
    ];
    // Spent, across both workflows; log-only actions are free.
    suppressed(&daemon, "fix.b", json!({}), "budget");
    suppressed(&daemon, "hook.b", json!({}), "budget");
    dispatch(&daemon, "page.a", json!({}));
    assert_eq!(
        metric(&daemon, "autohealer_budget_remaining").as_deref(),
        Some("0")
    );
    let exhausted = daemon.wait_for_record("budget exhausted", |_| true);
    assert_eq!(exhausted["level"], "CRIT");
    assert_eq!(exhausted["max"], 2);
    assert_eq!(exhausted["within"], "2s");
    assert!(
        exhausted["until"].as_str().unwrap().ends_with('Z'),
        "{exhausted}"
    );
    let held = daemon.wait_for_record("healing action suppressed", |r| r["anomaly"] == "hook.b");
    assert_eq!(held["reason"], "budget");
    for id in &spent {
        assert_eq!(finished(&daemon, id)["outcome"], "ok");
    }
    assert_eq!(hook.requests().len(), 1);

    // The window rolls over: the gauge, read at each scrape, says so without an action.
    wait_until("the budget to roll over", || {
        metric(&daemon, "autohealer_budget_remaining").as_deref() == Some("2")
    });
    dispatch(&daemon, "fix.c", json!({}));
    dispatch(&daemon, "fix.d", json!({}));
    let body = answer(&daemon, "fix.e", json!({}));
    assert_eq!(body["reason"], "budget", "{body}");
    // One record per trip: two trips, two records, however many were held back.
    wait_until("the second trip's record", || {
        daemon.records_with("budget exhausted").len() == 2
    });
    assert_eq!(
        daemon
            .records_with("healing action suppressed")
            .iter()
            .filter(|r| r["reason"] == "budget")
            .count(),
        3
    );
}

#[test]
fn without_limits_there_is_no_budget_gauge() {
    let map = MapDir::new("workflows: {page: {}}\nreflexes: {a: page}\n");
    let daemon = Daemon::start(&map.path(), &[]);
    assert_eq!(metric(&daemon, "autohealer_budget_remaining"), None);
}
