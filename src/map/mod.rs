//! The reflex map (SPEC §3): `reflex_map.yml` from its bytes to the `ReflexMap` every dispatch
//! reads, and the handle that holds the generation in force.
//!
//! - `budget`: the alias expansion limit every parse runs under;
//! - `schema`: the raw serde types, with every check on a single value (so serde_yaml attaches
//!   the line and column);
//! - `compile`: whole-file checks and the compiled `ReflexMap`;
//! - `matcher` and `template`: names and patterns, `{{...}}` placeholders, both parsed at load;
//! - `load`: reading the file (and refusing one others could change), its version, and
//!   `MapHandle`.
//!
//! The map knows no HTTP, no watcher and no log: `reload` decides when to load, and `dispatch`
//! reads the handle.

mod budget;
mod compile;
mod load;
mod matcher;
mod schema;
mod template;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Serialize, Serializer};

use crate::anomaly::JsonObject;

pub use compile::compile;
pub use load::{load, watch_dirs, LoadError, LoadedMap, MapFile, MapHandle};
pub use matcher::{is_pattern, Matcher, Pattern};
pub use schema::parse_duration;
pub use template::{Template, TemplateContext};

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
