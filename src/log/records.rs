//! One function per log record the contract names (SPEC §5), so their messages and keys live in
//! one place and tests can rely on them. Each also bumps its record's metric (SPEC §6), so the
//! log and `GET /metrics` always tell the same story; none changes any other state. Healing-action
//! records carry the `audit` tag, which is how `--audit-log` picks them out (`is_kept`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::SystemTime;

use slog::{crit, debug, error, info, warn, Logger};
use uuid::Uuid;

use crate::actions::{ActionReport, ActionRun};
use crate::anomaly::Source;
use crate::map::LoadedMap;
use crate::metrics::{self, Received};
use crate::rails::{
    BudgetExhausted, CircuitOpened, NotHealed, Overflow, Silence, SuppressReason, Verified,
};

/// The slog tag of the records that describe healing actions: what the audit log keeps.
/// (A tag survives slog-async's channel; the message's static string does not.)
pub const AUDIT_TAG: &str = "audit";

/// The one filter rule of both log formats: a record is written when it reaches the stderr
/// level, or when it is a healing-action record and an audit log is kept (the audit log keeps
/// every one of them, whatever `--log-level` says).
pub fn is_kept(record: &slog::Record, stderr_level: slog::Level, audit: bool) -> bool {
    record.level().is_at_least(stderr_level) || (audit && is_audit(record))
}

/// Whether `record` is one the audit log keeps.
pub fn is_audit(record: &slog::Record) -> bool {
    record.tag() == AUDIT_TAG
}

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

/// A JSON value logged by reference. `slog::Serde` owns its value, so logging an object held in
/// an `Arc` cloned the `Arc` and dropped it again: two locked instructions per value per
/// triggered record (issue 17). The value is copied only when a drain keeps the record beyond
/// the call (the term format's slog-async asks for `to_sendable`).
struct SerdeRef<'a, T>(&'a T);

impl<T: serde::Serialize> serde::Serialize for SerdeRef<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<T: serde::Serialize + Clone + Send + 'static> slog::Value for SerdeRef<'_, T> {
    fn serialize(
        &self,
        _record: &slog::Record,
        key: slog::Key,
        serializer: &mut dyn slog::Serializer,
    ) -> slog::Result {
        serializer.emit_serde(key, self)
    }
}

impl<T: serde::Serialize + Clone + Send + 'static> slog::SerdeValue for SerdeRef<'_, T> {
    fn as_serde(&self) -> &dyn erased_serde::Serialize {
        self.0
    }

    fn to_sendable(&self) -> Box<dyn slog::SerdeValue + Send + 'static> {
        Box::new(slog::Serde(self.0.clone()))
    }
}

/// The `source` of an escalation's triggered record (SPEC §9).
const ESCALATION_SOURCE: &str = "escalation";

/// CRIT `healing action triggered`: the traceable record of a healing action starting. An
/// escalation says `source: escalation` and names the action it escalates in `escalated_from`;
/// it is no anomaly received, so it does not count as one.
pub fn action_triggered(log: &Logger, run: &ActionRun) {
    let source = match run.escalated_from {
        Some(_) => ESCALATION_SOURCE,
        None => run.source.as_str(),
    };
    crit!(log, #AUDIT_TAG, "healing action triggered";
        EscalatedFrom(run.escalated_from),
        "dry_run" => run.dry_run,
        "params" => SerdeRef(&run.params),
        "details" => SerdeRef(&run.details),
        "map_version" => &*run.map_version,
        "source" => source,
        "action" => run.workflow.action.kind(),
        "workflow" => &run.workflow.name,
        "anomaly" => &run.anomaly,
        "action_id" => run.action_id.as_str(),
    );
    let metrics = metrics::global();
    if run.escalated_from.is_none() {
        metrics.anomaly_received(run.source, Received::Dispatched);
    }
    metrics.action_started();
}

/// CRIT `healing action escalated`: action `action_id` failed, timed out or was not healed
/// (`reason`), and its case's escalation started `escalation_action_id`.
pub fn action_escalated(
    log: &Logger,
    action_id: Uuid,
    anomaly: &str,
    workflow: &str,
    reason: &str,
    escalation_action_id: Uuid,
) {
    crit!(log, #AUDIT_TAG, "healing action escalated";
        "escalation_action_id" => &*escalation_action_id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
        "reason" => reason,
        "workflow" => workflow,
        "anomaly" => anomaly,
        "action_id" => &*action_id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
    );
}

/// WARN `healing action suppressed` for an escalation its workflow's own rails held back; it
/// names the action it would have escalated, and counts as no anomaly received.
pub fn escalation_suppressed(
    log: &Logger,
    anomaly: &str,
    workflow: &str,
    reason: SuppressReason,
    escalated_from: Uuid,
) {
    warn!(log, #AUDIT_TAG, "healing action suppressed";
        "escalated_from" => &*escalated_from.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
        "reason" => reason.as_str(),
        "workflow" => workflow,
        "anomaly" => anomaly,
    );
}

/// CRIT `healing action not healed`: the action's key came back inside its verify window.
pub fn action_not_healed(log: &Logger, not_healed: &NotHealed) {
    crit!(log, #AUDIT_TAG, "healing action not healed";
        "recurred_after_ms" => not_healed.recurred_after.as_millis() as u64,
        "workflow" => &*not_healed.workflow,
        "anomaly" => &*not_healed.anomaly,
        "action_id" => &*not_healed.action_id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
    );
    metrics::global().action_verified(&not_healed.workflow, "not_healed");
}

/// INFO `healing action verified`: the verify window passed quietly, or Alertmanager resolved
/// the alert (`verified_by`).
pub fn action_verified(log: &Logger, verified: &Verified) {
    info!(log, #AUDIT_TAG, "healing action verified";
        "verified_by" => verified.by.as_str(),
        "workflow" => &*verified.workflow,
        "anomaly" => &*verified.anomaly,
        "action_id" => &*verified.action_id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
    );
    metrics::global().action_verified(&verified.workflow, "healed");
}

/// CRIT `budget exhausted`: `limits.actions` is spent; exec and webhook actions are held back
/// (reason `budget`) until `until`. Once each time the budget trips.
pub fn budget_exhausted(log: &Logger, exhausted: &BudgetExhausted) {
    let until = SystemTime::now() + exhausted.open_for;
    crit!(log, #AUDIT_TAG, "budget exhausted";
        "until" => %humantime::format_rfc3339_seconds(until),
        "within" => %humantime::format_duration(exhausted.within),
        "max" => exhausted.max,
    );
}

/// WARN `rail state overflow`: a reflex's per-key table is full, so new keys share one cooldown
/// (more suppression, never less). The rails report it at most once a minute.
pub fn rail_state_overflow(log: &Logger, overflow: &Overflow) {
    warn!(log, "rail state overflow";
        "max_keys" => overflow.max_keys,
        "reflex" => &*overflow.reflex,
    );
}

/// CRIT `healing action finished`: how the action ended, with its kind-specific keys.
pub fn action_finished(log: &Logger, run: &ActionRun, report: &ActionReport) {
    crit!(log, #AUDIT_TAG, "healing action finished";
        ReportKv(report),
        "outcome" => report.outcome.as_str(),
        "action" => run.workflow.action.kind(),
        "workflow" => &run.workflow.name,
        "anomaly" => &run.anomaly,
        "action_id" => run.action_id.as_str(),
    );
    metrics::global().action_finished(
        &run.workflow.name,
        run.workflow.action.kind(),
        report.outcome,
        report.duration,
    );
}

/// WARN `healing action suppressed`: a safety rail held a matched anomaly back.
pub fn action_suppressed(
    log: &Logger,
    anomaly: &str,
    workflow: &str,
    reason: SuppressReason,
    source: Source,
) {
    warn!(log, #AUDIT_TAG, "healing action suppressed";
        "reason" => reason.as_str(),
        "workflow" => workflow,
        "anomaly" => anomaly,
    );
    metrics::global().anomaly_received(source, Received::Suppressed);
}

/// WARN `healing action suppressed` for an anomaly an operator's silence covers: reason
/// `silenced`, and the silence's id (SPEC §9 "Silences").
pub fn action_silenced(
    log: &Logger,
    anomaly: &str,
    workflow: &str,
    silence_id: Uuid,
    source: Source,
) {
    warn!(log, #AUDIT_TAG, "healing action suppressed";
        "silence_id" => &*silence_id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
        "reason" => SuppressReason::Silenced.as_str(),
        "workflow" => workflow,
        "anomaly" => anomaly,
    );
    metrics::global().anomaly_received(source, Received::Suppressed);
}

/// WARN `healing action suppressed` for an escalation a silence on its anomaly held back: a
/// silence stops every action the anomaly would start, escalations too.
pub fn escalation_silenced(
    log: &Logger,
    anomaly: &str,
    workflow: &str,
    silence_id: Uuid,
    escalated_from: Uuid,
) {
    warn!(log, #AUDIT_TAG, "healing action suppressed";
        "escalated_from" => &*escalated_from.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
        "silence_id" => &*silence_id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
        "reason" => SuppressReason::Silenced.as_str(),
        "workflow" => workflow,
        "anomaly" => anomaly,
    );
}

/// INFO `silence added`: from now until `ends_at`, anomalies the matcher covers run nothing.
pub fn silence_added(log: &Logger, silence: &Silence) {
    info!(log, #AUDIT_TAG, "silence added";
        "ends_at" => %humantime::format_rfc3339_seconds(silence.ends_at),
        "comment" => &silence.comment,
        "matcher" => silence.matcher(),
        "silence_id" => &*silence.id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
    );
}

/// INFO `silence expired`: the silence no longer holds anything back; `expired_by` is `time`
/// (it ran out) or `request` (`DELETE /silences/ID`).
pub fn silence_expired(log: &Logger, silence: &Silence, expired_by: &'static str) {
    info!(log, #AUDIT_TAG, "silence expired";
        "expired_by" => expired_by,
        "matcher" => silence.matcher(),
        "silence_id" => &*silence.id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
    );
}

/// INFO `state kept in memory`: no `--state-dir`, so a restart forgets cooldowns, breakers,
/// verifications, the budget, silences and Alertmanager's duplicates.
pub fn state_in_memory(log: &Logger) {
    info!(log, "state kept in memory";
        "hint" => "pass --state-dir (or set AUTOHEALER_STATE_DIR) to keep it across restarts",
    );
}

/// INFO `state kept on disk`: the rails' state is written to `path`; `restored_from` is when
/// the file read at startup was written, if one was.
pub fn state_on_disk(log: &Logger, path: &Path, restored_from: Option<SystemTime>) {
    match restored_from {
        Some(written) => info!(log, "state kept on disk";
            "restored_from" => %humantime::format_rfc3339_millis(written),
            "path" => %path.display(),
        ),
        None => info!(log, "state kept on disk"; "path" => %path.display()),
    }
}

/// WARN `state discarded`: the state file (or one part of it, `part`) could not be used; the
/// daemon starts afresh rather than refuse to heal.
pub fn state_discarded(log: &Logger, path: &Path, part: Option<&str>, reason: &str) {
    match part {
        Some(part) => warn!(log, "state discarded";
            "reason" => reason,
            "part" => part,
            "path" => %path.display(),
        ),
        None => warn!(log, "state discarded"; "reason" => reason, "path" => %path.display()),
    }
}

/// WARN `state write failed`: the state could not be written (a read-only or full disk); the
/// daemon serves on and retries every second. Once per run of failures.
pub fn state_write_failed(log: &Logger, path: &Path, error: &std::io::Error) {
    warn!(log, "state write failed";
        "hint" => "the daemon keeps serving and retries; a restart now would forget recent state",
        "error" => %error,
        "path" => %path.display(),
    );
}

/// INFO `state write recovered`: the state file is written again after failures.
pub fn state_write_recovered(log: &Logger, path: &Path) {
    info!(log, "state write recovered"; "path" => %path.display());
}

/// CRIT `circuit opened`: a workflow failed too often and is suspended until `until`.
pub fn circuit_opened(log: &Logger, workflow: &str, opened: &CircuitOpened) {
    let until = SystemTime::now() + opened.open_for;
    crit!(log, #AUDIT_TAG, "circuit opened";
        "until" => %humantime::format_rfc3339_seconds(until),
        "within" => %humantime::format_duration(opened.within),
        "failures" => opened.failures,
        "workflow" => workflow,
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
pub fn map_loaded(log: &Logger, loaded: &LoadedMap, trigger: Trigger) {
    let reflexes = loaded.map.reflexes.len();
    metrics::global().map_loaded(reflexes, loaded.loaded_at);
    info!(log, "reflex map loaded";
        "trigger" => trigger.as_str(),
        "workflows" => loaded.map.workflows.len(),
        "reflexes" => reflexes,
        "generation" => loaded.generation,
        "version" => &*loaded.version,
    );
}

/// DEBUG `reflex map unchanged`: a reload found the content in force; after a rejected edit is
/// undone this is what marks the config healthy again.
pub fn map_unchanged(log: &Logger, version: &str, trigger: Trigger) {
    debug!(log, "reflex map unchanged"; "trigger" => trigger.as_str(), "version" => version);
    metrics::global().map_unchanged();
}

/// ERRO `reflex map rejected`: an edit was invalid and the old map stays in force. The reload
/// metric counts every rejected attempt; the record is written only when `report` is true (the
/// reloader writes it once per bad content, not once per event).
pub fn map_rejected(log: &Logger, error: &str, kept_version: &str, report: bool) {
    metrics::global().map_rejected();
    if report {
        error!(log, "reflex map rejected"; "kept_version" => kept_version, "error" => error);
    }
}

/// WARN `reflex map missing`: the file is gone; the old map stays in force until it returns.
/// Counted as a rejected reload every time, written only when `report` is true (once until
/// the file is back).
pub fn map_missing(log: &Logger, path: &Path, kept_version: &str, report: bool) {
    metrics::global().map_rejected();
    if report {
        warn!(log, "reflex map missing";
            "kept_version" => kept_version,
            "path" => %path.display(),
        );
    }
}

/// ERRO `cannot install signal handlers`: SIGTERM, SIGINT and SIGHUP will not be handled.
pub fn signals_unavailable(log: &Logger) {
    error!(log, "cannot install signal handlers"; "hint" => "stop the daemon with SIGKILL");
}

/// WARN `config watcher failed`: file-system events may be missed until it is re-created.
pub fn watcher_failed(log: &Logger, error: &str) {
    warn!(log, "config watcher failed"; "error" => error);
}

/// INFO `listening`: the socket is bound; tests read the address from it. `socket` says whether
/// the daemon bound `--listen` itself or serves the one systemd passed (socket activation).
pub fn listening(log: &Logger, addr: SocketAddr, config: &Path, activated: bool) {
    let socket = if activated { "systemd" } else { "bound" };
    info!(log, "listening"; "socket" => socket, "config" => %config.display(), "addr" => %addr);
}

/// WARN `listening without a token`: anyone who can reach the address can trigger workflows.
pub fn listening_without_token(log: &Logger, addr: SocketAddr) {
    warn!(log, "listening without a token";
        "hint" => "pass --token-file, or listen on a loopback address",
        "addr" => %addr,
    );
}

/// INFO `token file loaded`: a reload found a new bearer token and put it in force.
pub fn token_loaded(log: &Logger, path: &Path) {
    info!(log, "token file loaded"; "path" => %path.display());
}

/// WARN `token file readable by others`: anyone who can read it can call the API.
pub fn token_file_exposed(log: &Logger, path: &Path, mode: u32) {
    warn!(log, "token file readable by others";
        "hint" => format!("chmod go-r {}", path.display()),
        "mode" => format!("{mode:04o}"),
        "path" => %path.display(),
    );
}

/// ERRO `token file rejected`: a reload could not read the token; the old one stays in force.
pub fn token_rejected(log: &Logger, error: &str) {
    error!(log, "token file rejected"; "error" => error);
}

/// WARN `connection limit reached`: new connections now displace idle ones, or wait.
pub fn connection_limit_reached(log: &Logger, max_connections: usize) {
    warn!(log, "connection limit reached"; "max_connections" => max_connections);
}

/// WARN `systemd notify socket unusable`: READY=1 and watchdog pings cannot be sent.
pub fn notify_unavailable(log: &Logger, error: &str) {
    warn!(log, "systemd notify socket unusable"; "error" => error);
}

/// WARN `watchdog ping withheld`: the runtime looked stalled, so systemd is not told all is well.
pub fn watchdog_withheld(log: &Logger, reason: &str) {
    warn!(log, "watchdog ping withheld"; "reason" => reason);
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

/// The triggered record's `escalated_from`, emitted only for an escalation.
struct EscalatedFrom(Option<Uuid>);

impl slog::KV for EscalatedFrom {
    fn serialize(&self, _record: &slog::Record, s: &mut dyn slog::Serializer) -> slog::Result {
        if let Some(from) = self.0 {
            s.emit_str(
                "escalated_from",
                from.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
            )?;
        }
        Ok(())
    }
}

/// ERRO `audit log write failed`: records could not be written to the audit log (disk full, an
/// I/O error); they reached stderr. The metric counts every failed write; the record is written
/// only when `report` is true (the audit log reports a failure at most once every 10 s).
pub fn audit_write_failed(log: &Logger, path: &Path, error: &std::io::Error, report: bool) {
    metrics::global().audit_write_failed();
    if report {
        error!(log, "audit log write failed"; "error" => %error, "path" => %path.display());
    }
}

/// INFO `audit log recovered`: a write to the audit log worked again after `failed_writes`
/// failed ones, which lost `lost_records` records from the file (not from stderr).
pub fn audit_recovered(log: &Logger, path: &Path, failed_writes: u64, lost_records: u64) {
    info!(log, "audit log recovered";
        "lost_records" => lost_records,
        "failed_writes" => failed_writes,
        "path" => %path.display(),
    );
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
        if let Some(would_run) = &report.would_run {
            s.emit_str("would_run", would_run)?;
        }
        Ok(())
    }
}
