//! What the caller is told about one anomaly (SPEC §2): the same object from `POST /anomaly`
//! and in `POST /alertmanager`'s `results`, written in one place.

use std::sync::Arc;

use uuid::Uuid;

use crate::actions::ActionId;
use crate::log::json::write_string;
use crate::rails::SuppressReason;

/// What happened to one anomaly, as the HTTP answer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchOutcome {
    Dispatched {
        workflow: Arc<str>,
        action_id: ActionId,
    },
    Suppressed {
        workflow: Arc<str>,
        reason: SuppressReason,
    },
    /// Held back by an operator's silence: `suppressed`, reason `silenced`, and its id.
    Silenced {
        workflow: Arc<str>,
        silence_id: Uuid,
    },
    Unmatched,
    /// Shutdown has begun: nothing new starts, so the sender should try again later (503).
    ShuttingDown,
}

impl DispatchOutcome {
    /// The result object for `anomaly` (SPEC §2).
    pub fn answer<'a>(&'a self, anomaly: &'a str) -> Answer<'a> {
        let answer = Answer::status(self.status(), anomaly);
        match self {
            DispatchOutcome::Dispatched {
                workflow,
                action_id,
            } => Answer {
                workflow: Some(workflow),
                action_id: Some(action_id.as_str()),
                ..answer
            },
            DispatchOutcome::Suppressed { workflow, reason } => Answer {
                workflow: Some(workflow),
                reason: Some(reason.as_str()),
                ..answer
            },
            DispatchOutcome::Silenced {
                workflow,
                silence_id,
            } => Answer {
                workflow: Some(workflow),
                reason: Some(SuppressReason::Silenced.as_str()),
                silence_id: Some(*silence_id),
                ..answer
            },
            DispatchOutcome::Unmatched | DispatchOutcome::ShuttingDown => answer,
        }
    }

    fn status(&self) -> &'static str {
        match self {
            DispatchOutcome::Dispatched { .. } => "dispatched",
            DispatchOutcome::Suppressed { .. } | DispatchOutcome::Silenced { .. } => "suppressed",
            DispatchOutcome::Unmatched => "unmatched",
            DispatchOutcome::ShuttingDown => "shutting_down",
        }
    }
}

/// The answer for one anomaly, borrowed from the outcome and the name; written as JSON by
/// `write_json` without building a JSON tree (the hot path of every `POST /anomaly`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer<'a> {
    /// `dispatched`, `suppressed`, `unmatched`, or Alertmanager's `resolved` and `duplicate`.
    pub status: &'static str,
    pub anomaly: &'a str,
    pub workflow: Option<&'a str>,
    /// Hyphenated, as `ActionId` keeps it.
    pub action_id: Option<&'a str>,
    pub reason: Option<&'static str>,
    /// The silence that held the anomaly back (reason `silenced`).
    pub silence_id: Option<Uuid>,
}

impl<'a> Answer<'a> {
    /// An answer with only a status, such as an Alertmanager alert that was `resolved`.
    pub fn status(status: &'static str, anomaly: &'a str) -> Answer<'a> {
        Answer {
            status,
            anomaly,
            workflow: None,
            action_id: None,
            reason: None,
            silence_id: None,
        }
    }

    /// The answer as a JSON object, appended to `out`. Written directly: serde_json's
    /// field-by-field serializer cost about 2,000 instructions per `POST /anomaly` (issue 5,
    /// callgrind).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // `status`, `reason` and the action id are words and hex of the daemon's own, with
        // nothing to escape; only the names can hold anything.
        write_plain(out, b"{\"status\":\"", self.status);
        out.extend_from_slice(b",\"anomaly\":");
        write_string(out, self.anomaly);
        if let Some(workflow) = self.workflow {
            out.extend_from_slice(b",\"workflow\":");
            write_string(out, workflow);
        }
        if let Some(action_id) = self.action_id {
            write_plain(out, b",\"action_id\":\"", action_id);
        }
        if let Some(reason) = self.reason {
            write_plain(out, b",\"reason\":\"", reason);
        }
        if let Some(silence_id) = self.silence_id {
            let mut buffer = Uuid::encode_buffer();
            let text = silence_id.hyphenated().encode_lower(&mut buffer);
            write_plain(out, b",\"silence_id\":\"", text);
        }
        out.push(b'}');
    }

    /// The answer as the whole body of a response.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        self.write_json(&mut out);
        out
    }
}

/// `key` (up to the opening quote), `text` as it is, and the closing quote: for the daemon's own
/// words and ids, which hold nothing to escape.
fn write_plain(out: &mut Vec<u8>, key: &[u8], text: &str) {
    out.extend_from_slice(key);
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn every_answer_is_the_json_object_the_contract_names() {
        let action_id = ActionId::new(Uuid::now_v7());
        let name = "disk.\u{7}\"root\".full";
        let workflow = "restart \"nginx\"";
        let parse = |outcome: &DispatchOutcome| -> Value {
            serde_json::from_slice(&outcome.answer(name).to_json_bytes()).unwrap()
        };
        let dispatched = DispatchOutcome::Dispatched {
            workflow: Arc::from(workflow),
            action_id,
        };
        assert_eq!(
            parse(&dispatched),
            json!({"status": "dispatched", "anomaly": name, "workflow": workflow,
                   "action_id": action_id.uuid().to_string()})
        );
        assert_eq!(
            parse(&DispatchOutcome::Unmatched),
            json!({"status": "unmatched", "anomaly": name})
        );
        assert_eq!(
            parse(&DispatchOutcome::ShuttingDown),
            json!({"status": "shutting_down", "anomaly": name})
        );
        // Every reason: their words are written without an escape check.
        for (reason, word) in [
            (SuppressReason::Cooldown, "cooldown"),
            (SuppressReason::InFlight, "in_flight"),
            (SuppressReason::CircuitOpen, "circuit_open"),
            (SuppressReason::Budget, "budget"),
        ] {
            let suppressed = DispatchOutcome::Suppressed {
                workflow: Arc::from(workflow),
                reason,
            };
            assert_eq!(
                parse(&suppressed),
                json!({"status": "suppressed", "anomaly": name, "workflow": workflow,
                       "reason": word})
            );
        }
        // The silence's reason comes with its id.
        let silence_id = Uuid::now_v7();
        let silenced = DispatchOutcome::Silenced {
            workflow: Arc::from(workflow),
            silence_id,
        };
        assert_eq!(
            parse(&silenced),
            json!({"status": "suppressed", "anomaly": name, "workflow": workflow,
                   "reason": "silenced", "silence_id": silence_id.to_string()})
        );
    }
}
