//! The raw schema of `reflex_map.yml`: serde types that mirror the YAML with
//! `deny_unknown_fields`. Every check on a single value (duration, pattern, URL, argv) runs here,
//! during deserialization, so serde_yaml attaches the line and column.
//!
//! The same types derive `JsonSchema`, so `autohealer schema` describes exactly what parses
//! (SPEC §10); the types whose deserialization is hand-written get their schema in
//! `json_schema`.

use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::time::Duration;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::conditions::When;
use super::matcher::{self, Pattern};
use super::{
    Action, Breaker, Budget, ExecAction, HeaderTemplate, Template, WebhookAction,
    DEFAULT_EXEC_TIMEOUT, DEFAULT_WEBHOOK_RETRIES, DEFAULT_WEBHOOK_TIMEOUT, MAX_BUDGET_ACTIONS,
};
use crate::anomaly::{validate_name, JsonObject};

mod json_schema;
pub use json_schema::reflex_map_schema;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "AutoHealer reflex map (reflex_map.yml)",
    description = "Which corrective workflow answers which anomaly. Unknown keys anywhere are errors."
)]
pub(super) struct RawFile {
    /// Settings that apply to every reflex.
    #[serde(default)]
    #[schemars(with = "Option<RawDefaults>")]
    pub(super) defaults: RawDefaults,
    /// Brakes across the whole map.
    #[serde(default)]
    #[schemars(with = "Option<RawLimits>")]
    pub(super) limits: RawLimits,
    /// `None` when the section is absent: the original format, where every workflow is log-only.
    /// An empty `workflows:` is `Some`: the file has opted in to declaring every workflow.
    #[serde(default, deserialize_with = "declared_section")]
    #[schemars(
        with = "DistinctMap<String, RawWorkflow>",
        description = "Every workflow a reflex names, by name: `{}` (log-only), `exec` or `webhook`, with optional rails. Without this section (the original format) every workflow named is log-only."
    )]
    pub(super) workflows: Option<DistinctMap<String, RawWorkflow>>,
    /// Anomaly name or pattern -> one case, or a list of cases tried in order. An exact name
    /// wins over patterns; otherwise the first pattern in file order that matches. `*` matches
    /// within one dot-separated segment, `?` one character of a segment, `**` any run including
    /// dots.
    #[serde(default)]
    pub(super) reflexes: DistinctMap<ReflexKey, RawReflex>,
    /// The original Python AutoHealer's list of exact names.
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawLegacyEntry>>")]
    pub(super) anomalies: Vec<RawLegacyEntry>,
}

fn declared_section<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DistinctMap<String, RawWorkflow>>, D::Error> {
    DistinctMap::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Defaults")]
pub(super) struct RawDefaults {
    /// After a dispatch, the same anomaly name (or `cooldown_key`) is held back for this long
    /// (default 0s).
    pub(super) cooldown: Option<DurationValue>,
}

/// `limits:`: brakes across the whole map (SPEC §9 "Budget").
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Limits")]
pub(super) struct RawLimits {
    /// At most `max` exec and webhook actions within any `within`, all workflows together
    /// (log-only actions are free); beyond it actions are suppressed with reason `budget`.
    pub(super) actions: Option<Budget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    max: NonZeroU32,
    within: DurationValue,
}

impl<'de> Deserialize<'de> for Budget {
    // Checked inside the visitor, so the error has the mapping's own position.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BudgetVisitor;
        impl<'de> Visitor<'de> for BudgetVisitor {
            type Value = Budget;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping with `max` and `within`")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Budget, A::Error> {
                let raw = RawBudget::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Budget::try_from(raw).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_map(BudgetVisitor)
    }
}

impl TryFrom<RawBudget> for Budget {
    type Error = String;
    fn try_from(raw: RawBudget) -> Result<Self, String> {
        // The budget remembers one instant per action in its window: bounded by `max`.
        if raw.max.get() > MAX_BUDGET_ACTIONS {
            return Err(format!(
                "`max` is {}; the limit is {MAX_BUDGET_ACTIONS} actions per window",
                raw.max
            ));
        }
        if raw.within.0.is_zero() {
            return Err("`within` must be longer than 0s".into());
        }
        Ok(Budget {
            max: raw.max.get(),
            within: raw.within.0,
        })
    }
}

/// A workflow as written: its action, already checked, and its rails.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawWorkflowFields")]
pub(super) struct RawWorkflow {
    pub(super) action: Action,
    pub(super) max_concurrent: u32,
    pub(super) breaker: Option<Breaker>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Workflow",
    description = "What a reflex starts: `{}` (log-only: the CRITICAL record is the action), `exec` or `webhook` (not both), with optional rails.",
    extend("not" = {"required": ["exec", "webhook"]})
)]
struct RawWorkflowFields {
    /// Run a local command, as an argv list (never through a shell).
    exec: Option<RawExec>,
    /// POST the anomaly as JSON, e.g. into an n8n workflow.
    webhook: Option<RawWebhook>,
    /// Runs of this workflow in flight at once (default 1); more are suppressed as `in_flight`.
    max_concurrent: Option<NonZeroU32>,
    /// Suspend the workflow after `failures` failed runs within `within`.
    breaker: Option<RawBreaker>,
}

impl TryFrom<RawWorkflowFields> for RawWorkflow {
    type Error = String;

    fn try_from(raw: RawWorkflowFields) -> Result<Self, String> {
        let action = match (raw.exec, raw.webhook) {
            (Some(_), Some(_)) => {
                return Err("a workflow has one action: give `exec` or `webhook`, not both".into())
            }
            (Some(exec), None) => Action::Exec(ExecAction {
                command: exec.command.0,
                timeout: exec.timeout.map_or(DEFAULT_EXEC_TIMEOUT, |t| t.0),
            }),
            (None, Some(hook)) => Action::Webhook(WebhookAction {
                shown_url: redact_url(&hook.url.0),
                url: hook.url.0,
                timeout: hook.timeout.map_or(DEFAULT_WEBHOOK_TIMEOUT, |t| t.0),
                retries: hook.retries.map_or(DEFAULT_WEBHOOK_RETRIES, |r| r.0),
                headers: hook.headers.0,
            }),
            (None, None) => Action::Log,
        };
        Ok(RawWorkflow {
            action,
            max_concurrent: raw.max_concurrent.map_or(1, NonZeroU32::get),
            breaker: raw.breaker.map(|b| Breaker {
                failures: b.failures.get(),
                within: b.within.0,
            }),
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Exec")]
struct RawExec {
    /// The program and its arguments. `{{anomaly}}`, `{{workflow}}`, `{{action_id}}`,
    /// `{{details.KEY}}` and `{{params.KEY}}` expand inside one argument and never split it.
    command: Argv,
    /// Kill the command's whole process group after this long (default 30s; 10ms to 1h).
    timeout: Option<Timeout>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Webhook")]
struct RawWebhook {
    /// Where to POST `{anomaly, details, workflow, params, action_id, received_at, host}`.
    url: WebhookUrl,
    /// How long each attempt may take (default 5s; 10ms to 1h).
    timeout: Option<Timeout>,
    /// Retries after a timeout, a 5xx or a connection error, with backoff (default 2, at most
    /// 10).
    retries: Option<Retries>,
    /// Extra request headers; values may hold `{{...}}` templates.
    #[serde(default)]
    headers: Headers,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Breaker")]
struct RawBreaker {
    /// Failed or timed-out runs that open the circuit.
    failures: NonZeroU32,
    /// The window they are counted in, and how long the workflow stays suspended.
    within: DurationValue,
}

/// A reflex as written: one case (`name: workflow` or `name: {workflow, ...}`), or a list of
/// cases tried in order (SPEC §9 "Cases").
#[derive(Debug)]
pub(super) struct RawReflex {
    pub(super) cases: Vec<RawCase>,
    /// Written as a list, so `GET /reflexes` shows it as one.
    pub(super) listed: bool,
}

/// One case: a workflow name, or a mapping with `workflow` and its options.
#[derive(Debug)]
pub(super) struct RawCase {
    pub(super) workflow: String,
    pub(super) params: JsonObject,
    pub(super) cooldown: Option<DurationValue>,
    pub(super) cooldown_key: Option<KeyTemplate>,
    pub(super) verify: Option<VerifyWindow>,
    pub(super) escalate: Option<String>,
    pub(super) when: Option<When>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CaseMapping")]
struct RawCaseLong {
    /// The workflow to start, declared under `workflows:`.
    workflow: String,
    /// Handed to the workflow: `{{params.KEY}}` templates, the webhook body, AUTOHEALER_PARAMS.
    #[serde(default)]
    #[schemars(with = "Option<JsonObject>")]
    params: JsonObject,
    /// Hold the same key back for this long after a dispatch (default: `defaults.cooldown`).
    cooldown: Option<DurationValue>,
    /// What the cooldown and `verify` count by, a template (default `{{anomaly}}`), e.g.
    /// `{{details.mount}}` for one cooldown per mount; a missing field expands to "".
    cooldown_key: Option<KeyTemplate>,
    /// After an `ok` finish, the same key arriving again within this long means the remedy did
    /// not hold: CRIT `healing action not healed`, and the breaker counts a failure.
    verify: Option<VerifyWindow>,
    /// A workflow dispatched once when the action fails, times out or is not healed.
    escalate: Option<String>,
    /// Conditions that must all hold for this case to be taken; none: it always holds.
    when: Option<When>,
}

impl RawCase {
    fn short(workflow: &str) -> RawCase {
        RawCase {
            workflow: workflow.to_string(),
            params: JsonObject::new(),
            cooldown: None,
            cooldown_key: None,
            verify: None,
            escalate: None,
            when: None,
        }
    }

    fn long<'de, A: MapAccess<'de>>(map: A) -> Result<RawCase, A::Error> {
        let long = RawCaseLong::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(RawCase {
            workflow: long.workflow,
            params: long.params,
            cooldown: long.cooldown,
            cooldown_key: long.cooldown_key,
            verify: long.verify,
            escalate: long.escalate,
            when: long.when,
        })
    }
}

impl<'de> Deserialize<'de> for RawCase {
    // A visitor rather than `untagged`, whose errors do not say what was wrong.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CaseVisitor;
        impl<'de> Visitor<'de> for CaseVisitor {
            type Value = RawCase;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a workflow name, or a mapping with `workflow` and optional `when`, `params`, `cooldown`, `cooldown_key`, `verify` and `escalate`")
            }
            fn visit_str<E: de::Error>(self, workflow: &str) -> Result<RawCase, E> {
                Ok(RawCase::short(workflow))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawCase, A::Error> {
                RawCase::long(map)
            }
        }
        deserializer.deserialize_any(CaseVisitor)
    }
}

impl<'de> Deserialize<'de> for RawReflex {
    // A visitor rather than `untagged`, whose errors do not say what was wrong.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ReflexVisitor;
        impl<'de> Visitor<'de> for ReflexVisitor {
            type Value = RawReflex;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a workflow name, a mapping with `workflow` and optional `when`, `params`, `cooldown`, `cooldown_key`, `verify` and `escalate`, or a list of such cases")
            }
            fn visit_str<E: de::Error>(self, workflow: &str) -> Result<RawReflex, E> {
                Ok(RawReflex {
                    cases: vec![RawCase::short(workflow)],
                    listed: false,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawReflex, A::Error> {
                Ok(RawReflex {
                    cases: vec![RawCase::long(map)?],
                    listed: false,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawReflex, A::Error> {
                let mut cases = Vec::new();
                while let Some(case) = seq.next_element()? {
                    cases.push(case);
                }
                if cases.is_empty() {
                    return Err(de::Error::custom(
                        "the list of cases is empty: give at least one workflow",
                    ));
                }
                Ok(RawReflex {
                    cases,
                    listed: true,
                })
            }
        }
        deserializer.deserialize_any(ReflexVisitor)
    }
}

/// Deserializes a string and checks it with `T::try_from` inside the visitor, so serde_yaml
/// gives the error the string's own line and column (a `try_from` on the derive runs after the
/// string is read, and the error takes the position of the mapping around it).
pub(super) fn checked_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<String, Error = String>,
{
    struct CheckedVisitor<T>(PhantomData<T>);
    impl<T: TryFrom<String, Error = String>> Visitor<'_> for CheckedVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            T::try_from(text.to_string()).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(CheckedVisitor(PhantomData))
}

/// A `cooldown_key`: a template of what a cooldown counts by.
#[derive(Debug)]
pub(super) struct KeyTemplate(pub(super) Template);

impl<'de> Deserialize<'de> for KeyTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer)
    }
}

impl TryFrom<String> for KeyTemplate {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let template = Template::parse(&text)?;
        if template.uses_action_id() {
            return Err(format!(
                "`cooldown_key` `{text}` uses {{{{action_id}}}}, which differs for every action, so nothing would ever cool down"
            ));
        }
        Ok(KeyTemplate(template))
    }
}

/// A `verify` window: a duration longer than zero.
#[derive(Debug, Clone, Copy)]
pub(super) struct VerifyWindow(pub(super) Duration);

impl<'de> Deserialize<'de> for VerifyWindow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer)
    }
}

impl TryFrom<String> for VerifyWindow {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let duration = parse_duration(&text)?;
        if duration.is_zero() {
            return Err(format!(
                "`verify: {text}` would judge every action healed at once: give a window longer than 0s, or leave `verify` out"
            ));
        }
        Ok(VerifyWindow(duration))
    }
}

/// An entry of the original format's `anomalies:` list.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "LegacyEntry")]
pub(super) struct RawLegacyEntry {
    /// An exact anomaly name (`*` and `?` are literal here).
    pub(super) name: LegacyName,
    /// The workflow to start: log-only unless the file declares `workflows:`.
    pub(super) workflow: String,
    /// Handed to the workflow, as a reflex's `params` are.
    #[serde(default)]
    pub(super) params: Option<JsonObject>,
}

/// A reflex key: an exact anomaly name, or a pattern when it holds `*` or `?`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub(super) enum ReflexKey {
    Exact(String),
    Pattern(Pattern),
}

impl TryFrom<String> for ReflexKey {
    type Error = String;
    fn try_from(key: String) -> Result<Self, String> {
        if matcher::is_pattern(&key) {
            return Ok(ReflexKey::Pattern(Pattern::parse(&key)?));
        }
        validate_name(&key).map_err(|why| format!("invalid anomaly name `{key}`: {why}"))?;
        Ok(ReflexKey::Exact(key))
    }
}

impl ReflexKey {
    pub(super) fn as_str(&self) -> &str {
        match self {
            ReflexKey::Exact(name) => name,
            ReflexKey::Pattern(pattern) => pattern.as_str(),
        }
    }
}

/// The original format matches exact names only, so `*` and `?` are literal there.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(try_from = "String")]
pub(super) struct LegacyName(pub(super) String);

impl TryFrom<String> for LegacyName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        validate_name(&name).map_err(|why| format!("invalid anomaly name `{name}`: {why}"))?;
        Ok(LegacyName(name))
    }
}

/// A duration written like `500ms`, `30s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub(super) struct DurationValue(pub(super) Duration);

impl TryFrom<String> for DurationValue {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        parse_duration(&text).map(DurationValue)
    }
}

/// Longest duration accepted anywhere: far beyond any sensible cooldown or timeout, and far from
/// the point where adding it to a clock reading overflows.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses a duration written like `500ms`, `30s`, `5m` or `1h`, up to `MAX_DURATION`; shared by
/// the map and the command line.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|err| {
        format!("invalid duration `{text}` ({err}): write a number and a unit, like 500ms, 30s, 5m or 1h")
    })?;
    if duration > MAX_DURATION {
        return Err(format!(
            "duration `{text}` is longer than the limit of a year"
        ));
    }
    Ok(duration)
}

/// The shortest timeout accepted: below it, an action would time out before a process starts or
/// a connection opens.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// The longest timeout accepted: an action held longer holds its workflow's in-flight slot, and
/// its finished record, for longer than anyone waits for a repair.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The most webhook retries accepted: with its backoff (doubling from 250 ms, capped at 10 s), 10
/// retries already wait about a minute between attempts; more would only hold the in-flight slot.
const MAX_WEBHOOK_RETRIES: u32 = 10;

/// An `exec.timeout` or `webhook.timeout`: a duration from `MIN_TIMEOUT` to `MAX_TIMEOUT`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
struct Timeout(Duration);

impl TryFrom<String> for Timeout {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let timeout = parse_duration(&text)?;
        let out_of_range = if timeout < MIN_TIMEOUT {
            "shorter than 10ms"
        } else if timeout > MAX_TIMEOUT {
            "longer than 1h"
        } else {
            return Ok(Timeout(timeout));
        };
        Err(format!(
            "timeout `{text}` is {out_of_range}: give one from 10ms to 1h"
        ))
    }
}

/// A webhook's `retries`: at most `MAX_WEBHOOK_RETRIES`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "u64")]
struct Retries(u32);

impl TryFrom<u64> for Retries {
    type Error = String;
    fn try_from(retries: u64) -> Result<Self, String> {
        match u32::try_from(retries) {
            Ok(retries) if retries <= MAX_WEBHOOK_RETRIES => Ok(Retries(retries)),
            _ => Err(format!(
                "`retries` is {retries}: give at most {MAX_WEBHOOK_RETRIES}"
            )),
        }
    }
}

/// A non-empty argv list whose program is not empty, each element a template.
#[derive(Debug, Deserialize)]
#[serde(try_from = "Vec<String>")]
struct Argv(Vec<Template>);

impl TryFrom<Vec<String>> for Argv {
    type Error = String;
    fn try_from(argv: Vec<String>) -> Result<Self, String> {
        match argv.first() {
            None => return Err("`command` is empty: give the program and its arguments as a list, like [systemctl, restart, nginx]".into()),
            Some(program) if program.trim().is_empty() => {
                return Err("`command` starts with an empty program name".into())
            }
            Some(_) => {}
        }
        let argv: Vec<Template> = argv
            .iter()
            .map(|arg| Template::parse(arg))
            .collect::<Result<_, _>>()?;
        if argv.first().is_some_and(Template::uses_caller_input) {
            // Anyone who may post an anomaly would choose the program the daemon runs.
            return Err(
                "`command`'s program must not come from {{anomaly}} or {{details...}}: \
                        whoever posts the anomaly would choose what the daemon runs"
                    .into(),
            );
        }
        Ok(Argv(argv))
    }
}

/// Webhook headers: valid header names, template values.
#[derive(Debug, Default, Deserialize)]
#[serde(try_from = "IndexMap<String, String>")]
struct Headers(IndexMap<String, HeaderTemplate>);

impl TryFrom<IndexMap<String, String>> for Headers {
    type Error = String;
    fn try_from(raw: IndexMap<String, String>) -> Result<Self, String> {
        raw.into_iter()
            .map(|(name, value)| {
                let parsed = hyper::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("invalid header name `{name}`"))?;
                let header = HeaderTemplate {
                    name: parsed,
                    value: Template::parse(&value)?,
                };
                Ok((name, header))
            })
            .collect::<Result<_, String>>()
            .map(Headers)
    }
}

/// An absolute http or https URL with a host, checked by the parser that will send to it.
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct WebhookUrl(reqwest::Url);

impl TryFrom<String> for WebhookUrl {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let url = reqwest::Url::parse(&text);
        // The message must not repeat a password the URL may carry.
        let shown = url.as_ref().map_or_else(
            |_| "the URL".to_string(),
            |u| format!("`{}`", redact_url(u)),
        );
        let url = url.map_err(|err| format!("invalid webhook URL: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "invalid webhook URL {shown}: the scheme must be http or https"
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("invalid webhook URL {shown}: it has no host"));
        }
        Ok(WebhookUrl(url))
    }
}

/// `url` with its user and password, if any, replaced by `***`.
pub(super) fn redact_url(url: &reqwest::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("***");
    shown.to_string()
}

/// An order-keeping map that remembers keys given twice (plain maps keep the last silently), so
/// `compile` can report each repeat at its own line.
#[derive(Debug)]
pub(super) struct DistinctMap<K, V> {
    /// Hashed with foldhash: the keys are the operator's own, and SipHash was 5% of loading a
    /// 100,000-name map (callgrind).
    pub(super) entries: IndexMap<K, V, foldhash::fast::RandomState>,
    pub(super) repeated: Vec<String>,
}

impl<K, V> Default for DistinctMap<K, V> {
    fn default() -> Self {
        DistinctMap {
            entries: IndexMap::default(),
            repeated: Vec::new(),
        }
    }
}

impl<'de, K, V> Deserialize<'de> for DistinctMap<K, V>
where
    K: Deserialize<'de> + Eq + std::hash::Hash + KeyText,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);
        impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
        where
            K: Deserialize<'de> + Eq + std::hash::Hash + KeyText,
            V: Deserialize<'de>,
        {
            type Value = DistinctMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                // An empty section (`workflows:` with nothing under it) is an empty map.
                Ok(DistinctMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = DistinctMap::default();
                while let Some(key) = access.next_key::<K>()? {
                    let value = access.next_value()?;
                    // One hash per key: the entry either takes the value or reports the repeat.
                    match map.entries.entry(key) {
                        indexmap::map::Entry::Occupied(first) => {
                            map.repeated.push(first.key().key_text().to_string());
                        }
                        indexmap::map::Entry::Vacant(slot) => {
                            slot.insert(value);
                        }
                    }
                }
                Ok(map)
            }
        }
        deserializer.deserialize_any(MapVisitor(PhantomData))
    }
}

/// How a map key reads in an error message.
trait KeyText {
    fn key_text(&self) -> &str;
}

impl KeyText for String {
    fn key_text(&self) -> &str {
        self
    }
}

impl KeyText for ReflexKey {
    fn key_text(&self) -> &str {
        self.as_str()
    }
}
