//! Healing actions: what a dispatched workflow does, and the report of how it ended.
//!
//! One file per kind of action (style: an enum with one file per variant). Every action ends
//! in an `ActionReport`, never a panic or an error that escapes: a broken workflow is a `failed`
//! or `timeout` record, not a broken daemon.

mod exec;
mod log;
mod webhook;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrayvec::ArrayString;
use tokio_util::sync::CancellationToken;
use uuid::fmt::Hyphenated;
use uuid::Uuid;

use crate::anomaly::{Details, JsonObject, Source};
use crate::map::{Action, TemplateContext, Workflow};

pub use exec::{expand_argv, withhold_variables};
pub use webhook::{request_body, request_headers};

/// An action's id, a version 7 UUID, with its text written once: the triggered and finished
/// records and the answer each show it, and writing a UUID's 36 characters three times cost
/// more than keeping them (issue 17, callgrind).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ActionId {
    uuid: Uuid,
    text: ArrayString<{ Hyphenated::LENGTH }>,
}

impl ActionId {
    /// The id `uuid`, its text written now.
    pub fn new(uuid: Uuid) -> ActionId {
        let mut buffer = [0; Hyphenated::LENGTH];
        let text = uuid.hyphenated().encode_lower(&mut buffer);
        // Always fits: `encode_lower` writes exactly `LENGTH` characters.
        let text = ArrayString::from(text).unwrap_or_default();
        ActionId { uuid, text }
    }

    /// The UUID itself, which the history, the rails and webhook bodies keep.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The hyphenated lower-case form, as the records and the answer show it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for ActionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything one healing action needs, fixed when it is dispatched.
#[derive(Debug, Clone)]
pub struct ActionRun {
    /// A version 7 UUID: unique, and sorts by the time it was dispatched.
    pub action_id: ActionId,
    pub anomaly: Arc<str>,
    pub workflow: Arc<Workflow>,
    pub details: Arc<Details>,
    pub params: Arc<JsonObject>,
    pub source: Source,
    /// Version of the map snapshot that matched the anomaly.
    pub map_version: Arc<str>,
    pub dry_run: bool,
    pub received_at: SystemTime,
    /// Set on an escalation (SPEC §9): the action whose failure or relapse started this one.
    pub escalated_from: Option<Uuid>,
}

impl ActionRun {
    /// The values templates expand against for this run.
    pub fn template_context(&self) -> TemplateContext<'_> {
        TemplateContext {
            anomaly: &self.anomaly,
            workflow: &self.workflow.name,
            action_id: self.action_id.uuid(),
            details: &self.details,
            params: &self.params,
        }
    }
}

/// How an action ended, as the `outcome` key of the finished record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Timeout,
}

impl Outcome {
    /// The value written to records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
        }
    }
}

/// The result of one action, as written to the `healing action finished` record.
#[derive(Debug, Clone)]
pub struct ActionReport {
    pub outcome: Outcome,
    pub duration: Duration,
    /// Why the action did not succeed; `None` exactly when the outcome is `ok`.
    pub error: Option<String>,
    /// Exec actions: the exit code, when the process exited on its own.
    pub exit_code: Option<i32>,
    /// Exec actions: the tail of stdout and stderr.
    pub output: Option<String>,
    /// Webhook actions: the last HTTP status received.
    pub http_status: Option<u16>,
    /// Webhook actions: how many requests were sent.
    pub attempts: Option<u32>,
    /// Dry runs: what would have been executed.
    pub would_run: Option<String>,
}

impl ActionReport {
    /// A report with only the outcome and timing filled in.
    pub fn new(outcome: Outcome, duration: Duration, error: Option<String>) -> ActionReport {
        ActionReport {
            outcome,
            duration,
            error,
            exit_code: None,
            output: None,
            http_status: None,
            attempts: None,
            would_run: None,
        }
    }

    /// The report of a dry run: what would have run, or why it could not.
    pub fn dry_run(would_run: Result<String, String>) -> ActionReport {
        match would_run {
            Ok(would_run) => ActionReport {
                would_run: Some(would_run),
                ..ActionReport::new(Outcome::Ok, Duration::ZERO, None)
            },
            Err(err) => ActionReport::failed(Duration::ZERO, err),
        }
    }

    /// A failed report with `error` as the reason.
    pub fn failed(duration: Duration, error: impl Into<String>) -> ActionReport {
        ActionReport::new(Outcome::Failed, duration, Some(error.into()))
    }
}

/// The reason recorded for actions cut short by shutdown.
pub const SHUTDOWN_REASON: &str = "the daemon shut down before the action finished";

/// The report of an action that ends as soon as it starts (log-only, or any dry run), so the
/// dispatcher can finish it in place instead of spawning a task; `None` for one that runs.
pub fn run_at_once(run: &ActionRun) -> Option<ActionReport> {
    match &run.workflow.action {
        Action::Log => Some(log::run(run)),
        Action::Exec(exec) if run.dry_run => Some(exec::dry_run(exec, run)),
        Action::Webhook(hook) if run.dry_run => Some(webhook::dry_run(hook, run)),
        Action::Exec(_) | Action::Webhook(_) => None,
    }
}

/// Runs the action of `run.workflow` to completion, or until `cancel` fires at shutdown.
pub async fn run(run: &ActionRun, cancel: &CancellationToken) -> ActionReport {
    if let Some(report) = run_at_once(run) {
        return report;
    }
    match &run.workflow.action {
        Action::Exec(exec) => exec::run(exec, run, cancel).await,
        Action::Webhook(hook) => webhook::run(hook, run, cancel).await,
        Action::Log => log::run(run),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_id_reads_as_its_uuid_is_written() {
        for uuid in [Uuid::nil(), Uuid::max(), Uuid::now_v7(), Uuid::now_v7()] {
            let id = ActionId::new(uuid);
            assert_eq!(id.as_str(), uuid.hyphenated().to_string());
            assert_eq!(id.uuid(), uuid);
            assert_eq!(format!("{id:?}"), uuid.to_string());
        }
    }
}
