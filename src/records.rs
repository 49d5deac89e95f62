//! One function per log record the contract names (SPEC §5), so their messages and keys live in
//! one place and tests can rely on them. Each also bumps its record's metric (SPEC §6), so the
//! log and `GET /metrics` always tell the same story.

use std::net::SocketAddr;
use std::path::Path;
use std::time::SystemTime;

use slog::{crit, debug, error, info, warn, Logger};

use crate::actions::{ActionReport, ActionRun, Source};
use crate::metrics::{self, Received};

/// Why a reload happened, as the `trigger` key of `reflex map loaded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Watch,
    Signal,
    Http,
}

impl Trigger {
    /// The value written to records.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Watch => "watch",
            Trigger::Signal => "signal",
            Trigger::Http => "http",
        }
    }
}

/// CRIT `healing action triggered`: the traceable record of a healing action starting.
pub fn action_triggered(log: &Logger, run: &ActionRun) {
    crit!(log, "healing action triggered";
        "dry_run" => run.dry_run,
        "params" => slog::Serde(run.params.clone()),
        "details" => slog::Serde(run.details.clone()),
        "map_version" => &*run.map_version,
        "source" => run.source.as_str(),
        "action" => run.workflow.action.kind(),
        "workflow" => &run.workflow.name,
        "anomaly" => &run.anomaly,
        "action_id" => &run.action_id,
    );
    let metrics = metrics::global();
    metrics.anomaly_received(run.source, Received::Dispatched);
    metrics.action_started();
}

/// CRIT `healing action finished`: how the action ended, with its kind-specific keys.
pub fn action_finished(log: &Logger, run: &ActionRun, report: &ActionReport) {
    crit!(log, "healing action finished";
        ReportKv(report),
        "outcome" => report.outcome.as_str(),
        "action" => run.workflow.action.kind(),
        "workflow" => &run.workflow.name,
        "anomaly" => &run.anomaly,
        "action_id" => &run.action_id,
    );
    metrics::global().action_finished(
        &run.workflow.name,
        run.workflow.action.kind(),
        report.outcome.as_str(),
        report.duration,
    );
}

/// WARN `unmatched anomaly`: no reflex matched the name.
pub fn unmatched(log: &Logger, anomaly: &str, source: Source) {
    warn!(log, "unmatched anomaly"; "source" => source.as_str(), "anomaly" => anomaly);
    metrics::global().anomaly_received(source, Received::Unmatched);
}

/// INFO `alert resolved`: Alertmanager reports an alert as resolved; nothing runs.
pub fn alert_resolved(log: &Logger, anomaly: &str, fingerprint: &str, starts_at: &str) {
    info!(log, "alert resolved";
        "starts_at" => starts_at,
        "fingerprint" => fingerprint,
        "source" => Source::Alertmanager.as_str(),
        "anomaly" => anomaly,
    );
    metrics::global().anomaly_received(Source::Alertmanager, Received::Resolved);
}

/// DEBUG `duplicate alert`: Alertmanager re-sent an alert already acted on; nothing runs again.
/// Debug, because every group notification re-sends every alert still firing in the group.
pub fn alert_duplicate(log: &Logger, anomaly: &str, fingerprint: &str, starts_at: &str) {
    debug!(log, "duplicate alert";
        "starts_at" => starts_at,
        "fingerprint" => fingerprint,
        "source" => Source::Alertmanager.as_str(),
        "anomaly" => anomaly,
    );
    metrics::global().anomaly_received(Source::Alertmanager, Received::Duplicate);
}

/// WARN `invalid alert`: an alert in a valid payload could not become an anomaly.
pub fn alert_invalid(log: &Logger, fingerprint: &str, error: &str) {
    warn!(log, "invalid alert";
        "error" => error,
        "fingerprint" => fingerprint,
        "source" => Source::Alertmanager.as_str(),
    );
    metrics::global().anomaly_received(Source::Alertmanager, Received::Invalid);
}

/// INFO `reflex map loaded`: a new generation of the map is in force.
pub fn map_loaded(
    log: &Logger,
    version: &str,
    generation: u64,
    reflexes: usize,
    workflows: usize,
    trigger: Trigger,
) {
    info!(log, "reflex map loaded";
        "trigger" => trigger.as_str(),
        "workflows" => workflows,
        "reflexes" => reflexes,
        "generation" => generation,
        "version" => version,
    );
    metrics::global().map_loaded(reflexes, SystemTime::now());
}

/// DEBUG `reflex map unchanged`: a reload found the content in force; after a rejected edit is
/// undone this is what marks the config healthy again.
pub fn map_unchanged(log: &Logger, version: &str, trigger: Trigger) {
    debug!(log, "reflex map unchanged"; "trigger" => trigger.as_str(), "version" => version);
    metrics::global().map_unchanged();
}

/// ERRO `reflex map rejected`: an edit was invalid and the old map stays in force.
pub fn map_rejected(log: &Logger, error: &str, kept_version: &str) {
    error!(log, "reflex map rejected"; "kept_version" => kept_version, "error" => error);
    metrics::global().map_rejected();
}

/// WARN `reflex map missing`: the file is gone; the old map stays in force until it returns.
pub fn map_missing(log: &Logger, path: &Path, kept_version: &str) {
    warn!(log, "reflex map missing";
        "kept_version" => kept_version,
        "path" => %path.display(),
    );
    metrics::global().map_rejected();
}

/// WARN `config watcher failed`: file-system events may be missed until it is re-created.
pub fn watcher_failed(log: &Logger, error: &str) {
    warn!(log, "config watcher failed"; "error" => error);
}

/// INFO `listening`: the socket is bound; tests read the address from it.
pub fn listening(log: &Logger, addr: SocketAddr, config: &Path) {
    info!(log, "listening"; "config" => %config.display(), "addr" => %addr);
}

/// INFO `shutting down`: a stop signal arrived.
pub fn shutting_down(log: &Logger, signal: &str) {
    info!(log, "shutting down"; "signal" => signal);
}

/// WARN `shutdown timed out`: work was still running when `--shutdown-timeout` ran out.
pub fn shutdown_timed_out(log: &Logger, what: &str) {
    warn!(log, "shutdown timed out"; "still_running" => what);
}

/// WARN `accept failed`: the listener could not take a connection (e.g. out of descriptors).
pub fn accept_failed(log: &Logger, error: &std::io::Error) {
    warn!(log, "accept failed"; "error" => %error);
}

/// The finished record's optional keys, emitted only when they apply.
struct ReportKv<'a>(&'a ActionReport);

impl slog::KV for ReportKv<'_> {
    fn serialize(&self, _record: &slog::Record, s: &mut dyn slog::Serializer) -> slog::Result {
        let report = self.0;
        s.emit_u64("duration_ms", report.duration.as_millis() as u64)?;
        if let Some(error) = &report.error {
            s.emit_str("error", error)?;
        }
        if let Some(code) = report.exit_code {
            s.emit_i32("exit_code", code)?;
        }
        if let Some(output) = &report.output {
            s.emit_str("output", output)?;
        }
        if let Some(status) = report.http_status {
            s.emit_u16("http_status", status)?;
        }
        if let Some(attempts) = report.attempts {
            s.emit_u32("attempts", attempts)?;
        }
        Ok(())
    }
}
