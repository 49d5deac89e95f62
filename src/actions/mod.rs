//! Healing actions: what a dispatched workflow does, and the report of how it ended.
//!
//! One file per kind of action (style: an enum with one file per variant). Every action ends
//! in an `ActionReport`, never a panic or an error that escapes: a broken workflow is a `failed`
//! or `timeout` record, not a broken daemon.

mod log;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Action, JsonObject, Workflow};

/// Where an anomaly came from, as the `source` key of the triggered record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /anomaly`.
    Http,
    /// `POST /alertmanager`: a firing alert from Prometheus Alertmanager.
    Alertmanager,
}

impl Source {
    /// The value written to records.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Alertmanager => "alertmanager",
        }
    }
}

/// Everything one healing action needs, fixed when it is dispatched.
#[derive(Debug, Clone)]
pub struct ActionRun {
    pub action_id: String,
    pub anomaly: String,
    pub workflow: Arc<Workflow>,
    pub details: Arc<JsonObject>,
    pub params: Arc<JsonObject>,
    pub source: Source,
    /// Version of the map snapshot that matched the anomaly.
    pub map_version: Arc<str>,
    pub dry_run: bool,
}

/// How an action ended, as the `outcome` key of the finished record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
}

impl Outcome {
    /// The value written to records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
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
        }
    }
}

/// Runs the action of `run.workflow` to completion and reports how it ended.
pub async fn run(run: &ActionRun) -> ActionReport {
    match &run.workflow.action {
        // Until exec and webhook execution lands, every workflow acts as log-only.
        Action::Log | Action::Exec(_) | Action::Webhook(_) => log::run(run),
    }
}
