//! What follows an action (SPEC §9): the records of what the rails judged (not healed,
//! verified, a breaker or the budget tripped, a full table), the escalation of an action that
//! failed or relapsed, Alertmanager's `resolved` as a verdict, and the sweeper task that judges
//! quiet verification windows and ends silences when they run out, with no request needed.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::silences::EXPIRED_BY_TIME;
use super::{action_id, Dispatcher, Verdict};
use crate::actions::ActionRun;
use crate::anomaly::{Details, JsonObject, Source};
use crate::log::records;
use crate::map::{Limits, LoadedMap, Workflow};
use crate::rails::{Admission, RailEvents, Verified, MAX_VERDICTS_PER_SWEEP, SWEEP_INTERVAL};

/// The action an escalation comes from, and what it hands on to the escalation.
pub(super) struct EscalationFrom<'a> {
    action_id: Uuid,
    anomaly: &'a Arc<str>,
    workflow: &'a Arc<str>,
    details: &'a Arc<Details>,
    params: &'a Arc<JsonObject>,
    source: Source,
    map_version: &'a Arc<str>,
}

impl<'a> From<&'a ActionRun> for EscalationFrom<'a> {
    fn from(run: &'a ActionRun) -> Self {
        EscalationFrom {
            action_id: run.action_id.uuid(),
            anomaly: &run.anomaly,
            workflow: &run.workflow.name,
            details: &run.details,
            params: &run.params,
            source: run.source,
            map_version: &run.map_version,
        }
    }
}

impl Dispatcher {
    /// Writes what the rails judged while admitting `anomaly` (from `snapshot`, with `details`),
    /// and escalates each action found not healed whose case says so.
    pub(super) fn report(
        &self,
        events: RailEvents,
        snapshot: &LoadedMap,
        anomaly: &Arc<str>,
        details: &Arc<Details>,
        source: Source,
    ) {
        let RailEvents {
            not_healed,
            verified,
            circuits_opened,
            budget_exhausted,
            overflow,
        } = events;
        for done in &verified {
            self.verified(done);
        }
        for relapse in &not_healed {
            records::action_not_healed(&self.log, relapse);
            self.history.judged(relapse.action_id, Verdict::NotHealed);
        }
        for (workflow, opened) in &circuits_opened {
            records::circuit_opened(&self.log, workflow, opened);
        }
        if let Some(exhausted) = &budget_exhausted {
            records::budget_exhausted(&self.log, exhausted);
        }
        if let Some(overflow) = &overflow {
            records::rail_state_overflow(&self.log, overflow);
        }
        for relapse in &not_healed {
            // The escalation is named in the window; the map in force says what it is now.
            let to = relapse
                .escalate
                .as_ref()
                .and_then(|name| snapshot.map.workflows.get(&**name));
            let Some(to) = to else { continue };
            let from = EscalationFrom {
                action_id: relapse.action_id,
                anomaly,
                workflow: &relapse.workflow,
                details,
                params: &relapse.params,
                source,
                map_version: &snapshot.version,
            };
            self.escalate(from, to, "not_healed", snapshot.map.limits);
        }
    }

    /// Dispatches `to` once for the action `from`, which ended `reason` (`failed`, `timeout` or
    /// `not_healed`): through `to`'s own rails, never the cooldown of the anomaly behind it.
    pub(super) fn escalate(
        &self,
        from: EscalationFrom<'_>,
        to: &Arc<Workflow>,
        reason: &'static str,
        limits: Limits,
    ) {
        let now = Instant::now();
        // A silence on the anomaly stops every action it would start, escalations too.
        if let Some(silence_id) = self.silences.find(from.anomaly, now) {
            records::escalation_silenced(
                &self.log,
                from.anomaly,
                &to.name,
                silence_id,
                from.action_id,
            );
            return;
        }
        let Admission { result, events } = self.rails.admit_escalation(to, limits, now);
        if let Some(exhausted) = &events.budget_exhausted {
            records::budget_exhausted(&self.log, exhausted);
        }
        let permit = match result {
            Ok(permit) => permit,
            Err(why) => {
                records::escalation_suppressed(
                    &self.log,
                    from.anomaly,
                    &to.name,
                    why,
                    from.action_id,
                );
                return;
            }
        };
        let received_at = SystemTime::now();
        let run = ActionRun {
            action_id: action_id(received_at),
            anomaly: from.anomaly.clone(),
            workflow: to.clone(),
            details: from.details.clone(),
            params: from.params.clone(),
            source: from.source,
            map_version: from.map_version.clone(),
            dry_run: self.dry_run,
            received_at,
            escalated_from: Some(from.action_id),
        };
        records::action_escalated(
            &self.log,
            from.action_id,
            from.anomaly,
            from.workflow,
            reason,
            run.action_id.uuid(),
        );
        // An escalation is the last word: it escalates no further.
        self.start(run, permit, None, now);
    }

    fn verified(&self, verified: &Verified) {
        records::action_verified(&self.log, verified);
        self.history.judged(verified.action_id, Verdict::Healed);
    }

    /// Alertmanager resolved the alert `anomaly`: every action on it still waiting for its
    /// verdict is healed. `details` are built only when some case of the map verifies.
    pub fn resolved(&self, anomaly: &str, details: impl FnOnce() -> Details) {
        let snapshot = self.map.load();
        if !snapshot.map.verifies {
            return;
        }
        let details = details();
        for reflex in snapshot.map.candidates(anomaly) {
            // Each verifying case's key: the window is under the key of the case that opened it.
            for case in reflex.cases().filter(|case| case.verify.is_some()) {
                let key = case.key_for(anomaly, &details);
                for done in self.rails.resolve(&reflex.key, &key, anomaly) {
                    self.verified(&done);
                }
            }
        }
    }

    /// Starts the sweeper: it judges each quiet verification window as it ends, ends each
    /// silence as it runs out and, once every `SWEEP_INTERVAL`, forgets idle rail state. It
    /// sleeps until the earliest of these, so it costs nothing while there is nothing to do; it
    /// runs until the runtime stops.
    pub fn spawn_sweeper(&self) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.sweep_forever().await })
    }

    async fn sweep_forever(self) {
        let mut housekeeping_at = Instant::now() + SWEEP_INTERVAL;
        loop {
            let wake = [self.rails.next_deadline(), self.silences.next_end()]
                .into_iter()
                .flatten()
                .fold(housekeeping_at, Instant::min);
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                // A window that ends sooner opened: sleep again, until it ends.
                () = self.sweeper.notified() => continue,
            }
            let now = Instant::now();
            // At most `MAX_SILENCES`: one batch.
            for ended in self.silences.expire_due(now) {
                records::silence_expired(&self.log, &ended, EXPIRED_BY_TIME);
            }
            let mut housekeeping = now >= housekeeping_at;
            if housekeeping {
                housekeeping_at = now + SWEEP_INTERVAL;
            }
            // Bounded batches, so a storm of windows ending together never holds the lock long.
            loop {
                let verified = self.rails.sweep(now, std::mem::take(&mut housekeeping));
                for done in &verified {
                    self.verified(done);
                }
                if verified.len() < MAX_VERDICTS_PER_SWEEP {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
    }

    /// Actions the global budget allows now; `None` while the map sets none. For
    /// `autohealer_budget_remaining`, read at each scrape.
    pub fn budget_remaining(&self) -> Option<u32> {
        let budget = self.map.load().map.limits.actions?;
        Some(self.rails.budget_remaining(budget, Instant::now()))
    }
}
