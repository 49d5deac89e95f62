//! `max_concurrent` (SPEC §3): runs of each exec or webhook workflow in flight at once.

use std::collections::HashMap;
use std::sync::Arc;

/// Workflow name → runs in flight; a workflow with none has no entry, so the table is bounded
/// by the workflows running now.
#[derive(Debug, Default)]
pub struct InFlight {
    pub running: HashMap<Arc<str>, u32>,
}

impl InFlight {
    /// Counts one more run of `workflow` if it fits under `max`; false when it does not.
    pub fn try_start(&mut self, workflow: &Arc<str>, max: u32) -> bool {
        let running = self.running.entry(workflow.clone()).or_insert(0);
        if *running >= max {
            return false;
        }
        *running += 1;
        true
    }

    /// Counts one run of `workflow` as over.
    pub fn end(&mut self, workflow: &str) {
        if let Some(running) = self.running.get_mut(workflow) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                self.running.remove(workflow);
            }
        }
    }

    /// Runs of `workflow` in flight now.
    pub fn count(&self, workflow: &str) -> u32 {
        self.running.get(workflow).copied().unwrap_or(0)
    }
}
