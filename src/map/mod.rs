//! The reflex map (SPEC §3): `reflex_map.yml` from its bytes to the `ReflexMap` every dispatch
//! reads, and the handle that holds the generation in force.
//!
//! - `budget`: the alias expansion limit every parse runs under;
//! - `schema`: the raw serde types, with every check on a single value (so serde_yaml attaches
//!   the line and column);
//! - `compile`: whole-file checks and the compiled `ReflexMap`;
//! - `matcher` and `template`: names and patterns, `{{...}}` placeholders, both parsed at load;
//! - `conditions`: a case's `when`, compiled at load (a regex once, never per request);
//! - `load`: reading the file (and refusing one others could change), its version, and
//!   `MapHandle`.
//!
//! The map knows no HTTP, no watcher and no log: `reload` decides when to load, and `dispatch`
//! reads the handle.

mod budget;
mod compile;
mod conditions;
mod load;
mod matcher;
mod schema;
mod template;

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Serialize, Serializer};

use crate::anomaly::{Details, JsonObject};

pub use compile::compile;
pub use conditions::{Judged, When};
pub use load::{load, watch_dirs, LoadError, LoadedMap, MapFile, MapHandle};
pub use matcher::{is_pattern, Matcher, Pattern};
pub use schema::{parse_duration, reflex_map_schema};
pub use template::{Template, TemplateContext};

/// Default `exec.timeout` when a workflow gives none.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// Default per-attempt `webhook.timeout` when a workflow gives none.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `webhook.retries` when a workflow gives none.
pub const DEFAULT_WEBHOOK_RETRIES: u32 = 2;
/// Largest `limits.actions.max`: the budget remembers one instant per action in its window.
pub const MAX_BUDGET_ACTIONS: u32 = 100_000;

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

/// How many errors a rejected map lists with their positions (SPEC §8); the rest are counted.
pub const MAX_LISTED_ERRORS: usize = 100;

/// Every problem found in one reflex map, in the order found; never empty. The first
/// `MAX_LISTED_ERRORS` are listed with their positions, and the rest only counted, so a file
/// with 50,000 errors reads as a screenful and a line `… and N more errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    listed: Vec<ConfigError>,
    more: usize,
}

impl ConfigErrors {
    /// The errors `listed` (at most `MAX_LISTED_ERRORS` of them are kept) and `more` found past
    /// them; `None` when there is none.
    pub fn new(mut listed: Vec<ConfigError>, more: usize) -> Option<ConfigErrors> {
        if listed.is_empty() {
            return None;
        }
        let more = more + listed.len().saturating_sub(MAX_LISTED_ERRORS);
        listed.truncate(MAX_LISTED_ERRORS);
        Some(ConfigErrors { listed, more })
    }

    /// A map with a single problem, such as a YAML syntax error.
    pub fn one(error: ConfigError) -> ConfigErrors {
        ConfigErrors {
            listed: vec![error],
            more: 0,
        }
    }

    /// The errors listed with their positions, at most `MAX_LISTED_ERRORS`.
    pub fn listed(&self) -> &[ConfigError] {
        &self.listed
    }

    /// How many errors were found past those listed.
    pub fn more(&self) -> usize {
        self.more
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.listed.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        match self.more {
            0 => Ok(()),
            1 => f.write_str("\n… and 1 more error"),
            more => write!(f, "\n… and {more} more errors"),
        }
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
    pub limits: Limits,
    /// Remarks worth showing an operator that do not make the map invalid.
    pub notes: Vec<String>,
    /// Whether any case has `verify`: an Alertmanager `resolved` is looked up only then.
    pub verifies: bool,
}

/// The case an anomaly selected: its reflex, the case, and the case's workflow.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    pub reflex: &'a Reflex,
    /// The case's place among the reflex's cases, from 0.
    pub index: usize,
    pub case: &'a Case,
    pub workflow: &'a Arc<Workflow>,
}

/// One case `select` tried, in the order it tried them, and whether its `when` held: what
/// `autohealer explain` reports, seen by the selection itself rather than a copy of it.
#[derive(Debug, Clone, Copy)]
pub struct Tried<'a> {
    pub reflex: &'a Reflex,
    /// The case's place among the reflex's cases, from 0.
    pub index: usize,
    pub case: &'a Case,
    pub held: bool,
}

impl ReflexMap {
    /// The first case, in matching order, that takes the anomaly `name` with `details`
    /// (SPEC §9 "Cases"): the exact name's cases, then each matching pattern's cases in file
    /// order. A reflex without conditions is decided by its first case, so the usual lookup is
    /// one match and no condition.
    pub fn select(&self, name: &str, details: &Details) -> Option<Selected<'_>> {
        self.select_observed(name, details, |_| {})
    }

    /// `select`, telling `observe` of every case it tries, in order, as it tries it.
    pub fn select_observed<'a>(
        &'a self,
        name: &str,
        details: &Details,
        mut observe: impl FnMut(Tried<'a>),
    ) -> Option<Selected<'a>> {
        let first = self.matcher.find(name)?;
        let reflex = &self.reflexes[first];
        if let Some(selected) = self.take(reflex, name, details, &mut observe) {
            return Some(selected);
        }
        // Every case's `when` failed: the later candidates, only now looked for.
        let mut after = reflex.is_pattern.then_some(first);
        while let Some(next) = self.matcher.find_pattern_after(name, after) {
            if let Some(selected) = self.take(&self.reflexes[next], name, details, &mut observe) {
                return Some(selected);
            }
            after = Some(next);
        }
        None
    }

    /// Every reflex that matches `name`, in matching order.
    pub fn candidates<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Reflex> + 'a {
        let exact = self.matcher.find_exact(name);
        let mut after: Option<Option<usize>> = Some(None);
        let patterns = std::iter::from_fn(move || {
            let next = self.matcher.find_pattern_after(name, after?);
            after = next.map(Some);
            next
        });
        exact
            .into_iter()
            .chain(patterns)
            .map(move |index| &self.reflexes[index])
    }

    /// `reflex`'s first case whose `when` holds, with its workflow.
    fn take<'a>(
        &'a self,
        reflex: &'a Reflex,
        name: &str,
        details: &Details,
        observe: &mut impl FnMut(Tried<'a>),
    ) -> Option<Selected<'a>> {
        let (index, case) = reflex.cases().enumerate().find(|&(index, case)| {
            let held = case
                .when
                .as_ref()
                .is_none_or(|when| when.holds(name, details));
            observe(Tried {
                reflex,
                index,
                case,
                held,
            });
            held
        })?;
        let (_, workflow) = self.workflows.get_index(case.workflow_index)?;
        Some(Selected {
            reflex,
            index,
            case,
            workflow,
        })
    }

    /// The workflow `case` escalates to, if any.
    pub fn escalation(&self, case: &Case) -> Option<&Arc<Workflow>> {
        let escalate = case.escalate.as_ref()?;
        self.workflows.get_index(escalate.index).map(|(_, w)| w)
    }

    /// How many reflexes are exact names (the rest are patterns).
    pub fn exact_count(&self) -> usize {
        self.reflexes.iter().filter(|r| !r.is_pattern).count()
    }
}

/// Brakes across the whole map (`limits:`).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Limits {
    /// The global budget of exec and webhook actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Budget>,
}

/// At most `max` exec and webhook actions within any `within` (log-only actions are free).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budget {
    pub max: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub within: Duration,
}

/// One anomaly name or pattern and its cases.
#[derive(Debug)]
pub struct Reflex {
    /// The name or pattern as written: also what the rails key this reflex's state by, so an
    /// edit elsewhere in the file never resets it.
    pub key: Arc<str>,
    pub is_pattern: bool,
    /// Written as a list of cases (shown as `cases`), rather than as one case.
    pub listed: bool,
    /// Some case has a cooldown or a verify window: only then do the rails keep per-key state
    /// for this reflex, so a reflex without either costs no lookup.
    pub keyed: bool,
    /// The first case, inline: most reflexes have only this one, read with no pointer to chase.
    first: Case,
    rest: Box<[Case]>,
}

impl Reflex {
    /// A reflex with `first` and then `rest` as its cases.
    pub fn new(key: &str, is_pattern: bool, listed: bool, first: Case, rest: Vec<Case>) -> Reflex {
        let keyed = std::iter::once(&first)
            .chain(&rest)
            .any(|case| !case.cooldown.is_zero() || case.verify.is_some());
        Reflex {
            key: Arc::from(key),
            is_pattern,
            listed,
            keyed,
            first,
            rest: rest.into_boxed_slice(),
        }
    }

    /// The cases in the order they are tried.
    pub fn cases(&self) -> impl Iterator<Item = &Case> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    fn cases_mut(&mut self) -> impl Iterator<Item = &mut Case> {
        std::iter::once(&mut self.first).chain(self.rest.iter_mut())
    }

    /// True when no case is unconditional, so an anomaly may fall through to later candidates.
    pub fn may_fall_through(&self) -> bool {
        self.cases().all(|case| case.when.is_some())
    }
}

/// Shown as one case's keys beside `match`, or as `match` and `cases` when written as a list.
impl Serialize for Reflex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("match", &*self.key)?;
        if self.listed {
            map.serialize_entry("cases", &self.cases().collect::<Vec<_>>())?;
        } else {
            self.first.serialize_entries(&mut map)?;
        }
        map.end()
    }
}

/// One case of a reflex: when it holds, which workflow runs, and the rails of that dispatch.
#[derive(Debug)]
pub struct Case {
    /// `None`: the case always holds.
    pub when: Option<When>,
    pub workflow: String,
    /// Where `workflow` is in the map's workflows: a lookup reads it instead of hashing the
    /// name, one cold string fewer per anomaly in a large map (issue 5).
    pub workflow_index: usize,
    pub params: Arc<JsonObject>,
    pub cooldown: Duration,
    /// What the cooldown counts by; `None` is `{{anomaly}}`, read without expanding anything.
    pub cooldown_key: Option<Template>,
    /// How long after an ok finish a recurrence of the same key means "not healed".
    pub verify: Option<Duration>,
    /// The workflow dispatched once when the action fails, times out or is not healed.
    pub escalate: Option<Escalate>,
}

/// A case's `escalate`: the workflow's name and where it is in the map's workflows.
#[derive(Debug, Clone)]
pub struct Escalate {
    pub workflow: String,
    pub index: usize,
}

impl Case {
    /// A case with only a workflow (index to be resolved), as `name: workflow` writes it.
    pub fn new(workflow: &str, params: Arc<JsonObject>, cooldown: Duration) -> Case {
        Case {
            when: None,
            workflow: workflow.to_string(),
            workflow_index: 0,
            params,
            cooldown,
            cooldown_key: None,
            verify: None,
            escalate: None,
        }
    }

    /// The key this case's cooldown and verification count by for the anomaly `name` with
    /// `details`: the name itself unless `cooldown_key` says otherwise, so the usual case
    /// expands nothing. A field the anomaly lacks expands to nothing (more suppression, never
    /// less).
    pub fn key_for<'a>(&self, name: &'a str, details: &Details) -> Cow<'a, str> {
        let Some(template) = &self.cooldown_key else {
            return Cow::Borrowed(name);
        };
        Cow::Owned(template.expand_or_empty(&TemplateContext {
            anomaly: name,
            workflow: &self.workflow,
            // Refused in a `cooldown_key` when the map loads: never expanded.
            action_id: uuid::Uuid::nil(),
            details,
            params: &self.params,
        }))
    }

    fn serialize_entries<M: serde::ser::SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        if let Some(when) = &self.when {
            map.serialize_entry("when", when)?;
        }
        map.serialize_entry("workflow", &self.workflow)?;
        map.serialize_entry("params", &*self.params)?;
        map.serialize_entry("cooldown", &DurationShown(self.cooldown))?;
        if let Some(key) = &self.cooldown_key {
            map.serialize_entry("cooldown_key", key)?;
        }
        if let Some(verify) = self.verify {
            map.serialize_entry("verify", &DurationShown(verify))?;
        }
        if let Some(escalate) = &self.escalate {
            map.serialize_entry("escalate", &escalate.workflow)?;
        }
        Ok(())
    }
}

impl Serialize for Case {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        self.serialize_entries(&mut map)?;
        map.end()
    }
}

/// A duration as the map writes it (`5m`, `1h 30m`).
struct DurationShown(Duration);

impl Serialize for DurationShown {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_duration(&self.0, s)
    }
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
