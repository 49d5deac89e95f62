//! The raw schema of `reflex_map.yml`: serde types that mirror the YAML with
//! `deny_unknown_fields`. Every check on a single value (duration, pattern, URL, argv) runs here,
//! during deserialization, so serde_yaml attaches the line and column.

use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::time::Duration;

use indexmap::IndexMap;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::matcher::{self, Pattern};
use super::{
    Action, Breaker, ExecAction, HeaderTemplate, Template, WebhookAction, DEFAULT_EXEC_TIMEOUT,
    DEFAULT_WEBHOOK_RETRIES, DEFAULT_WEBHOOK_TIMEOUT,
};
use crate::anomaly::{validate_name, JsonObject};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) defaults: RawDefaults,
    /// `None` when the section is absent: the original format, where every workflow is log-only.
    /// An empty `workflows:` is `Some`: the file has opted in to declaring every workflow.
    #[serde(default, deserialize_with = "declared_section")]
    pub(super) workflows: Option<DistinctMap<String, RawWorkflow>>,
    #[serde(default)]
    pub(super) reflexes: DistinctMap<ReflexKey, RawReflex>,
    /// The original Python AutoHealer's list of exact names.
    #[serde(default)]
    pub(super) anomalies: Vec<RawLegacyEntry>,
}

fn declared_section<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DistinctMap<String, RawWorkflow>>, D::Error> {
    DistinctMap::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub(super) cooldown: Option<DurationValue>,
}

/// A workflow as written: its action, already checked, and its rails.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawWorkflowFields")]
pub(super) struct RawWorkflow {
    pub(super) action: Action,
    pub(super) max_concurrent: u32,
    pub(super) breaker: Option<Breaker>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflowFields {
    exec: Option<RawExec>,
    webhook: Option<RawWebhook>,
    max_concurrent: Option<NonZeroU32>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    command: Argv,
    timeout: Option<Timeout>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: WebhookUrl,
    timeout: Option<Timeout>,
    retries: Option<Retries>,
    #[serde(default)]
    headers: Headers,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failures: NonZeroU32,
    within: DurationValue,
}

/// A reflex in either form: `name: workflow` or `name: {workflow, params, cooldown}`.
#[derive(Debug)]
pub(super) struct RawReflex {
    pub(super) workflow: String,
    pub(super) params: JsonObject,
    pub(super) cooldown: Option<DurationValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReflexLong {
    workflow: String,
    #[serde(default)]
    params: JsonObject,
    cooldown: Option<DurationValue>,
}

impl<'de> Deserialize<'de> for RawReflex {
    // A visitor rather than `untagged`, whose errors do not say what was wrong.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ReflexVisitor;
        impl<'de> Visitor<'de> for ReflexVisitor {
            type Value = RawReflex;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a workflow name, or a mapping with `workflow` and optional `params` and `cooldown`")
            }
            fn visit_str<E: de::Error>(self, workflow: &str) -> Result<RawReflex, E> {
                Ok(RawReflex {
                    workflow: workflow.to_string(),
                    params: JsonObject::new(),
                    cooldown: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawReflex, A::Error> {
                let long = RawReflexLong::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawReflex {
                    workflow: long.workflow,
                    params: long.params,
                    cooldown: long.cooldown,
                })
            }
        }
        deserializer.deserialize_any(ReflexVisitor)
    }
}

/// An entry of the original format's `anomalies:` list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLegacyEntry {
    pub(super) name: LegacyName,
    pub(super) workflow: String,
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
#[derive(Debug, Deserialize)]
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
    pub(super) entries: IndexMap<K, V>,
    pub(super) repeated: Vec<String>,
}

impl<K, V> Default for DistinctMap<K, V> {
    fn default() -> Self {
        DistinctMap {
            entries: IndexMap::new(),
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
                    if map.entries.contains_key(&key) {
                        map.repeated.push(key.key_text().to_string());
                    } else {
                        map.entries.insert(key, value);
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
