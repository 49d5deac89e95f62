//! Prometheus metrics (SPEC §6): one registry, bumped by the record functions in `records` and
//! encoded in the Prometheus text format for `GET /metrics`.
//!
//! A metric moves exactly when its log record is written, so the two never disagree (style: one
//! function per record, which also bumps the record's metric). The metrics live in one
//! process-wide `Metrics`, reached through `global()`, as vector's internal events reach their
//! recorder: the record functions keep their signatures and every caller gets metrics for free.
//!
//! Label cardinality is bounded by construction: the anomaly name is never a label (monitors can
//! invent names without limit); `source`, `result`, `action`, `outcome` take a handful of fixed
//! values; `workflow` takes the names declared in the reflex map, which the operator controls.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::actions::Outcome;
use crate::anomaly::Source;

/// The `Content-Type` of `GET /metrics`: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the action duration buckets, in seconds: from a log-only action (well under a
/// millisecond) to an exec or webhook that runs into a generous timeout.
const ACTION_DURATION_BUCKETS_SECONDS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// What became of one received anomaly, as the `result` label of
/// `autohealer_anomalies_received_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A reflex matched and its action started.
    Dispatched,
    /// No reflex matched.
    Unmatched,
    /// A reflex matched but a safety rail held the action back.
    Suppressed,
    /// Alertmanager re-sent an alert that was already acted on.
    Duplicate,
    /// Alertmanager reported an alert as resolved; nothing runs.
    Resolved,
    /// An alert in a valid payload could not become an anomaly (e.g. it has no name).
    Invalid,
}

impl Received {
    const ALL: [Received; 6] = [
        Received::Dispatched,
        Received::Unmatched,
        Received::Suppressed,
        Received::Duplicate,
        Received::Resolved,
        Received::Invalid,
    ];

    /// The label value.
    fn as_str(self) -> &'static str {
        match self {
            Received::Dispatched => "dispatched",
            Received::Unmatched => "unmatched",
            Received::Suppressed => "suppressed",
            Received::Duplicate => "duplicate",
            Received::Resolved => "resolved",
            Received::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReceivedLabels {
    source: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabels {
    workflow: Arc<str>,
    action: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WorkflowLabels {
    workflow: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerifiedLabels {
    workflow: Arc<str>,
    verdict: &'static str,
}

/// Reads a gauge's value at scrape time: `None` while it has nothing to say.
type GaugeSource = Box<dyn Fn() -> Option<i64> + Send + Sync>;

/// A gauge read from the daemon's state when scraped, so it is never stale while time moves
/// on with no event (a budget window rolling over, a silence running out); absent while its
/// source answers `None`. `autohealer_budget_remaining` and `autohealer_silences_active`.
#[derive(Clone)]
struct ScrapedGauge {
    name: &'static str,
    help: &'static str,
    source: Arc<RwLock<Option<GaugeSource>>>,
}

impl ScrapedGauge {
    fn new(name: &'static str, help: &'static str) -> ScrapedGauge {
        ScrapedGauge {
            name,
            help,
            source: Arc::default(),
        }
    }

    fn watch(&self, read: GaugeSource) {
        *self.source.write().unwrap_or_else(PoisonError::into_inner) = Some(read);
    }
}

impl fmt::Debug for ScrapedGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl Collector for ScrapedGauge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let source = self.source.read().unwrap_or_else(PoisonError::into_inner);
        let Some(value) = source.as_ref().and_then(|read| read()) else {
            return Ok(());
        };
        let gauge = ConstGauge::new(value);
        let metric = encoder.encode_descriptor(self.name, self.help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// One workflow's series of `autohealer_actions_total` (by outcome, in `Outcome` order) and
/// `autohealer_action_duration_seconds`, looked up once per workflow and action kind so a
/// finished action updates them with one lookup by name instead of one per label set.
#[derive(Debug, Clone)]
struct WorkflowSeries {
    action: &'static str,
    finished: [Counter; 3],
    duration: Histogram,
}

/// Every metric the daemon exports, registered once in `registry`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    anomalies_received: Family<ReceivedLabels, Counter>,
    /// The series of `anomalies_received` that exist, by `Source` and `Received`, so counting
    /// one is an increment rather than a label lookup.
    received: [[Option<Counter>; Received::ALL.len()]; 2],
    // `workflow` labels come only from names declared in a loaded map; a workflow renamed away
    // keeps its series until restart, so the count is bounded by the names the operator wrote.
    actions: Family<ActionLabels, Counter>,
    action_duration: HistogramFamily<WorkflowLabels>,
    /// Each workflow's series of the two above, by name; as bounded as their labels. The names
    /// come from the operator's map, not from callers, so no flood-resistant hash is needed:
    /// foldhash saves the ~350 instructions SipHash cost per finished action (callgrind).
    workflow_series: RwLock<HashMap<Arc<str>, WorkflowSeries, foldhash::fast::RandomState>>,
    actions_in_flight: Gauge,
    config_reloads: Family<ReloadLabels, Counter>,
    config_last_reload_successful: Gauge,
    config_last_reload_success_timestamp: Gauge<f64, AtomicU64>,
    reflexes: Gauge,
    // `workflow` as in `actions`; `verdict` is `healed` or `not_healed`.
    actions_verified: Family<VerifiedLabels, Counter>,
    budget_remaining: ScrapedGauge,
    silences_active: ScrapedGauge,
    audit_write_errors: Counter,
}

impl Metrics {
    /// A fresh set of metrics, every counter at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("autohealer");
        let r = &mut registry;
        let mut metrics = Metrics {
            received: Default::default(),
            workflow_series: RwLock::default(),
            anomalies_received: register(
                r,
                "anomalies_received",
                "Anomalies received, by where they came from and what became of them",
                Family::default(),
            ),
            actions: register(
                r,
                "actions",
                "Healing actions finished, by workflow, kind of action and outcome",
                Family::default(),
            ),
            action_duration: register(
                r,
                "action_duration_seconds",
                "How long healing actions ran, by workflow",
                Family::new_with_constructor(|| Histogram::new(ACTION_DURATION_BUCKETS_SECONDS)),
            ),
            actions_in_flight: register(
                r,
                "actions_in_flight",
                "Healing actions triggered and not yet finished",
                Gauge::default(),
            ),
            config_reloads: register(
                r,
                "config_reloads",
                "Reflex map loads (the startup load included) and rejected reloads, by result",
                Family::default(),
            ),
            config_last_reload_successful: register(
                r,
                "config_last_reload_successful",
                "1 when the last reload attempt left the file's content in force, 0 when it was rejected",
                Gauge::default(),
            ),
            config_last_reload_success_timestamp: register(
                r,
                "config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful reflex map load",
                Gauge::default(),
            ),
            reflexes: register(r, "reflexes", "Reflexes in the map in force", Gauge::default()),
            actions_verified: register(
                r,
                "actions_verified",
                "Healing actions judged after their verify window, by workflow and verdict",
                Family::default(),
            ),
            budget_remaining: ScrapedGauge::new(
                "budget_remaining",
                "Exec and webhook actions the global budget (limits.actions) allows now",
            ),
            silences_active: ScrapedGauge::new(
                "silences_active",
                "Silences in force: anomalies they cover run nothing",
            ),
            audit_write_errors: register(
                r,
                "audit_write_errors",
                "Writes and syncs of the audit log that failed (disk full, I/O error); the records still reached stderr",
                Counter::default(),
            ),
            registry,
        };
        for gauge in [&metrics.budget_remaining, &metrics.silences_active] {
            metrics.registry.register_collector(Box::new(gauge.clone()));
        }

        // Series that exist from the start, so rate() and absent() work before the first event.
        for source in [Source::Http, Source::Alertmanager] {
            for result in Received::ALL {
                // Only Alertmanager's alerts can be duplicates, resolved or invalid.
                let alerts_only = matches!(
                    result,
                    Received::Duplicate | Received::Resolved | Received::Invalid
                );
                if alerts_only && source != Source::Alertmanager {
                    continue;
                }
                metrics.received[source as usize][result as usize] =
                    Some(metrics.anomalies_received_counter(source, result));
            }
        }
        for result in ["success", "failure"] {
            let _ = metrics
                .config_reloads
                .get_or_create(&ReloadLabels { result });
        }
        metrics
    }

    fn anomalies_received_counter(&self, source: Source, result: Received) -> Counter {
        self.anomalies_received
            .get_or_create_owned(&ReceivedLabels {
                source: source.as_str(),
                result: result.as_str(),
            })
    }

    /// Counts one anomaly from `source` by what became of it.
    pub fn anomaly_received(&self, source: Source, result: Received) {
        match &self.received[source as usize][result as usize] {
            Some(counter) => counter.inc(),
            None => self.anomalies_received_counter(source, result).inc(),
        };
    }

    /// A healing action was triggered and is now running.
    pub fn action_started(&self) {
        self.actions_in_flight.inc();
    }

    /// The series of `workflow` (whose action is of kind `action`). Every outcome's counter is
    /// created at once, so each starts from zero.
    fn new_workflow_series(&self, workflow: &Arc<str>, action: &'static str) -> WorkflowSeries {
        let finished = |outcome: Outcome| {
            self.actions.get_or_create_owned(&ActionLabels {
                workflow: workflow.clone(),
                action,
                outcome: outcome.as_str(),
            })
        };
        WorkflowSeries {
            action,
            finished: [
                finished(Outcome::Ok),
                finished(Outcome::Failed),
                finished(Outcome::Timeout),
            ],
            duration: self.action_duration.get_or_create_owned(&WorkflowLabels {
                workflow: workflow.clone(),
            }),
        }
    }

    /// A healing action of `workflow` (an `action` kind of action) finished with `outcome`
    /// after `duration`.
    pub fn action_finished(
        &self,
        workflow: &Arc<str>,
        action: &'static str,
        outcome: Outcome,
        duration: Duration,
    ) {
        self.actions_in_flight.dec();
        let count = |series: &WorkflowSeries| {
            series.finished[outcome as usize].inc();
            series.duration.observe(duration.as_secs_f64());
        };
        // The series exist after a workflow's first action: a shared lock and one lookup.
        let known = self
            .workflow_series
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match known.get(workflow) {
            // A reload may have changed the workflow's kind of action, and so its labels.
            Some(series) if series.action == action => count(series),
            _ => {
                drop(known);
                let series = self.new_workflow_series(workflow, action);
                count(&series);
                self.workflow_series
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(workflow.clone(), series);
            }
        }
    }

    /// An action of `workflow` was judged: `verdict` is `healed` or `not_healed`.
    pub fn action_verified(&self, workflow: &Arc<str>, verdict: &'static str) {
        self.actions_verified
            .get_or_create(&VerifiedLabels {
                workflow: workflow.clone(),
                verdict,
            })
            .inc();
    }

    /// Makes `read` the source of `autohealer_budget_remaining`, read at every scrape.
    pub fn watch_budget(&self, read: impl Fn() -> Option<u32> + Send + Sync + 'static) {
        self.budget_remaining
            .watch(Box::new(move || read().map(i64::from)));
    }

    /// Makes `read` the source of `autohealer_silences_active`, read at every scrape.
    pub fn watch_silences(&self, read: impl Fn() -> usize + Send + Sync + 'static) {
        self.silences_active
            .watch(Box::new(move || i64::try_from(read()).ok()));
    }

    /// A map with `reflexes` reflexes was loaded at `at`.
    pub fn map_loaded(&self, reflexes: usize, at: SystemTime) {
        self.config_reloads
            .get_or_create(&ReloadLabels { result: "success" })
            .inc();
        self.config_last_reload_successful.set(1);
        let unix = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.config_last_reload_success_timestamp
            .set(unix.as_secs_f64());
        self.reflexes
            .set(i64::try_from(reflexes).unwrap_or(i64::MAX));
    }

    /// A reload found the file identical to the map in force: the config on disk is good again,
    /// though nothing new was loaded (so neither the counter nor the timestamp moves).
    pub fn map_unchanged(&self) {
        self.config_last_reload_successful.set(1);
    }

    /// A reload was rejected (invalid or missing file); the old map stays in force.
    pub fn map_rejected(&self) {
        self.config_reloads
            .get_or_create(&ReloadLabels { result: "failure" })
            .inc();
        self.config_last_reload_successful.set(0);
    }

    /// A write (or sync) of the audit log failed.
    pub fn audit_write_failed(&self) {
        self.audit_write_errors.inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Registers `metric` under `name` and hands it back: metrics are shared handles, so the copy
/// kept in `Metrics` moves the one the registry encodes.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The daemon's metrics, shared by every record function and `GET /metrics`.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample written exactly as `series`.
    fn value<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    }

    #[test]
    fn every_metric_is_exported_with_its_contract_name() {
        let metrics = Metrics::new();
        metrics.anomaly_received(Source::Alertmanager, Received::Duplicate);
        metrics.action_started();
        metrics.action_finished(
            &Arc::from("page"),
            "log",
            Outcome::Ok,
            Duration::from_millis(3),
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        metrics.map_loaded(4, at);
        metrics.map_rejected();
        metrics.audit_write_failed();
        let text = metrics.encode().unwrap();
        let expected = [
            (
                r#"autohealer_anomalies_received_total{source="alertmanager",result="duplicate"}"#,
                "1",
            ),
            (
                r#"autohealer_anomalies_received_total{source="http",result="dispatched"}"#,
                "0",
            ),
            (
                r#"autohealer_actions_total{workflow="page",action="log",outcome="ok"}"#,
                "1",
            ),
            (
                r#"autohealer_action_duration_seconds_count{workflow="page"}"#,
                "1",
            ),
            (
                r#"autohealer_action_duration_seconds_bucket{workflow="page",le="0.001"}"#,
                "0",
            ),
            (
                r#"autohealer_action_duration_seconds_bucket{workflow="page",le="0.005"}"#,
                "1",
            ),
            ("autohealer_actions_in_flight", "0"),
            (r#"autohealer_config_reloads_total{result="success"}"#, "1"),
            (r#"autohealer_config_reloads_total{result="failure"}"#, "1"),
            ("autohealer_config_last_reload_successful", "0"),
            (
                "autohealer_config_last_reload_success_timestamp_seconds",
                "1700000000.0",
            ),
            ("autohealer_reflexes", "4"),
            ("autohealer_audit_write_errors_total", "1"),
        ];
        for (series, expected) in expected {
            assert_eq!(value(&text, series), expected, "{series}");
        }
        assert!(text.contains("# TYPE autohealer_anomalies_received_total counter"));
        assert!(text.contains("# TYPE autohealer_action_duration_seconds histogram"));
        assert!(!text.contains(r#"source="http",result="duplicate""#));

        assert!(
            !text.contains("autohealer_budget_remaining"),
            "no budget, no series"
        );
        metrics.action_verified(&Arc::from("restart"), "not_healed");
        metrics.watch_budget(|| Some(7));
        let text = metrics.encode().unwrap();
        assert_eq!(
            value(
                &text,
                r#"autohealer_actions_verified_total{workflow="restart",verdict="not_healed"}"#
            ),
            "1"
        );
        assert_eq!(value(&text, "autohealer_budget_remaining"), "7");
        assert!(text.contains("# TYPE autohealer_budget_remaining gauge"));
        assert!(!text.contains("autohealer_silences_active"));
        metrics.watch_silences(|| 3);
        let text = metrics.encode().unwrap();
        assert_eq!(value(&text, "autohealer_silences_active"), "3");
        assert!(text.contains("# TYPE autohealer_silences_active gauge"));

        metrics.map_unchanged();
        let text = metrics.encode().unwrap();
        assert_eq!(
            value(&text, "autohealer_config_last_reload_successful"),
            "1"
        );
    }
}
