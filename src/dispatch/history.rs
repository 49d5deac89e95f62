//! The in-memory history of recent healing actions behind `GET /actions` (SPEC §2).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;
use uuid::Uuid;

use crate::actions::{ActionReport, ActionRun};

/// Actions remembered; older ones fall off.
pub const HISTORY_CAPACITY: usize = 1000;

/// One action as `GET /actions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ActionEntry {
    pub action_id: Uuid,
    pub anomaly: Arc<str>,
    pub workflow: Arc<str>,
    pub action: &'static str,
    /// `running` until the action ends, then `ok`, `failed` or `timeout`.
    pub outcome: &'static str,
    #[serde(serialize_with = "serialize_time")]
    pub started_at: SystemTime,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    /// `pending` while its verification window is open, then `healed` or `not_healed`; null
    /// for an action whose case does not verify, or that did not end `ok`.
    pub verdict: Option<&'static str>,
}

/// An action's verdict (SPEC §9 "Verification").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pending,
    Healed,
    NotHealed,
}

impl Verdict {
    /// The value of `verdict` in `/actions`, and of the metric's `verdict` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pending => "pending",
            Verdict::Healed => "healed",
            Verdict::NotHealed => "not_healed",
        }
    }
}

fn serialize_time<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

/// A bounded, newest-last ring of actions; cloning shares it.
#[derive(Clone, Default)]
pub struct ActionHistory {
    entries: Arc<Mutex<VecDeque<ActionEntry>>>,
}

impl ActionHistory {
    /// Remembers a dispatched action as `running`.
    pub fn started(&self, run: &ActionRun) {
        let mut entries = self.lock();
        if entries.len() == HISTORY_CAPACITY {
            entries.pop_front();
        }
        entries.push_back(ActionEntry {
            action_id: run.action_id.uuid(),
            anomaly: run.anomaly.clone(),
            workflow: run.workflow.name.clone(),
            action: run.workflow.action.kind(),
            outcome: "running",
            started_at: run.received_at,
            duration_ms: None,
            error: None,
            verdict: None,
        });
    }

    /// Fills in how the action ended (if it is still remembered); `verifying` when it opened a
    /// verification window.
    pub fn finished(&self, action_id: Uuid, report: &ActionReport, verifying: bool) {
        let mut entries = self.lock();
        // Recent actions finish first in practice, so search from the newest end.
        if let Some(entry) = entries.iter_mut().rev().find(|e| e.action_id == action_id) {
            entry.outcome = report.outcome.as_str();
            entry.duration_ms = Some(report.duration.as_millis() as u64);
            entry.error = report.error.clone();
            // A verdict may already be in: another thread's arrival can judge the window
            // between the rails opening it and this call.
            if verifying && entry.verdict.is_none() {
                entry.verdict = Some(Verdict::Pending.as_str());
            }
        }
    }

    /// Records the verdict on an action (if it is still remembered).
    pub fn judged(&self, action_id: Uuid, verdict: Verdict) {
        let mut entries = self.lock();
        if let Some(entry) = entries.iter_mut().rev().find(|e| e.action_id == action_id) {
            entry.verdict = Some(verdict.as_str());
        }
    }

    /// The newest `limit` actions, newest first.
    pub fn newest(&self, limit: usize) -> Vec<ActionEntry> {
        self.lock().iter().rev().take(limit).cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<ActionEntry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
