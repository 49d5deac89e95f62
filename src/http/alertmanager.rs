//! `POST /alertmanager` (SPEC §2): Prometheus Alertmanager's webhook payload (version 4), taken as
//! Alertmanager sends it, turned into anomalies for the same dispatcher `/anomaly` uses.
//!
//! Alertmanager delivers at least once and re-sends every alert still firing with each group
//! notification, so `AlertReceiver` remembers which alerts (by `fingerprint` and `startsAt`) it
//! has acted on and answers `duplicate` for the rest. The memory lives in the server's state,
//! outside the reflex map, so a reload does not forget it; it is bounded, least recently seen
//! first out, and so is each key: a fingerprint must be Alertmanager's 16 hex digits and a
//! `startsAt` a timestamp's length, or the alert is `invalid` (SPEC §8). The memory is kept in
//! the state file (SPEC §9), so a restart does not act on a re-sent alert twice. A `resolved`
//! alert runs nothing, but heals the actions still waiting for their verdict on it (SPEC §9
//! "Verification").

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use indexmap::IndexMap;
use lru::LruCache;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use slog::Logger;

use crate::anomaly::{validate_name, Anomaly, Details, JsonObject, Source};
use crate::dispatch::{Answer, DispatchOutcome, Dispatcher};
use crate::log::json::write_string;
use crate::log::records;
use crate::rails::state::{Changes, Clock, Persisted};

/// The webhook payload version this module reads (Alertmanager 0.x sends "4").
pub const PAYLOAD_VERSION: &str = "4";

/// Alerts remembered as acted on. Re-sends come within `repeat_interval` (hours), and a host
/// sees far fewer distinct alerts than this in that time; each entry is two short strings.
pub const ALERT_MEMORY_ENTRIES: NonZeroUsize = NonZeroUsize::new(4096).expect("not zero");

/// The longest `startsAt` taken: Go's RFC 3339 with nanoseconds and an offset is 35 bytes.
pub const MAX_STARTS_AT_BYTES: usize = 64;

/// The webhook body; group-level fields (`receiver`, `groupLabels`, ...) are not needed.
#[derive(Debug, Deserialize)]
struct Payload {
    version: Option<String>,
    alerts: Vec<Alert>,
}

/// One alert of a notification, with the fields Alertmanager always sends.
#[derive(Debug, Deserialize)]
struct Alert {
    status: AlertStatus,
    labels: IndexMap<String, String>,
    #[serde(default)]
    annotations: IndexMap<String, String>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    fingerprint: String,
    #[serde(rename = "generatorURL", default)]
    generator_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AlertStatus {
    Firing,
    Resolved,
}

impl Alert {
    /// The anomaly name: the `anomaly` label, else `alertname`. An empty label counts as absent,
    /// as it does in Prometheus.
    fn name(&self) -> Result<String, String> {
        let label = ["anomaly", "alertname"]
            .into_iter()
            .find_map(|key| Some((key, self.labels.get(key).filter(|v| !v.is_empty())?)));
        let Some((key, name)) = label else {
            return Err("the alert has neither an `anomaly` nor an `alertname` label".into());
        };
        validate_name(name).map_err(|why| format!("the `{key}` label {why}"))?;
        Ok(name.clone())
    }

    /// The anomaly name and the alert's fingerprint, once the alert is known to be usable:
    /// named, and with Alertmanager's identity to tell a re-sent copy by, each within bounds.
    fn checked(&self) -> Result<(String, u64), String> {
        let name = self.name()?;
        let fingerprint = parse_fingerprint(&self.fingerprint).ok_or_else(|| {
            "the alert's `fingerprint` is not 16 hexadecimal digits as Alertmanager writes it, \
             so a re-sent copy could not be told apart"
                .to_string()
        })?;
        if self.starts_at.len() > MAX_STARTS_AT_BYTES {
            return Err(format!(
                "the alert's `startsAt` is {} bytes long; a timestamp has at most {MAX_STARTS_AT_BYTES}",
                self.starts_at.len()
            ));
        }
        Ok((name, fingerprint))
    }

    /// The details of the anomaly this alert stands for, in Alertmanager's own names. Built
    /// only for an alert that will be acted on: resolved and re-sent alerts never need them.
    fn details(&self) -> Details {
        let strings = |map: &IndexMap<String, String>| -> JsonObject {
            map.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect()
        };
        let mut details = JsonObject::new();
        details.insert("labels".into(), Value::Object(strings(&self.labels)));
        details.insert(
            "annotations".into(),
            Value::Object(strings(&self.annotations)),
        );
        details.insert("startsAt".into(), Value::String(self.starts_at.clone()));
        details.insert(
            "fingerprint".into(),
            Value::String(self.fingerprint.clone()),
        );
        details.insert(
            "generatorURL".into(),
            Value::String(self.generator_url.clone()),
        );
        Details::from_object(details)
    }
}

/// An Alertmanager fingerprint (`%016x` of a 64-bit hash) as its number; `None` for anything else.
fn parse_fingerprint(text: &str) -> Option<u64> {
    // `from_str_radix` alone would also take a sign or fewer digits.
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// Parses a webhook body; the error is the message for a 400 answer.
fn parse(body: &[u8]) -> Result<Vec<Alert>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|err| format!("the body is not valid JSON: {err}"))?;
    let not_a_payload =
        |why: String| format!("the body is not an Alertmanager webhook payload: {why}");
    if !value.is_object() {
        return Err(not_a_payload("expected a JSON object with `alerts`".into()));
    }
    let payload: Payload =
        serde_json::from_value(value).map_err(|err| not_a_payload(err.to_string()))?;
    match payload.version.as_deref() {
        None | Some(PAYLOAD_VERSION) => Ok(payload.alerts),
        Some(other) => Err(not_a_payload(format!(
            "version {other:?} is not supported; AutoHealer reads version {PAYLOAD_VERSION}"
        ))),
    }
}

/// One alert of a payload as `parse_payload` gives it: its anomaly name and details, or why it
/// has none.
pub type ParsedAlert = Result<(String, Details), String>;

/// Everything `AlertReceiver::receive` derives from a body before it dispatches: the alerts, and
/// each one's anomaly name and details (or why it has none). Public for the fuzz targets
/// (`fuzz/`), which feed it arbitrary bytes; the server goes through `receive`.
pub fn parse_payload(body: &[u8]) -> Result<Vec<ParsedAlert>, String> {
    let alerts = parse(body)?;
    Ok(alerts
        .iter()
        .map(|alert| Ok((alert.checked()?.0, alert.details())))
        .collect())
}

/// What became of one alert, in the order of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertResult {
    /// A firing alert went to the dispatcher, as an anomaly from `/anomaly` would.
    Dispatched {
        anomaly: String,
        outcome: DispatchOutcome,
    },
    /// A resolved alert: logged, not acted on.
    Resolved { anomaly: String },
    /// A firing alert already acted on: nothing runs twice.
    Duplicate { anomaly: String },
    /// An alert that cannot become an anomaly; the rest of the payload is still handled.
    Invalid { error: String },
}

impl AlertResult {
    /// The result object in the `results` list of the answer, appended to `out`: the anomaly
    /// answer `/anomaly` gives, or `{"status":"invalid","error":...}` for an alert that is none.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            AlertResult::Dispatched { anomaly, outcome } => outcome.answer(anomaly).write_json(out),
            AlertResult::Resolved { anomaly } => {
                Answer::status("resolved", anomaly).write_json(out)
            }
            AlertResult::Duplicate { anomaly } => {
                Answer::status("duplicate", anomaly).write_json(out)
            }
            AlertResult::Invalid { error } => {
                out.extend_from_slice(b"{\"status\":\"invalid\",\"error\":");
                write_string(out, error);
                out.push(b'}');
            }
        }
    }
}

/// Identifies one firing of one alert, by fingerprint and `startsAt` (a re-fire after
/// resolution has a new `startsAt`): at most 8 + `MAX_STARTS_AT_BYTES` bytes of key each.
type AlertKey = (u64, String);

/// Turns webhook payloads into dispatches, remembering the alerts it has acted on.
pub struct AlertReceiver {
    /// Alerts whose anomaly was dispatched (or is being dispatched), least recently seen first.
    acted_on: Mutex<LruCache<AlertKey, ()>>,
    /// Set when `acted_on` changes, for the state file.
    changes: Changes,
}

impl AlertReceiver {
    /// A receiver that remembers up to `entries` alerts.
    pub fn new(entries: NonZeroUsize) -> AlertReceiver {
        AlertReceiver {
            acted_on: Mutex::new(LruCache::new(entries)),
            changes: Changes::default(),
        }
    }

    /// Handles one webhook body: `Err` (a 400 message) when it is not Alertmanager's, otherwise
    /// one result per alert. A malformed payload acts on nothing: it is parsed whole first.
    pub fn receive(
        &self,
        body: &[u8],
        dispatcher: &Dispatcher,
        log: &Logger,
    ) -> Result<Vec<AlertResult>, String> {
        let alerts = parse(body)?;
        Ok(alerts
            .into_iter()
            .map(|alert| self.handle(alert, dispatcher, log))
            .collect())
    }

    fn handle(&self, alert: Alert, dispatcher: &Dispatcher, log: &Logger) -> AlertResult {
        let (name, fingerprint) = match alert.checked() {
            Ok(checked) => checked,
            Err(error) => {
                records::alert_invalid(log, &alert.fingerprint, &error);
                return AlertResult::Invalid { error };
            }
        };
        if alert.status == AlertStatus::Resolved {
            records::alert_resolved(log, &name, &alert.fingerprint, &alert.starts_at);
            // Nothing runs, but an action waiting for its verdict on this alert is healed.
            dispatcher.resolved(&name, || alert.details());
            return AlertResult::Resolved { anomaly: name };
        }
        let key = (fingerprint, alert.starts_at.clone());
        // Claiming the key before dispatching makes two concurrent deliveries of one alert (a
        // retry racing the original) act once.
        if !self.claim(&key) {
            records::alert_duplicate(log, &name, &alert.fingerprint, &alert.starts_at);
            return AlertResult::Duplicate { anomaly: name };
        }
        let anomaly = Anomaly {
            name: Arc::from(name.as_str()),
            details: alert.details(),
        };
        let outcome = dispatcher.dispatch(anomaly, Source::Alertmanager);
        if !matches!(outcome, DispatchOutcome::Dispatched { .. }) {
            // Nothing was acted on: a re-send may match a reflex added since, so let it through.
            self.lock().pop(&key);
            self.changes.mark();
        }
        AlertResult::Dispatched {
            anomaly: name,
            outcome,
        }
    }

    /// Records `key` as acted on; false when it already was (which refreshes it).
    fn claim(&self, key: &AlertKey) -> bool {
        // `put` refreshes a key already there and says whether it was.
        self.changes.mark();
        self.lock().put(key.clone(), ()).is_none()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<AlertKey, ()>> {
        // The cache holds no invariant a panicking holder could break.
        self.acted_on.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The memory in the state file: `[fingerprint, startsAt]` pairs, the fingerprint in
/// Alertmanager's 16 hex digits, least recently seen first.
impl Persisted for AlertReceiver {
    fn name(&self) -> &'static str {
        "alerts"
    }

    fn take_changed(&self) -> bool {
        self.changes.take()
    }

    fn save(&self, _clock: &Clock) -> serde_json::Result<Box<RawValue>> {
        let memory = self.lock();
        let keys: Vec<(String, &str)> = memory
            .iter()
            .rev()
            .map(|((fingerprint, starts_at), ())| {
                (format!("{fingerprint:016x}"), starts_at.as_str())
            })
            .collect();
        serde_json::value::to_raw_value(&keys)
    }

    fn restore(&self, saved: &RawValue, _clock: &Clock) -> Result<(), String> {
        let keys: Vec<(String, String)> =
            serde_json::from_str(saved.get()).map_err(|e| e.to_string())?;
        let mut memory = self.lock();
        memory.clear();
        // Keys that are not Alertmanager's are dropped; the cache keeps its bound, so the most
        // recent keys stay.
        for (fingerprint, starts_at) in keys {
            let fingerprint = (fingerprint.len() == 16)
                .then(|| u64::from_str_radix(&fingerprint, 16).ok())
                .flatten();
            if let Some(fingerprint) =
                fingerprint.filter(|_| starts_at.len() <= MAX_STARTS_AT_BYTES)
            {
                memory.put((fingerprint, starts_at), ());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn alert(labels: Value) -> Value {
        json!({
            "status": "firing",
            "labels": labels,
            "annotations": {"summary": "nginx is down"},
            "startsAt": "2024-05-01T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "fingerprint": "4f6cb5ae4e6d3a8f",
        })
    }

    fn parse_one(alert: Value) -> Alert {
        let body = json!({"version": "4", "status": "firing", "alerts": [alert]});
        parse(body.to_string().as_bytes()).unwrap().remove(0)
    }

    #[test]
    fn the_anomaly_label_wins_over_alertname() {
        let both = parse_one(alert(
            json!({"alertname": "NginxDown", "anomaly": "nginx.web1.down"}),
        ));
        assert_eq!(both.name().unwrap(), "nginx.web1.down");
        let only = parse_one(alert(json!({"alertname": "NginxDown"})));
        assert_eq!(only.name().unwrap(), "NginxDown");
        let empty = parse_one(alert(json!({"alertname": "NginxDown", "anomaly": ""})));
        assert_eq!(empty.name().unwrap(), "NginxDown");
        let none = parse_one(alert(json!({"job": "nginx"})));
        assert_eq!(
            none.name().unwrap_err(),
            "the alert has neither an `anomaly` nor an `alertname` label"
        );
        let long = parse_one(alert(json!({"anomaly": "x".repeat(300)})));
        assert_eq!(
            long.name().unwrap_err(),
            "the `anomaly` label is 300 characters long; the limit is 256"
        );
    }

    #[test]
    fn details_carry_labels_annotations_and_identity() {
        let details =
            parse_one(alert(json!({"alertname": "NginxDown", "instance": "web1"}))).details();
        assert_eq!(
            Value::Object(details.object().clone()),
            json!({
                "labels": {"alertname": "NginxDown", "instance": "web1"},
                "annotations": {"summary": "nginx is down"},
                "startsAt": "2024-05-01T10:00:00Z",
                "fingerprint": "4f6cb5ae4e6d3a8f",
                "generatorURL": "http://prometheus/graph",
            })
        );
    }

    #[test]
    fn payloads_that_are_not_alertmanagers_say_why() {
        let err = |body: &str| parse(body.as_bytes()).unwrap_err();
        assert_eq!(
            err("{\"alerts\": "),
            "the body is not valid JSON: EOF while parsing a value at line 1 column 11"
        );
        assert_eq!(
            err("[]"),
            "the body is not an Alertmanager webhook payload: expected a JSON object with `alerts`"
        );
        assert_eq!(
            err(r#"{"version": "4"}"#),
            "the body is not an Alertmanager webhook payload: missing field `alerts`"
        );
        assert_eq!(
            err(r#"{"alerts": {}}"#),
            "the body is not an Alertmanager webhook payload: invalid type: map, expected a sequence"
        );
        assert_eq!(
            err(r#"{"alerts": [{"status": "pending", "labels": {}, "startsAt": "", "fingerprint": ""}]}"#),
            "the body is not an Alertmanager webhook payload: unknown variant `pending`, expected `firing` or `resolved`"
        );
        assert_eq!(
            err(r#"{"alerts": [{"status": "firing", "labels": {"a": 1}, "startsAt": "", "fingerprint": ""}]}"#),
            "the body is not an Alertmanager webhook payload: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            err(r#"{"version": "3", "alerts": []}"#),
            "the body is not an Alertmanager webhook payload: version \"3\" is not supported; AutoHealer reads version 4"
        );
        assert!(parse(br#"{"alerts": []}"#).unwrap().is_empty());
    }

    #[test]
    fn fingerprints_and_start_times_are_checked_before_they_are_remembered() {
        let with = |fingerprint: &str, starts_at: &str| {
            let mut alert = alert(json!({"alertname": "NginxDown"}));
            alert["fingerprint"] = json!(fingerprint);
            alert["startsAt"] = json!(starts_at);
            parse_one(alert).checked()
        };
        let now = "2024-05-01T10:00:00.123456789+02:00";
        assert_eq!(
            with("4f6cb5ae4e6d3a8f", now),
            Ok(("NginxDown".into(), 0x4f6c_b5ae_4e6d_3a8f))
        );
        assert_eq!(
            with("4F6CB5AE4E6D3A8F", now).unwrap().1,
            0x4f6c_b5ae_4e6d_3a8f
        );
        let not_a_fingerprint = "the alert's `fingerprint` is not 16 hexadecimal digits as \
                                 Alertmanager writes it, so a re-sent copy could not be told apart";
        for bad in [
            "",
            "01",
            "+f6cb5ae4e6d3a8f",
            "4f6cb5ae4e6d3a8g",
            "4f6cb5ae4e6d3a8f0",
            "é",
        ] {
            assert_eq!(with(bad, now).unwrap_err(), not_a_fingerprint, "{bad:?}");
        }
        assert_eq!(
            with("4f6cb5ae4e6d3a8f", &"9".repeat(65)).unwrap_err(),
            "the alert's `startsAt` is 65 bytes long; a timestamp has at most 64"
        );
    }

    #[test]
    fn the_memory_comes_back_in_its_order_from_the_state_file() {
        let receiver = AlertReceiver::new(NonZeroUsize::new(2).unwrap());
        let key = |n: u8| (u64::from(n), "t".to_string());
        receiver.claim(&key(1));
        receiver.claim(&key(2));
        receiver.claim(&key(1)); // 2 is now the least recent
        assert!(receiver.take_changed());
        let saved = receiver.save(&Clock::now()).unwrap();
        assert_eq!(
            saved.get(),
            r#"[["0000000000000002","t"],["0000000000000001","t"]]"#
        );
        let restored = AlertReceiver::new(NonZeroUsize::new(2).unwrap());
        restored.restore(&saved, &Clock::now()).unwrap();
        assert!(!restored.claim(&key(1)));
        assert!(restored.claim(&key(3)), "evicts 2, still the least recent");
        assert!(restored.claim(&key(2)));
        let bad = RawValue::from_string(r#"{"a": 1}"#.into()).unwrap();
        assert!(restored.restore(&bad, &Clock::now()).is_err());
    }

    #[test]
    fn the_memory_is_bounded_and_refreshed_by_use() {
        let receiver = AlertReceiver::new(NonZeroUsize::new(2).unwrap());
        let key = |n: u8| (u64::from(n), "t".to_string());
        assert!(receiver.claim(&key(1)));
        assert!(receiver.claim(&key(2)));
        assert!(
            !receiver.claim(&key(1)),
            "1 is remembered, and now most recent"
        );
        assert!(receiver.claim(&key(3)), "evicts 2, the least recently seen");
        assert!(!receiver.claim(&key(1)));
        assert!(receiver.claim(&key(2)), "2 was forgotten");
    }
}
