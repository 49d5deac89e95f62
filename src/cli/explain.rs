//! `autohealer explain NAME [KEY=VALUE]...` (SPEC §10): "what will this anomaly do?", answered
//! offline against the map on disk, like `amtool config routes test`.
//!
//! It loads the map as the daemon does (`map::load`), selects the case with the daemon's own
//! selection (`ReflexMap::select_observed`, which reports each case it tries; each condition is
//! judged by `When::judge`, the code that decides it), and builds what would run with the
//! actions' own code (`actions::expand_argv`, `request_headers`, `request_body`), so the answer
//! cannot drift from what a dispatch does. It shows the rails that would apply, not their
//! state: that lives in the running daemon.
//!
//! Exit status: 0 matched, 1 unmatched or the map is invalid, 2 usage (`main` maps `Verdict`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use super::ExplainArgs;
use crate::actions::{self, ActionId, ActionRun};
use crate::anomaly::{validate_name, Details, JsonObject, Source};
use crate::map::{self, Action, Budget, Judged, LoadedMap, Reflex, Selected, Tried, Workflow};

/// How `explain` ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Matched,
    /// No reflex matches, or the map cannot be loaded.
    Unmatched,
    /// The anomaly name is not one the daemon would accept.
    Usage,
}

/// Explains the anomaly in `args` against the map in `args.map.config`, on stdout.
pub fn run(args: &ExplainArgs) -> Verdict {
    if let Err(why) = validate_name(&args.name) {
        eprintln!("autohealer: invalid anomaly name {:?}: {why}", args.name);
        return Verdict::Usage;
    }
    let loaded = match map::load(&args.map.config, 1) {
        Ok(loaded) => loaded,
        // An invalid map prints as `check` prints it: one line per listed error, then
        // `… and N more errors`.
        Err(err) => {
            eprintln!("{err}");
            return Verdict::Unmatched;
        }
    };
    let details: JsonObject = args.details.iter().cloned().collect();
    let explanation = explain(&args.map.config, &loaded, &args.name, details);
    let text = if args.json {
        // Strings, numbers and JSON values only: serializing cannot fail.
        let mut json = serde_json::to_string(&explanation).unwrap_or_default();
        json.push('\n');
        json
    } else {
        explanation.to_text()
    };
    // A reader that went away (`| head`) is no reason to panic; the exit status still tells.
    let _ = std::io::stdout().write_all(text.as_bytes());
    if explanation.matched {
        Verdict::Matched
    } else {
        Verdict::Unmatched
    }
}

/// What `explain` found: the `--json` object, and the source of the text form.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub matched: bool,
    pub anomaly: String,
    pub map: MapInfo,
    /// The matching reflex's key as written (a name or a pattern).
    pub reflex: Option<String>,
    /// The case taken: its index among the reflex's cases, from 0; `null` when the reflex is
    /// written as one case rather than a list.
    pub case: Option<usize>,
    pub workflow: Option<String>,
    /// `log`, `exec` or `webhook`.
    pub action: Option<&'static str>,
    /// Every case the daemon would try, in its order, up to the one taken: why it matched, or
    /// why nothing did.
    pub tried: Vec<TriedCase>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub detail: Option<MatchExplanation>,
}

/// One case tried, with each of its conditions judged for this anomaly.
#[derive(Debug, Serialize)]
pub struct TriedCase {
    pub reflex: String,
    /// As `Explanation::case`.
    pub case: Option<usize>,
    pub workflow: String,
    /// `null`: the case has no `when` and always holds.
    pub when: Option<Vec<Judged>>,
    pub held: bool,
}

/// The map consulted.
#[derive(Debug, Serialize)]
pub struct MapInfo {
    pub path: String,
    pub version: String,
}

/// Why a reflex matched, what holds it back, and what would run.
#[derive(Debug, Serialize)]
pub struct MatchExplanation {
    /// `exact` (an exact name wins over every pattern) or `pattern` (the first in file order).
    #[serde(rename = "match")]
    pub kind: &'static str,
    /// Patterns that also match the name but never get it: every one for an exact match,
    /// the later ones for a pattern.
    pub shadowed: Vec<String>,
    pub params: Arc<JsonObject>,
    pub rails: RailsExplanation,
    /// A fresh id, as a dispatch would draw; `{{action_id}}` expands to it.
    pub action_id: Uuid,
    #[serde(flatten)]
    pub run: RunExplanation,
    /// Why the action would fail before running anything (a missing template key, caller text
    /// that would become an option, a header value HTTP cannot carry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The rails that would apply to a dispatch: their settings, not the daemon's current state.
#[derive(Debug, Serialize)]
pub struct RailsExplanation {
    /// How long the same key is held back after a dispatch (`0s`: no cooldown).
    pub cooldown: String,
    /// What the cooldown and `verify` count by for this anomaly: the anomaly name, or the
    /// case's `cooldown_key` expanded.
    pub cooldown_key: String,
    /// The case's `cooldown_key` as written; left out when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_key_template: Option<String>,
    /// Runs of the workflow in flight at once; `null` for log-only workflows, never held back.
    pub max_concurrent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerExplanation>,
    /// The verification window after an `ok` finish; `null` without `verify`.
    pub verify: Option<String>,
    /// The workflow dispatched once when the action fails, times out or is not healed.
    pub escalate: Option<String>,
    /// The map's `limits.actions`, which exec and webhook actions count against.
    pub budget: Option<Budget>,
}

/// A workflow's circuit breaker.
#[derive(Debug, Serialize)]
pub struct BreakerExplanation {
    pub failures: u32,
    pub within: String,
}

/// What would run, by kind of action.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum RunExplanation {
    /// The CRITICAL `healing action triggered` record is the whole action.
    Log {},
    Exec {
        /// The expanded program and arguments; `null` when expansion fails (see `error`).
        argv: Option<Vec<String>>,
        timeout: String,
    },
    Webhook {
        /// With any user and password replaced by `***`, as `GET /reflexes` shows it.
        url: String,
        /// Header names as written, values as `***`: they are where tokens go.
        headers: IndexMap<String, &'static str>,
        /// The JSON body, byte for byte as it would be sent.
        body: Box<RawValue>,
        timeout: String,
        retries: u32,
    },
}

/// Explains `anomaly` with `details` against `loaded`, read from `path`.
pub fn explain(path: &Path, loaded: &LoadedMap, anomaly: &str, details: JsonObject) -> Explanation {
    let map_info = MapInfo {
        path: path.display().to_string(),
        version: loaded.version.to_string(),
    };
    let details = Details::from_object(details);
    // The daemon's own selection: the exact name's cases, then each matching pattern's in file
    // order; the first case whose `when` holds.
    let mut trail: Vec<Tried<'_>> = Vec::new();
    let selected = loaded
        .map
        .select_observed(anomaly, &details, |tried| trail.push(tried));
    let tried = trail
        .iter()
        .map(|tried| TriedCase {
            reflex: tried.reflex.key.to_string(),
            case: shown_index(tried.reflex, tried.index),
            workflow: tried.case.workflow.clone(),
            when: tried
                .case
                .when
                .as_ref()
                .map(|when| when.judge(anomaly, &details)),
            held: tried.held,
        })
        .collect();
    let Some(selected) = selected else {
        return Explanation {
            matched: false,
            anomaly: anomaly.to_string(),
            map: map_info,
            reflex: None,
            case: None,
            workflow: None,
            action: None,
            tried,
            detail: None,
        };
    };
    let run = ActionRun {
        action_id: ActionId::new(Uuid::now_v7()),
        anomaly: Arc::from(anomaly),
        workflow: selected.workflow.clone(),
        details: Arc::new(details),
        params: selected.case.params.clone(),
        source: Source::Http,
        map_version: loaded.version.clone(),
        dry_run: false,
        received_at: SystemTime::now(),
        escalated_from: None,
    };
    Explanation {
        matched: true,
        anomaly: anomaly.to_string(),
        map: map_info,
        reflex: Some(selected.reflex.key.to_string()),
        case: shown_index(selected.reflex, selected.index),
        workflow: Some(selected.workflow.name.to_string()),
        action: Some(selected.workflow.action.kind()),
        tried,
        detail: Some(explain_match(&loaded.map, selected, &run)),
    }
}

/// A case's index as `explain` shows it: `None` for a reflex written as one case.
fn shown_index(reflex: &Reflex, index: usize) -> Option<usize> {
    reflex.listed.then_some(index)
}

/// The explanation of the case selected, for the run a dispatch would start.
pub fn explain_match(
    map: &map::ReflexMap,
    selected: Selected<'_>,
    run: &ActionRun,
) -> MatchExplanation {
    let (reflex, case) = (selected.reflex, selected.case);
    let workflow: &Workflow = &run.workflow;
    let (run_explanation, error) = what_would_run(&workflow.action, run);
    MatchExplanation {
        kind: if reflex.is_pattern {
            "pattern"
        } else {
            "exact"
        },
        shadowed: shadowed(map, reflex, &run.anomaly),
        params: case.params.clone(),
        rails: RailsExplanation {
            cooldown: humantime::format_duration(case.cooldown).to_string(),
            // The key the rails would count by: `Case::key_for`, as a dispatch computes it.
            cooldown_key: case.key_for(&run.anomaly, &run.details).into_owned(),
            cooldown_key_template: case.cooldown_key.as_ref().map(ToString::to_string),
            max_concurrent: (!matches!(workflow.action, Action::Log))
                .then_some(workflow.max_concurrent),
            breaker: workflow.breaker.map(|b| BreakerExplanation {
                failures: b.failures,
                within: humantime::format_duration(b.within).to_string(),
            }),
            verify: case
                .verify
                .map(|window| humantime::format_duration(window).to_string()),
            escalate: map.escalation(case).map(|w| w.name.to_string()),
            budget: map.limits.actions,
        },
        action_id: run.action_id.uuid(),
        run: run_explanation,
        error,
    }
}

/// The reflexes after `reflex` in matching order (every pattern, for an exact reflex) that
/// match `anomaly` too: an edit that reorders or removes a reflex, or a `when` that stops
/// holding, may hand the name to one of them.
fn shadowed(map: &map::ReflexMap, reflex: &Reflex, anomaly: &str) -> Vec<String> {
    map.candidates(anomaly)
        .skip_while(|candidate| !std::ptr::eq(*candidate, reflex))
        .skip(1)
        .map(|candidate| candidate.key.to_string())
        .collect()
}

/// What the action would do, expanded by the actions' own code, and why it would fail if it
/// would.
fn what_would_run(action: &Action, run: &ActionRun) -> (RunExplanation, Option<String>) {
    match action {
        Action::Log => (RunExplanation::Log {}, None),
        Action::Exec(exec) => {
            let (argv, error) = match actions::expand_argv(exec, run) {
                Ok(argv) => (Some(argv), None),
                Err(err) => (None, Some(err)),
            };
            let timeout = humantime::format_duration(exec.timeout).to_string();
            (RunExplanation::Exec { argv, timeout }, error)
        }
        Action::Webhook(hook) => {
            // Expanded to find a failing template, then shown without their values.
            let error = actions::request_headers(hook, run).err();
            let headers = hook
                .headers
                .keys()
                .map(|name| (name.clone(), "***"))
                .collect();
            let body = actions::request_body(run);
            // The body is JSON the daemon serialized itself.
            let body = String::from_utf8(body.to_vec())
                .ok()
                .and_then(|text| RawValue::from_string(text).ok())
                .unwrap_or_else(|| RawValue::NULL.to_owned());
            let explanation = RunExplanation::Webhook {
                url: hook.shown_url.clone(),
                headers,
                body,
                timeout: humantime::format_duration(hook.timeout).to_string(),
                retries: hook.retries,
            };
            (explanation, error)
        }
    }
}

impl Explanation {
    /// The explanation for people, one fact per line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, text: &str| {
            let _ = writeln!(out, "{label:<12}{text}");
        };
        line("anomaly", &self.anomaly);
        line(
            "map",
            &format!("{} (version {})", self.map.path, self.map.version),
        );
        let (Some(detail), Some(reflex), Some(workflow), Some(action)) =
            (&self.detail, &self.reflex, &self.workflow, self.action)
        else {
            self.cases_text(&mut line);
            let why = if self.tried.is_empty() {
                "no reflex matches"
            } else {
                "no case holds"
            };
            line(
                "unmatched",
                &format!("{why}: the daemon would answer {{\"status\":\"unmatched\"}} and log WARN `unmatched anomaly`"),
            );
            return out;
        };
        // The reflexes whose cases were all tried and failed before this one.
        let mut passed: Vec<String> = Vec::new();
        for tried in self.tried.iter().filter(|t| &t.reflex != reflex) {
            let key = format!("{:?}", tried.reflex);
            if !passed.contains(&key) {
                passed.push(key);
            }
        }
        let why = match detail.kind {
            "exact" => "an exact name, which wins over every pattern".to_string(),
            _ if !passed.is_empty() => format!(
                "a pattern, the next in file order that matches: no case of {} holds",
                passed.join(", ")
            ),
            _ => "a pattern, the first in file order that matches (no exact reflex names it)"
                .to_string(),
        };
        line("reflex", &format!("{reflex:?}: {why}"));
        if !detail.shadowed.is_empty() {
            let names: Vec<String> = detail.shadowed.iter().map(|p| format!("{p:?}")).collect();
            line(
                "",
                &format!("also matching, never reached: {}", names.join(", ")),
            );
        }
        self.cases_text(&mut line);
        line("workflow", &format!("{workflow} ({action})"));
        if !detail.params.is_empty() {
            line(
                "params",
                &serde_json::to_string(&*detail.params).unwrap_or_default(),
            );
        }
        let rails = &detail.rails;
        let per = match &rails.cooldown_key_template {
            Some(template) => format!("per cooldown_key {template:?}"),
            None => "per anomaly name".to_string(),
        };
        if rails.cooldown == "0s" {
            line("rails", "no cooldown");
        } else {
            line(
                "rails",
                &format!(
                    "cooldown {} {per}: {:?} is held back that long after a dispatch",
                    rails.cooldown, rails.cooldown_key
                ),
            );
        }
        if let Some(max) = rails.max_concurrent {
            line(
                "",
                &format!(
                    "max_concurrent {max}: more runs in flight at once are suppressed (in_flight)"
                ),
            );
        }
        if let Some(breaker) = &rails.breaker {
            line(
                "",
                &format!(
                    "breaker: {} failures within {} suspend the workflow for the rest of the window",
                    breaker.failures, breaker.within
                ),
            );
        }
        if let Some(verify) = &rails.verify {
            line(
                "",
                &format!(
                    "verify {verify}: {:?} again within {verify} of an ok finish means not healed (CRIT `healing action not healed`, a breaker failure)",
                    rails.cooldown_key
                ),
            );
        }
        if let Some(escalate) = &rails.escalate {
            line(
                "",
                &format!("escalate {escalate}: dispatched once if the action fails, times out or is not healed, through {escalate}'s own rails"),
            );
        }
        if let Some(budget) = &rails.budget {
            let free = if action == "log" {
                " (log-only actions, this one too, are free)"
            } else {
                ""
            };
            line(
                "",
                &format!(
                    "budget: at most {} exec and webhook actions within {}, all workflows together{free}",
                    budget.max,
                    humantime::format_duration(budget.within)
                ),
            );
        }
        line("action_id", &detail.action_id.to_string());
        match &detail.run {
            RunExplanation::Log {} => line(
                "would log",
                "the CRITICAL `healing action triggered` record is the whole action",
            ),
            RunExplanation::Exec { argv, timeout } => {
                if let Some(argv) = argv {
                    line(
                        "would run",
                        &serde_json::to_string(argv).unwrap_or_default(),
                    );
                    line(
                        "",
                        &format!("no shell; AUTOHEALER_* variables set; its process group is killed after {timeout}"),
                    );
                }
            }
            RunExplanation::Webhook {
                url,
                headers,
                body,
                timeout,
                retries,
            } => {
                line(
                    "would POST",
                    &format!("{url} ({timeout} per attempt, {retries} retries)"),
                );
                for name in headers.keys() {
                    line("header", &format!("{name}: ***"));
                }
                line("body", body.get());
            }
        }
        if let Some(error) = &detail.error {
            line("would fail", &format!("{error}; nothing would run"));
        }
        out
    }

    /// The cases tried, each with its conditions judged: shown when there was a choice (a
    /// list of cases, or a `when`).
    fn cases_text(&self, line: &mut impl FnMut(&str, &str)) {
        if !self
            .tried
            .iter()
            .any(|tried| tried.case.is_some() || tried.when.is_some())
        {
            return;
        }
        for (number, tried) in self.tried.iter().enumerate() {
            let name = match tried.case {
                // Counted from 1, as `check` names cases.
                Some(index) => format!("{:?} case {}", tried.reflex, index + 1),
                None => format!("{:?}", tried.reflex),
            };
            let verdict = match (tried.held, &tried.when) {
                (true, None) => "taken (no `when`: always holds)",
                (true, Some(_)) => "taken",
                (false, _) => "not taken",
            };
            line(
                if number == 0 { "cases" } else { "" },
                &format!("{name} ({}): {verdict}", tried.workflow),
            );
            for judged in tried.when.iter().flatten() {
                let value = judged
                    .value
                    .as_ref()
                    .map_or_else(|| "missing".to_string(), Value::to_string);
                let held = if judged.held { "holds" } else { "fails" };
                line(
                    "",
                    &format!("  {} {}: {value}, {held}", judged.field, judged.test),
                );
            }
        }
    }
}
