//! The reflex map file (SPEC §3): its serde schema, per-value checks, and `compile` into the
//! `ReflexMap` that dispatch reads.
//!
//! Two layers, as in the style guide: `Raw*` types mirror the YAML with `deny_unknown_fields`, and
//! every check on a single value (duration, pattern, URL, argv) runs during deserialization, so
//! serde_yaml attaches the line and column. Whole-file checks (undeclared workflows, duplicate
//! names across sections) run in `compile`, which collects every error with its position.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use indexmap::IndexMap;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::matcher::{self, Matcher, Pattern};
use crate::metrics::WorkflowSeries;
use crate::template::Template;

/// JSON object carried by anomalies (`details`) and reflexes (`params`).
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Default `exec.timeout` when a workflow gives none.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// Default per-attempt `webhook.timeout` when a workflow gives none.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `webhook.retries` when a workflow gives none.
pub const DEFAULT_WEBHOOK_RETRIES: u32 = 2;

/// One problem in a reflex map, with the position an editor can jump to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in one reflex map, in file order; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------------------------
// The compiled map.

/// A validated, compiled reflex map: what one `ArcSwap` generation holds.
#[derive(Debug)]
pub struct ReflexMap {
    /// Reflexes in file order (`reflexes:` first, then the original format's `anomalies:`).
    pub reflexes: Vec<Reflex>,
    pub workflows: IndexMap<String, Arc<Workflow>>,
    pub matcher: Matcher,
    /// Remarks worth showing an operator that do not make the map invalid.
    pub notes: Vec<String>,
}

impl ReflexMap {
    /// The reflex and workflow for an anomaly name, if any reflex matches.
    pub fn lookup(&self, anomaly: &str) -> Option<(&Reflex, &Arc<Workflow>)> {
        let reflex = &self.reflexes[self.matcher.find(anomaly)?];
        let (_, workflow) = self.workflows.get_index(reflex.workflow_index)?;
        Some((reflex, workflow))
    }

    /// How many reflexes are exact names (the rest are patterns).
    pub fn exact_count(&self) -> usize {
        self.reflexes.iter().filter(|r| !r.is_pattern).count()
    }
}

/// One anomaly name or pattern and the workflow it starts.
#[derive(Debug, Serialize)]
pub struct Reflex {
    #[serde(rename = "match")]
    pub key: String,
    #[serde(skip)]
    pub is_pattern: bool,
    pub workflow: String,
    /// Where `workflow` is in the map's workflows: a lookup reads it instead of hashing the
    /// name, one cold string fewer per anomaly in a large map (issue 5).
    #[serde(skip)]
    pub workflow_index: usize,
    pub params: Arc<JsonObject>,
    #[serde(serialize_with = "serialize_duration")]
    pub cooldown: Duration,
}

/// A named corrective workflow: its action and the rails that bound it.
#[derive(Debug, Serialize)]
pub struct Workflow {
    /// Shared, so records, metrics, rails and the history hold it without a copy each.
    #[serde(skip)]
    pub name: Arc<str>,
    #[serde(flatten)]
    pub action: Action,
    pub max_concurrent: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
    /// This workflow's metric series, looked up when its first action finishes.
    #[serde(skip)]
    pub series: OnceLock<WorkflowSeries>,
}

/// What a workflow does when it runs.
#[derive(Debug, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    /// The CRITICAL record is the whole action.
    Log,
    Exec(ExecAction),
    Webhook(WebhookAction),
}

impl Action {
    /// The name used in records and metrics: `log`, `exec` or `webhook`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Exec(_) => "exec",
            Action::Webhook(_) => "webhook",
        }
    }
}

/// A local command, run as an argv list (never through a shell).
#[derive(Debug, Clone, Serialize)]
pub struct ExecAction {
    /// The program and its arguments, each a template expanded into exactly one argument.
    pub command: Vec<Template>,
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
}

/// An HTTP POST into a workflow engine such as n8n.
///
/// The URL's password and the header values may hold credentials, so what is shown to people
/// (`GET /reflexes`, records) is `shown_url` and header names only.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookAction {
    #[serde(skip)]
    pub url: reqwest::Url,
    /// The URL with any user and password replaced by `***`: safe for logs and the API.
    #[serde(rename = "url")]
    pub shown_url: String,
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    pub retries: u32,
    /// Extra request headers, by name as written; values are templates.
    #[serde(serialize_with = "serialize_header_names")]
    pub headers: IndexMap<String, HeaderTemplate>,
}

/// One webhook header: its name, checked and parsed once at load, and its value's template.
#[derive(Debug, Clone)]
pub struct HeaderTemplate {
    pub name: hyper::header::HeaderName,
    pub value: Template,
}

impl HeaderTemplate {
    /// The value's template as written in the map.
    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        self.value.as_str()
    }
}

/// Header values are shown as `***`: they are where tokens go.
fn serialize_header_names<S: Serializer>(
    headers: &IndexMap<String, HeaderTemplate>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(headers.keys().map(|name| (name, "***")))
}

/// Suspend a workflow after `failures` failed runs within `within`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Breaker {
    pub failures: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub within: Duration,
}

fn serialize_duration<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*duration))
}

// ---------------------------------------------------------------------------------------------
// The raw schema.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawDefaults,
    /// `None` when the section is absent: the original format, where every workflow is log-only.
    /// An empty `workflows:` is `Some`: the file has opted in to declaring every workflow.
    #[serde(default, deserialize_with = "declared_section")]
    workflows: Option<DistinctMap<String, RawWorkflow>>,
    #[serde(default)]
    reflexes: DistinctMap<ReflexKey, RawReflex>,
    /// The original Python AutoHealer's list of exact names.
    #[serde(default)]
    anomalies: Vec<RawLegacyEntry>,
}

fn declared_section<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DistinctMap<String, RawWorkflow>>, D::Error> {
    DistinctMap::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    cooldown: Option<DurationValue>,
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "RawWorkflowFields")]
struct RawWorkflow {
    action: RawAction,
    max_concurrent: u32,
    breaker: Option<Breaker>,
}

#[derive(Debug)]
enum RawAction {
    Log,
    Exec(ExecAction),
    Webhook(WebhookAction),
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
            (Some(exec), None) => RawAction::Exec(ExecAction {
                command: exec.command.0,
                timeout: exec.timeout.map_or(DEFAULT_EXEC_TIMEOUT, |d| d.0),
            }),
            (None, Some(hook)) => RawAction::Webhook(WebhookAction {
                shown_url: redact_url(&hook.url.0),
                url: hook.url.0,
                timeout: hook.timeout.map_or(DEFAULT_WEBHOOK_TIMEOUT, |d| d.0),
                retries: hook.retries.unwrap_or(DEFAULT_WEBHOOK_RETRIES),
                headers: hook.headers.0,
            }),
            (None, None) => RawAction::Log,
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
    timeout: Option<DurationValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: WebhookUrl,
    timeout: Option<DurationValue>,
    retries: Option<u32>,
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
struct RawReflex {
    workflow: String,
    params: JsonObject,
    cooldown: Option<DurationValue>,
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
struct RawLegacyEntry {
    name: LegacyName,
    workflow: String,
    #[serde(default)]
    params: Option<JsonObject>,
}

/// A reflex key: an exact anomaly name, or a pattern when it holds `*` or `?`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
enum ReflexKey {
    Exact(String),
    Pattern(Pattern),
}

impl TryFrom<String> for ReflexKey {
    type Error = String;
    fn try_from(key: String) -> Result<Self, String> {
        if matcher::is_pattern(&key) {
            return Ok(ReflexKey::Pattern(Pattern::parse(&key)?));
        }
        matcher::validate_name(&key)
            .map_err(|why| format!("invalid anomaly name `{key}`: {why}"))?;
        Ok(ReflexKey::Exact(key))
    }
}

impl ReflexKey {
    fn as_str(&self) -> &str {
        match self {
            ReflexKey::Exact(name) => name,
            ReflexKey::Pattern(pattern) => pattern.as_str(),
        }
    }
}

/// The original format matches exact names only, so `*` and `?` are literal there.
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct LegacyName(String);

impl TryFrom<String> for LegacyName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        matcher::validate_name(&name)
            .map_err(|why| format!("invalid anomaly name `{name}`: {why}"))?;
        Ok(LegacyName(name))
    }
}

/// A duration written like `500ms`, `30s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
struct DurationValue(Duration);

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
fn redact_url(url: &reqwest::Url) -> String {
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
struct DistinctMap<K, V> {
    entries: IndexMap<K, V>,
    repeated: Vec<String>,
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

// ---------------------------------------------------------------------------------------------
// Compiling.

/// Parses and validates `source` (the bytes of the file at `path`) into a `ReflexMap`.
pub fn compile(path: &Path, source: &str) -> Result<ReflexMap, ConfigErrors> {
    let error_at = |(line, column): (usize, usize), message: String| ConfigError {
        path: path.to_path_buf(),
        line,
        column,
        message,
    };
    if source.trim().is_empty() {
        return Err(ConfigErrors(vec![error_at(
            (1, 1),
            "the file is empty: it needs a `reflexes:` section (or the original format's `anomalies:` list)".into(),
        )]));
    }
    let raw: RawFile = serde_yaml::from_str(source).map_err(|err| {
        let position = err.location().map_or((1, 1), |l| (l.line(), l.column()));
        ConfigErrors(vec![error_at(position, yaml_message(&err))])
    })?;

    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let legacy_log_only = raw.workflows.is_none();
    let declared = raw.workflows.unwrap_or_default();
    for (section, repeated) in [
        ("workflows", &declared.repeated),
        ("reflexes", &raw.reflexes.repeated),
    ] {
        for key in repeated {
            errors.push(error_at(
                locate_key(source, section, key, 2),
                format!("{section}: `{key}` is given twice"),
            ));
        }
    }
    let mut workflows: IndexMap<String, Arc<Workflow>> = declared
        .entries
        .into_iter()
        .map(|(name, raw)| {
            let action = match raw.action {
                RawAction::Log => Action::Log,
                RawAction::Exec(exec) => Action::Exec(exec),
                RawAction::Webhook(hook) => Action::Webhook(hook),
            };
            let workflow = Workflow {
                name: Arc::from(name.as_str()),
                action,
                max_concurrent: raw.max_concurrent,
                breaker: raw.breaker,
                series: OnceLock::new(),
            };
            (name, Arc::new(workflow))
        })
        .collect();

    let default_cooldown = raw.defaults.cooldown.map_or(Duration::ZERO, |d| d.0);
    // Each reflex remembers its section, not its position: finding a position scans the text,
    // so doing it for every reflex made loading quadratic (issue 5: 100,000 names took minutes).
    // Positions are looked up only for the reflexes an error is about.
    let position_of = |reflex: &Reflex, section: Section| match section {
        Section::Reflexes => locate_key(source, "reflexes", &reflex.key, 1),
        Section::Anomalies => locate_legacy_name(source, &reflex.key),
    };
    // Most reflexes have no params: they share one empty object instead of each allocating
    // its own, which a dispatch would then touch in cold memory (issue 5, the 100k map).
    let no_params = Arc::new(JsonObject::new());
    let params_of = |params: JsonObject| {
        if params.is_empty() {
            no_params.clone()
        } else {
            Arc::new(params)
        }
    };
    let mut reflexes = Vec::new();
    // Patterns as parsed when the file was read, each with its reflex's index.
    let mut patterns = Vec::new();
    for (key, reflex) in raw.reflexes.entries {
        let text = key.as_str().to_string();
        let is_pattern = matches!(key, ReflexKey::Pattern(_));
        if let ReflexKey::Pattern(pattern) = key {
            patterns.push((pattern, reflexes.len()));
        }
        reflexes.push((
            Reflex {
                key: text,
                is_pattern,
                workflow: reflex.workflow,
                workflow_index: 0, // set below, once the workflows are known
                params: params_of(reflex.params),
                cooldown: reflex.cooldown.map_or(default_cooldown, |d| d.0),
            },
            Section::Reflexes,
        ));
    }
    let mut seen: HashSet<String> = reflexes.iter().map(|(r, _)| r.key.clone()).collect();
    for entry in raw.anomalies {
        if !seen.insert(entry.name.0.clone()) {
            errors.push(error_at(
                locate_legacy_name(source, &entry.name.0),
                format!("anomaly `{}` is given twice", entry.name.0),
            ));
            continue;
        }
        reflexes.push((
            Reflex {
                key: entry.name.0,
                is_pattern: false,
                workflow: entry.workflow,
                workflow_index: 0, // set below, once the workflows are known
                params: params_of(entry.params.unwrap_or_default()),
                cooldown: default_cooldown,
            },
            Section::Anomalies,
        ));
    }

    for (reflex, section) in &mut reflexes {
        if let Some(index) = workflows.get_index_of(&reflex.workflow) {
            reflex.workflow_index = index;
            continue;
        }
        if legacy_log_only {
            // The original service had no `workflows:` section: every name it used was log-only.
            notes.push(format!(
                "workflow `{}` is not declared (no `workflows:` section), so it runs as log-only",
                reflex.workflow
            ));
            (reflex.workflow_index, _) = workflows.insert_full(
                reflex.workflow.clone(),
                Arc::new(Workflow {
                    name: reflex.workflow.as_str().into(),
                    action: Action::Log,
                    max_concurrent: 1,
                    breaker: None,
                    series: OnceLock::new(),
                }),
            );
        } else {
            errors.push(error_at(
                position_of(reflex, *section),
                format!(
                    "reflex `{}` names workflow `{}`, which is not declared under `workflows:`",
                    reflex.key, reflex.workflow
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    let reflexes: Vec<Reflex> = reflexes.into_iter().map(|(reflex, _)| reflex).collect();
    let exact = reflexes
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_pattern)
        .map(|(i, r)| (r.key.clone(), i));
    let matcher = Matcher::new(exact, patterns)
        .map_err(|message| ConfigErrors(vec![error_at((1, 1), message)]))?;
    Ok(ReflexMap {
        reflexes,
        workflows,
        matcher,
        notes,
    })
}

/// The section of the file a reflex was written in, for finding its position on error.
#[derive(Debug, Clone, Copy)]
enum Section {
    Reflexes,
    Anomalies,
}

/// serde_yaml's message without its trailing ` at line L column C`, which we print up front.
fn yaml_message(err: &serde_yaml::Error) -> String {
    let text = err.to_string();
    match text.find(" at line ") {
        Some(cut) if err.location().is_some() => text[..cut].to_string(),
        _ => text,
    }
}

/// Line and column of the `nth` (from 1) `key:` inside the top-level `section:` block, for
/// whole-file errors.
///
/// serde_yaml keeps no spans, so this scans the text; block-style maps (what people write) are
/// found exactly, and anything else falls back to the section's own line.
fn locate_key(source: &str, section: &str, key: &str, nth: usize) -> (usize, usize) {
    let candidates = [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ];
    let seen = std::cell::Cell::new(0);
    locate_in_section(source, section, |trimmed| {
        let hit = candidates.iter().any(|c| trimmed.starts_with(c.as_str()));
        if hit {
            seen.set(seen.get() + 1);
        }
        hit && seen.get() == nth
    })
}

/// Line and column of `name: <name>` inside the original format's `anomalies:` list.
fn locate_legacy_name(source: &str, name: &str) -> (usize, usize) {
    let values = [name.to_string(), format!("\"{name}\""), format!("'{name}'")];
    locate_in_section(source, "anomalies", |trimmed| {
        let trimmed = trimmed.trim_start_matches('-').trim_start();
        trimmed
            .strip_prefix("name:")
            .map(|value| values.iter().any(|v| value.trim() == v))
            .unwrap_or(false)
    })
}

fn locate_in_section(
    source: &str,
    section: &str,
    is_target: impl Fn(&str) -> bool,
) -> (usize, usize) {
    let header = format!("{section}:");
    let mut section_line = None;
    for (index, line) in source.lines().enumerate() {
        let starts_at_margin = !line.starts_with([' ', '\t']) && !line.starts_with('#');
        if section_line.is_none() {
            if starts_at_margin && line.starts_with(&header) {
                section_line = Some(index);
            }
            continue;
        }
        if starts_at_margin && !line.trim().is_empty() && !line.starts_with('-') {
            break; // the next top-level key ends the section
        }
        let trimmed = line.trim_start();
        if is_target(trimmed) {
            let indent = line.len() - trimmed.len();
            let dash = trimmed.len() - trimmed.trim_start_matches('-').trim_start().len();
            return (index + 1, indent + dash + 1);
        }
    }
    section_line.map_or((1, 1), |index| (index + 1, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_str(source: &str) -> Result<ReflexMap, ConfigErrors> {
        compile(Path::new("map.yml"), source)
    }

    fn errors_of(source: &str) -> String {
        compile_str(source).unwrap_err().to_string()
    }

    const FULL: &str = r#"
defaults:
  cooldown: 10s
workflows:
  hook:
    webhook:
      url: http://127.0.0.1:5678/webhook/coinbase-health
      timeout: 2s
      retries: 3
      headers: {X-Anomaly: "{{anomaly}}"}
  restart:
    exec:
      command: [systemctl, restart, "{{params.unit}}"]
    max_concurrent: 2
    breaker: {failures: 3, within: 10m}
  page: {}
reflexes:
  api_latency.coinbase.high: hook
  "nginx.*.down":
    workflow: restart
    params: {unit: nginx}
    cooldown: 5m
  disk.**: page
"#;

    #[test]
    fn full_schema_compiles() {
        let map = compile_str(FULL).unwrap();
        assert_eq!(map.reflexes.len(), 3);
        assert_eq!(map.exact_count(), 1);
        let (reflex, workflow) = map.lookup("nginx.web1.down").unwrap();
        assert_eq!(reflex.key, "nginx.*.down");
        assert_eq!(reflex.cooldown, Duration::from_secs(300));
        assert_eq!(reflex.params["unit"], "nginx");
        assert_eq!(workflow.max_concurrent, 2);
        assert_eq!(workflow.breaker.unwrap().failures, 3);
        match &workflow.action {
            Action::Exec(exec) => {
                let argv: Vec<&str> = exec.command.iter().map(Template::as_str).collect();
                assert_eq!(argv, ["systemctl", "restart", "{{params.unit}}"]);
                assert_eq!(exec.timeout, DEFAULT_EXEC_TIMEOUT);
            }
            other => panic!("expected exec, got {other:?}"),
        }
        let (reflex, workflow) = map.lookup("api_latency.coinbase.high").unwrap();
        assert_eq!(reflex.cooldown, Duration::from_secs(10), "defaults apply");
        match &workflow.action {
            Action::Webhook(hook) => {
                assert_eq!(hook.retries, 3);
                assert_eq!(hook.timeout, Duration::from_secs(2));
                assert_eq!(hook.headers["X-Anomaly"].as_str(), "{{anomaly}}");
            }
            other => panic!("expected webhook, got {other:?}"),
        }
        assert_eq!(map.lookup("disk.sda.full").unwrap().1.action.kind(), "log");
        assert!(map.lookup("nothing").is_none());
        assert!(map.notes.is_empty());
    }

    #[test]
    fn original_format_loads_unchanged() {
        let map = compile_str(
            "anomalies:\n  - name: api_latency.coinbase.high\n    workflow: run_coinbase_health_check_and_clear_cache\n    params: {exchange: coinbase}\n  - name: disk.*\n    workflow: page\n",
        )
        .unwrap();
        let (reflex, workflow) = map.lookup("api_latency.coinbase.high").unwrap();
        assert_eq!(workflow.action.kind(), "log");
        assert_eq!(reflex.params["exchange"], "coinbase");
        // Exact names only: `*` is literal in the original format.
        assert!(map.lookup("disk.sda").is_none());
        assert!(map.lookup("disk.*").is_some());
        assert_eq!(map.notes.len(), 2);
        assert_eq!(
            map.notes[0],
            "workflow `run_coinbase_health_check_and_clear_cache` is not declared (no `workflows:` section), so it runs as log-only"
        );
    }

    #[test]
    fn undeclared_workflows_are_all_reported_with_positions() {
        let source = "workflows:\n  a: {}\nreflexes:\n  x: a\n  y: missing\n  \"z.*\":\n    workflow: other\n";
        assert_eq!(
            errors_of(source),
            "map.yml:5:3: reflex `y` names workflow `missing`, which is not declared under `workflows:`\n\
             map.yml:6:3: reflex `z.*` names workflow `other`, which is not declared under `workflows:`"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_positions() {
        assert_eq!(
            errors_of("workflows:\n  a:\n    exec:\n      command: [true]\n      timout: 5s\nreflexes:\n  x: a\n"),
            "map.yml:5:7: workflows.a.exec: unknown field `timout`, expected `command` or `timeout`"
        );
        assert_eq!(
            errors_of("reflexes:\n  x:\n    workflow: a\n    cooldwn: 1s\n"),
            "map.yml:4:5: reflexes.x: unknown field `cooldwn`, expected one of `workflow`, `params`, `cooldown`"
        );
        assert_eq!(
            errors_of("reflex:\n  x: a\n"),
            "map.yml:1:1: unknown field `reflex`, expected one of `defaults`, `workflows`, `reflexes`, `anomalies`"
        );
    }

    #[test]
    fn bad_values_are_errors_with_positions() {
        assert_eq!(
            errors_of("defaults:\n  cooldown: 5 minutes please\n"),
            "map.yml:2:3: defaults: invalid duration `5 minutes please` (expected number at 10): write a number and a unit, like 500ms, 30s, 5m or 1h"
        );
        assert_eq!(
            errors_of("workflows:\n  a:\n    exec: {command: []}\nreflexes: {}\n"),
            "map.yml:3:11: workflows.a.exec: `command` is empty: give the program and its arguments as a list, like [systemctl, restart, nginx]"
        );
        assert_eq!(
            errors_of("workflows:\n  a:\n    webhook: {url: ftp://example.com/x}\n"),
            "map.yml:3:14: workflows.a.webhook: invalid webhook URL `ftp://example.com/x`: the scheme must be http or https"
        );
        assert_eq!(
            errors_of("workflows:\n  a:\n    webhook: {url: 'http://127.0.0.1:99999/x'}\n"),
            "map.yml:3:14: workflows.a.webhook: invalid webhook URL: invalid port number"
        );
        assert_eq!(
            errors_of("reflexes:\n  \"a.***\": b\n"),
            "map.yml:2:3: reflexes: invalid pattern `a.***`: `***` is ambiguous; use `*` within a segment or `**` across dots"
        );
        assert_eq!(
            errors_of(
                "workflows:\n  a:\n    exec: {command: [x]}\n    webhook: {url: http://h/}\n"
            ),
            "map.yml:2:3: workflows: a workflow has one action: give `exec` or `webhook`, not both"
        );
    }

    #[test]
    fn bad_templates_and_headers_are_errors_with_positions() {
        assert_eq!(
            errors_of("workflows:\n  a:\n    exec:\n      command: [echo, '{{detail.x}}']\n"),
            "map.yml:4:7: workflows.a.exec: template `{{detail.x}}`: unknown placeholder `{{detail.x}}`; use anomaly, workflow, action_id, details.KEY or params.KEY"
        );
        assert_eq!(
            errors_of("workflows:\n  a:\n    webhook:\n      url: http://h/\n      headers: {'bad name': x}\n"),
            "map.yml:4:7: workflows.a.webhook: invalid header name `bad name`"
        );
    }

    #[test]
    fn the_program_never_comes_from_the_caller() {
        assert_eq!(
            errors_of("workflows:\n  a:\n    exec: {command: ['{{details.cmd}}', x]}\n"),
            "map.yml:3:11: workflows.a.exec: `command`'s program must not come from {{anomaly}} or {{details...}}: whoever posts the anomaly would choose what the daemon runs"
        );
        assert!(
            compile_str("workflows:\n  a:\n    exec: {command: ['/opt/{{params.tool}}']}\n")
                .is_ok()
        );
    }

    #[test]
    fn webhook_credentials_are_not_shown() {
        let map = compile_str(
            "workflows:\n  h:\n    webhook:\n      url: 'https://user:pw@n8n.example/webhook/x'\n      headers: {Authorization: 'Bearer s3cret'}\nreflexes: {a: h}\n",
        )
        .unwrap();
        let shown = serde_json::to_value(&*map.workflows["h"]).unwrap();
        assert_eq!(shown["url"], "https://***@n8n.example/webhook/x");
        assert_eq!(
            shown["headers"],
            serde_json::json!({"Authorization": "***"})
        );
    }

    #[test]
    fn absurd_durations_are_rejected() {
        assert_eq!(
            errors_of("defaults:\n  cooldown: 400000000000y\n"),
            "map.yml:2:3: defaults: duration `400000000000y` is longer than the limit of a year"
        );
        assert!(parse_duration("365d").is_ok());
    }

    #[test]
    fn bad_yaml_is_an_error_with_a_position() {
        assert_eq!(
            errors_of("reflexes:\n  a: b\n   c: d\n"),
            "map.yml:3:5: mapping values are not allowed in this context"
        );
        assert_eq!(
            errors_of("   \n"),
            "map.yml:1:1: the file is empty: it needs a `reflexes:` section (or the original format's `anomalies:` list)"
        );
    }

    #[test]
    fn duplicate_keys_are_errors() {
        assert_eq!(
            errors_of("workflows:\n  a: {}\nreflexes:\n  x: a\n  x: a\n"),
            "map.yml:5:3: reflexes: `x` is given twice"
        );
        assert_eq!(
            errors_of("workflows:\n  a: {}\n  b: {}\n  a: {}\nreflexes:\n  x: a\n"),
            "map.yml:4:3: workflows: `a` is given twice"
        );
        assert_eq!(
            errors_of("workflows:\n  a: {}\nreflexes:\n  x: a\nanomalies:\n  - name: x\n    workflow: a\n"),
            "map.yml:6:5: anomaly `x` is given twice"
        );
    }

    #[test]
    fn a_workflows_section_makes_every_name_count() {
        assert_eq!(
            errors_of("workflows:\nanomalies:\n  - name: a\n    workflow: w\n"),
            "map.yml:3:5: reflex `a` names workflow `w`, which is not declared under `workflows:`"
        );
    }

    #[test]
    fn short_and_long_forms_reject_other_shapes() {
        assert_eq!(
            errors_of("reflexes:\n  x: [a]\n"),
            "map.yml:2:6: reflexes.x: invalid type: sequence, expected a workflow name, or a mapping with `workflow` and optional `params` and `cooldown`"
        );
    }
}
