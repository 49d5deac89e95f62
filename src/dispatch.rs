//! From an anomaly to a running healing action: one snapshot of the map, one match, the safety
//! rails, one triggered record, then the action on the task tracker so shutdown can wait for it.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use slog::Logger;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::{ContextV7, Timestamp, Uuid};

use crate::actions::{self, ActionReport, ActionRun, Source};
use crate::details::Details;
use crate::history::ActionHistory;
use crate::json_log;
use crate::matcher;
use crate::rails::{Permit, Rails, SuppressReason};
use crate::records;
use crate::reload::MapHandle;

/// An anomaly as a monitor reported it.
#[derive(Debug)]
pub struct Anomaly {
    /// Shared, not copied, by the action, its history entry and the answer.
    pub name: Arc<str>,
    pub details: Details,
}

impl Anomaly {
    /// Parses a `POST /anomaly` body; the error is the message for a 400 answer.
    pub fn from_json(body: &[u8]) -> Result<Anomaly, String> {
        // Other top-level fields are ignored (SPEC §2), which serde does without building them.
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            name: Option<NameField<'a>>,
            #[serde(borrow)]
            details: Option<&'a RawValue>,
        }
        let not_an_object = || {
            "the body must be a JSON object like {\"name\": \"...\", \"details\": {...}}"
                .to_string()
        };
        // Checked as UTF-8 once, in bulk, so serde_json need not check each string it reads.
        // (JSON is UTF-8, RFC 8259; a body that is not is refused, whatever field it is in.)
        let text = std::str::from_utf8(body)
            .map_err(|err| format!("the body is not valid JSON: it is not UTF-8 ({err})"))?;
        let parsed: Result<Body, _> = serde_json::from_str(text);
        // serde also accepts a struct written as an array; the contract says object.
        let is_object = text.trim_ascii_start().starts_with('{');
        let body = match parsed {
            Ok(body) if is_object => body,
            Ok(_) => return Err(not_an_object()),
            Err(err) if err.is_data() => return Err(not_an_object()),
            Err(err) => return Err(unreadable(text, is_object, &err)),
        };
        let name: Arc<str> = match body.name {
            // `name: null` reaches here as `None`, like a body without a name.
            None => return Err("`name` is required".into()),
            Some(NameField::Text(name)) => Arc::from(name),
            Some(NameField::NotText) => return Err("`name` must be a string".into()),
        };
        matcher::validate_name(&name).map_err(|why| format!("`name` {why}"))?;
        // `details: null` reaches here as `None`, like a body without details.
        let details = match body.details {
            None => Details::empty(),
            Some(text) => Details::from_json(text)?,
        };
        Ok(Anomaly { name, details })
    }
}

/// The message for a body serde_json could not read. A number no `f64` holds (`1e400`) is valid
/// JSON that serde_json will not read as a value: as a `name` it is simply not a string, as the
/// first pass over raw tokens, which does not read numbers, tells.
fn unreadable(text: &str, is_object: bool, err: &serde_json::Error) -> String {
    #[derive(Deserialize)]
    struct RawName<'a> {
        #[serde(borrow)]
        name: Option<&'a RawValue>,
    }
    match serde_json::from_str::<RawName>(text) {
        Ok(RawName { name: Some(token) }) if is_object && !token.get().starts_with('"') => {
            "`name` must be a string".into()
        }
        _ => format!("the body is not valid JSON: {err}"),
    }
}

/// The `name` of a `POST /anomaly` body as sent: a string, borrowed from the body when it has
/// no escapes, or any other JSON value, which gets its own 400 message rather than serde's.
enum NameField<'a> {
    Text(Cow<'a, str>),
    NotText,
}

impl<'de: 'a, 'a> Deserialize<'de> for NameField<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Field<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Field<'a> {
            type Value = NameField<'a>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("any JSON value")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(NameField::Text(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(NameField::Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(NameField::Text(Cow::Owned(text)))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(NameField::NotText)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(NameField::NotText)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(NameField::NotText)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(NameField::NotText)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
                while items.next_element::<IgnoredAny>()?.is_some() {}
                Ok(NameField::NotText)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Self::Value, A::Error> {
                while entries.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NameField::NotText)
            }
        }
        deserializer.deserialize_any(Field(PhantomData))
    }
}

/// Orders action ids within a millisecond, as `Uuid::now_v7` does with a context of its own.
static ACTION_IDS: Mutex<ContextV7> = Mutex::new(ContextV7::new());

/// A version 7 UUID for an action dispatched `at`: unique, sorting by dispatch time, and from
/// the clock reading the action's `received_at` holds (`now_v7` would read the clock again).
fn action_id(at: SystemTime) -> Uuid {
    action_id_in(&ACTION_IDS, at)
}

fn action_id_in(context: &Mutex<ContextV7>, at: SystemTime) -> Uuid {
    // A clock set before 1970 gives the epoch rather than failing the dispatch.
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let context = context.lock().unwrap_or_else(PoisonError::into_inner);
    let timestamp =
        Timestamp::from_unix(&*context, since_epoch.as_secs(), since_epoch.subsec_nanos());
    Uuid::new_v7(timestamp)
}

/// What happened to one anomaly, as the HTTP answer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchOutcome {
    Dispatched {
        workflow: Arc<str>,
        action_id: Uuid,
    },
    Suppressed {
        workflow: Arc<str>,
        reason: SuppressReason,
    },
    Unmatched,
    /// Shutdown has begun: nothing new starts, so the sender should try again later (503).
    ShuttingDown,
}

impl DispatchOutcome {
    /// The result object for `anomaly` (SPEC §2), the same from `/anomaly` and `/alertmanager`.
    pub fn answer<'a>(&'a self, anomaly: &'a str) -> Answer<'a> {
        let (status, workflow, action_id, reason) = match self {
            DispatchOutcome::Dispatched {
                workflow,
                action_id,
            } => ("dispatched", Some(workflow), Some(*action_id), None),
            DispatchOutcome::Suppressed { workflow, reason } => {
                ("suppressed", Some(workflow), None, Some(reason.as_str()))
            }
            DispatchOutcome::Unmatched => ("unmatched", None, None, None),
            DispatchOutcome::ShuttingDown => ("shutting_down", None, None, None),
        };
        Answer {
            status,
            anomaly,
            workflow: workflow.map(|name| &**name),
            action_id,
            reason,
        }
    }

    /// The result object as a JSON value, for answers that list several.
    pub fn to_json(&self, anomaly: &str) -> serde_json::Value {
        serde_json::to_value(self.answer(anomaly)).unwrap_or_default()
    }
}

/// The answer for one anomaly, serialized straight from borrowed parts (no JSON tree is built
/// on the hot path).
#[derive(Debug, Serialize)]
pub struct Answer<'a> {
    pub status: &'static str,
    pub anomaly: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl Answer<'_> {
    /// The object serde writes for this answer, written directly: the answer to every
    /// `POST /anomaly`, where serde_json's field-by-field serializer cost about 2,000
    /// instructions (issue 5, callgrind). A test holds the two to the same text.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // `status`, `reason` and the action id are words and hex of the daemon's own, with
        // nothing to escape; only the names can hold anything.
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"{\"status\":\"");
        out.extend_from_slice(self.status.as_bytes());
        out.extend_from_slice(b"\",\"anomaly\":");
        json_log::write_string(&mut out, self.anomaly);
        if let Some(workflow) = self.workflow {
            out.extend_from_slice(b",\"workflow\":");
            json_log::write_string(&mut out, workflow);
        }
        if let Some(action_id) = self.action_id {
            out.extend_from_slice(b",\"action_id\":\"");
            out.extend_from_slice(
                action_id
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer())
                    .as_bytes(),
            );
            out.push(b'"');
        }
        if let Some(reason) = self.reason {
            out.extend_from_slice(b",\"reason\":\"");
            out.extend_from_slice(reason.as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
        out
    }
}

/// Matches anomalies against the map in force, applies the rails and starts the actions.
#[derive(Clone)]
pub struct Dispatcher {
    map: MapHandle,
    log: Logger,
    rails: Rails,
    history: ActionHistory,
    /// Every running action, so shutdown can wait for each 202 to get its finished record.
    tracker: TaskTracker,
    /// Fired when shutdown runs out of time: running actions stop and report `failed`.
    cancel: CancellationToken,
    /// False once shutdown waits for the tracker. Dispatch holds the read side from its check to
    /// its spawn, so no action can start after the wait began and die without its record.
    accepting: Arc<RwLock<bool>>,
    dry_run: bool,
}

impl Dispatcher {
    /// A dispatcher reading `map`, logging to `log` and running actions on `tracker`.
    pub fn new(
        map: MapHandle,
        log: Logger,
        tracker: TaskTracker,
        cancel: CancellationToken,
        dry_run: bool,
    ) -> Dispatcher {
        Dispatcher {
            map,
            log,
            rails: Rails::default(),
            history: ActionHistory::default(),
            tracker,
            cancel,
            accepting: Arc::new(RwLock::new(true)),
            dry_run,
        }
    }

    /// Stops starting actions (later anomalies get `ShuttingDown`); returns once no dispatch is
    /// between its check and its spawn, so the tracker's count is final.
    pub fn stop_accepting(&self) {
        *self.accepting.write().unwrap_or_else(|p| p.into_inner()) = false;
    }

    /// The history behind `GET /actions`.
    pub fn history(&self) -> &ActionHistory {
        &self.history
    }

    /// Matches `anomaly`; when a reflex matches and the rails admit it, writes the triggered
    /// record and starts the action.
    pub fn dispatch(&self, anomaly: Anomaly, source: Source) -> DispatchOutcome {
        let accepting = self.accepting.read().unwrap_or_else(|p| p.into_inner());
        if !*accepting {
            return DispatchOutcome::ShuttingDown;
        }
        // One load per anomaly: match, workflow and version all come from the same snapshot.
        let snapshot = self.map.load();
        let Some((reflex, workflow)) = snapshot.map.lookup(&anomaly.name) else {
            records::unmatched(&self.log, &anomaly.name, source);
            return DispatchOutcome::Unmatched;
        };
        let admitted_at = Instant::now();
        let permit = match self
            .rails
            .admit(&anomaly.name, reflex, workflow, admitted_at)
        {
            Ok(permit) => permit,
            Err(reason) => {
                records::action_suppressed(
                    &self.log,
                    &anomaly.name,
                    &workflow.name,
                    reason,
                    source,
                );
                return DispatchOutcome::Suppressed {
                    workflow: workflow.name.clone(),
                    reason,
                };
            }
        };
        let received_at = SystemTime::now();
        let run = ActionRun {
            action_id: action_id(received_at),
            anomaly: anomaly.name,
            workflow: workflow.clone(),
            details: Arc::new(anomaly.details),
            params: reflex.params.clone(),
            source,
            map_version: snapshot.version.clone(),
            dry_run: self.dry_run,
            received_at,
        };
        drop(snapshot);
        records::action_triggered(&self.log, &run);
        self.history.started(&run);
        let outcome = DispatchOutcome::Dispatched {
            workflow: run.workflow.name.clone(),
            action_id: run.action_id,
        };
        // A log-only action (or a dry run) is over as soon as it starts: finish it here rather
        // than pay for a task (issue 5).
        if let Some(report) = actions::run_at_once(&run) {
            // Over within microseconds of its admission: the same instant serves both (a
            // breaker failure may so be recorded a few microseconds early, which no window
            // measured in seconds can tell).
            self.finish(&run, permit, &report, admitted_at);
            return outcome;
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            let report = actions::run(&run, &this.cancel).await;
            this.finish(&run, permit, &report, Instant::now());
        });
        outcome
    }

    /// Releases the rails, updates the history and writes the finished record.
    fn finish(&self, run: &ActionRun, permit: Permit, report: &ActionReport, now: Instant) {
        let breaker = run.workflow.breaker;
        if let Some(opened) = self.rails.finish(permit, report.outcome, breaker, now) {
            records::circuit_opened(&self.log, &run.workflow.name, &opened);
        }
        self.history.finished(run.action_id, report);
        records::action_finished(&self.log, run, report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_starts_once_shutdown_stops_accepting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.yml");
        std::fs::write(&path, "workflows: {page: {}}\nreflexes: {a: page}\n").unwrap();
        let loaded = crate::reload::load(&path, 1).unwrap();
        let map = Arc::new(arc_swap::ArcSwap::from_pointee(loaded));
        let log = Logger::root(slog::Discard, slog::o!());
        let tracker = TaskTracker::new();
        let dispatcher =
            Dispatcher::new(map, log, tracker.clone(), CancellationToken::new(), false);
        let anomaly = || Anomaly::from_json(br#"{"name":"a"}"#).unwrap();
        assert!(matches!(
            dispatcher.dispatch(anomaly(), Source::Http),
            DispatchOutcome::Dispatched { .. }
        ));
        dispatcher.stop_accepting();
        assert_eq!(
            dispatcher.dispatch(anomaly(), Source::Http),
            DispatchOutcome::ShuttingDown
        );
        tracker.close();
        tracker.wait().await;
        assert_eq!(dispatcher.history().newest(10).len(), 1);
    }

    #[test]
    fn action_ids_are_version_7_and_sort_in_dispatch_order() {
        // A context of its own: the daemon's is shared with tests dispatching in parallel.
        let context = Mutex::new(ContextV7::new());
        let action_id = |at| action_id_in(&context, at);
        let at = SystemTime::now();
        // Many in one millisecond: the context's counter keeps them in order.
        let ids: Vec<Uuid> = (0..1000).map(|_| action_id(at)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(ids[0].get_version_num(), 7);
        let millis = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let (seconds, nanos) = ids[0].get_timestamp().unwrap().to_unix();
        assert_eq!(seconds * 1000 + u64::from(nanos) / 1_000_000, millis);
        assert!(action_id(at + std::time::Duration::from_secs(1)) > ids[999]);
    }

    #[test]
    fn answers_written_directly_are_what_serde_writes() {
        let mut outcomes = vec![
            DispatchOutcome::Dispatched {
                workflow: Arc::from("page"),
                action_id: Uuid::now_v7(),
            },
            DispatchOutcome::Unmatched,
            DispatchOutcome::ShuttingDown,
        ];
        // Every reason: their words are written without an escape check.
        let reasons = [
            SuppressReason::Cooldown,
            SuppressReason::InFlight,
            SuppressReason::CircuitOpen,
        ];
        outcomes.extend(reasons.map(|reason| DispatchOutcome::Suppressed {
            workflow: Arc::from("restart \"nginx\""),
            reason,
        }));
        for outcome in &outcomes {
            let answer = outcome.answer("disk.\u{7}\"root\".full");
            let ours = String::from_utf8(answer.to_json_bytes()).unwrap();
            assert_eq!(ours, serde_json::to_string(&answer).unwrap());
        }
    }

    #[test]
    fn anomaly_bodies_parse() {
        let anomaly = Anomaly::from_json(
            br#"{"name":"api_latency.coinbase.high","details":{"latency_ms":5000},"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(&*anomaly.name, "api_latency.coinbase.high");
        // A name with escapes is unescaped; spacing around it does not matter.
        let escaped = Anomaly::from_json(br#"{ "name" :  "caf\u00e9.\"x\"" }"#).unwrap();
        assert_eq!(&*escaped.name, "café.\"x\"");
        assert_eq!(anomaly.details.object()["latency_ms"], 5000);
        assert!(Anomaly::from_json(br#"{"name":"a"}"#)
            .unwrap()
            .details
            .object()
            .is_empty());
        assert!(Anomaly::from_json(br#"{"name":"a","details":null}"#).is_ok());
    }

    #[test]
    fn bad_anomaly_bodies_say_what_is_wrong() {
        let err = |body: &[u8]| Anomaly::from_json(body).unwrap_err();
        assert_eq!(
            err(b"{\"name\": "),
            "the body is not valid JSON: EOF while parsing a value at line 1 column 9"
        );
        assert_eq!(
            err(b"[1,2]"),
            "the body must be a JSON object like {\"name\": \"...\", \"details\": {...}}"
        );
        assert_eq!(
            err(b"{\"name\": \"caf\xe9\"}"),
            "the body is not valid JSON: it is not UTF-8 \
             (invalid utf-8 sequence of 1 bytes from index 13)"
        );
        assert_eq!(err(b"{}"), "`name` is required");
        assert_eq!(err(br#"{"name": null}"#), "`name` is required");
        assert_eq!(err(br#"{"name": ["a"]}"#), "`name` must be a string");
        assert_eq!(
            err(br#"{"name": "a\ud800"}"#),
            "the body is not valid JSON: unexpected end of hex escape at line 1 column 18"
        );
        for not_text in [
            "5",
            "1.5",
            "-1",
            "1e400",
            "true",
            "{}",
            r#"{"a": [1]}"#,
            "[]",
        ] {
            assert_eq!(
                err(format!(r#"{{"name": {not_text}, "details": {{}}}}"#).as_bytes()),
                "`name` must be a string",
                "{not_text}"
            );
        }
        assert_eq!(err(br#"{"name": ""}"#), "`name` must not be empty");
        // C0 controls, DEL, and (in a name that is not ASCII) C1 controls.
        for name in [r#""a\nb""#, r#""a\u007fb""#, r#""é\u0085""#] {
            assert_eq!(
                err(format!(r#"{{"name": {name}}}"#).as_bytes()),
                "`name` must not contain control characters",
                "{name}"
            );
        }
        assert!(Anomaly::from_json("{\"name\": \"café.grün\"}".as_bytes()).is_ok());
        assert_eq!(
            err(br#"{"name": "a", "details": [1]}"#),
            "`details` must be a JSON object"
        );
    }
}
