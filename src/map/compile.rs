//! `compile`: the raw schema into the `ReflexMap` dispatch reads. Whole-file checks (undeclared
//! workflows, names given twice) run here and collect every error, the first hundred with their
//! positions.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use super::budget;
use super::schema::{RawCase, RawFile, ReflexKey};
use super::{
    Action, Case, ConfigError, ConfigErrors, Escalate, Limits, Matcher, Reflex, ReflexMap,
    Workflow, MAX_LISTED_ERRORS,
};
use crate::anomaly::JsonObject;

/// Parses and validates `source` (the bytes of the file at `path`) into a `ReflexMap`.
pub fn compile(path: &Path, source: &str) -> Result<ReflexMap, ConfigErrors> {
    let error_at = |(line, column): (usize, usize), message: String| ConfigError {
        path: path.to_path_buf(),
        line,
        column,
        message,
    };
    if source.trim().is_empty() {
        return Err(ConfigErrors::one(error_at(
            (1, 1),
            "the file is empty: it needs a `reflexes:` section (or the original format's `anomalies:` list)".into(),
        )));
    }
    let raw: RawFile = budget::from_str(source).map_err(|err| {
        let position = err.location().map_or((1, 1), |l| (l.line(), l.column()));
        ConfigErrors::one(error_at(within_text(source, position), yaml_message(&err)))
    })?;

    let mut errors = Found::new(path, source);
    let mut notes = Vec::new();
    let legacy_log_only = raw.workflows.is_none();
    let declared = raw.workflows.unwrap_or_default();
    for (section, repeated) in [
        ("workflows", &declared.repeated),
        ("reflexes", &raw.reflexes.repeated),
    ] {
        // The first repeat of a key is its second occurrence, the next its third.
        let mut occurrences: HashMap<&str, usize> = HashMap::new();
        for key in repeated {
            let nth = occurrences.entry(key).or_insert(1);
            *nth += 1;
            errors.push(
                Place::Key {
                    section,
                    key,
                    nth: *nth,
                },
                || format!("{section}: `{key}` is given twice"),
            );
        }
    }
    let mut workflows: IndexMap<String, Arc<Workflow>> = declared
        .entries
        .into_iter()
        .map(|(name, raw)| {
            let workflow = Workflow {
                name: Arc::from(name.as_str()),
                action: raw.action,
                max_concurrent: raw.max_concurrent,
                breaker: raw.breaker,
            };
            (name, Arc::new(workflow))
        })
        .collect();

    let default_cooldown = raw.defaults.cooldown.map_or(Duration::ZERO, |d| d.0);
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
    let case_of = |raw: RawCase| Case {
        when: raw.when,
        workflow: raw.workflow,
        workflow_index: 0, // set below, once the workflows are known
        params: params_of(raw.params),
        cooldown: raw.cooldown.map_or(default_cooldown, |d| d.0),
        cooldown_key: raw.cooldown_key.map(|key| key.0),
        verify: raw.verify.map(|v| v.0),
        escalate: raw.escalate.map(|workflow| Escalate {
            workflow,
            index: 0, // set below, with the workflow's
        }),
    };
    // Each reflex remembers its section, not its position: finding a position scans the text,
    // so doing it for every reflex made loading quadratic (issue 5: 100,000 names took minutes).
    // Positions are looked up only for the reflexes an error is about.
    let mut reflexes = Vec::new();
    // Patterns as parsed when the file was read, each with its reflex's index.
    let mut patterns = Vec::new();
    for (key, reflex) in raw.reflexes.entries {
        let is_pattern = matches!(key, ReflexKey::Pattern(_));
        let mut cases = reflex.cases.into_iter().map(case_of);
        // The schema's visitor never yields a reflex without a case.
        let Some(first) = cases.next() else { continue };
        let compiled = Reflex::new(
            key.as_str(),
            is_pattern,
            reflex.listed,
            first,
            cases.collect(),
        );
        if let ReflexKey::Pattern(pattern) = key {
            patterns.push((pattern, reflexes.len()));
        }
        reflexes.push((compiled, Section::Reflexes));
    }
    // Each name known so far, with how often the `anomalies:` list has given it. Built only
    // for a file that has the list: copying and hashing every reflex's name cost a 100,000-name
    // map about 10% of its load (callgrind).
    let mut seen: HashMap<String, usize> = if raw.anomalies.is_empty() {
        HashMap::new()
    } else {
        reflexes
            .iter()
            .map(|(r, _)| (r.key.to_string(), 0))
            .collect()
    };
    for entry in raw.anomalies {
        match seen.entry(entry.name.0.clone()) {
            Entry::Occupied(mut given) => {
                *given.get_mut() += 1;
                let name = &entry.name.0;
                errors.push(
                    Place::LegacyName {
                        name,
                        nth: *given.get(),
                    },
                    || format!("anomaly `{name}` is given twice"),
                );
                continue;
            }
            Entry::Vacant(first) => {
                first.insert(1);
            }
        }
        let case = Case::new(
            &entry.workflow,
            params_of(entry.params.unwrap_or_default()),
            default_cooldown,
        );
        reflexes.push((
            Reflex::new(&entry.name.0, false, false, case, Vec::new()),
            Section::Anomalies,
        ));
    }

    for (reflex, section) in &mut reflexes {
        let listed = reflex.listed;
        let key = reflex.key.clone();
        for (number, case) in reflex.cases_mut().enumerate() {
            // A case of a list is named by its place in it, from 1 as people count. Written
            // only for an error: formatting it for every case was 4% of a large map's load.
            let which = || {
                if listed {
                    format!("reflex `{key}` case {}", number + 1)
                } else {
                    format!("reflex `{key}`")
                }
            };
            let mut resolve = |workflow: &str, what: &str| -> usize {
                if let Some(index) = workflows.get_index_of(workflow) {
                    return index;
                }
                if legacy_log_only {
                    // The original service had no `workflows:` section: every name it used
                    // was log-only.
                    notes.push(format!(
                        "workflow `{workflow}` is not declared (no `workflows:` section), so it runs as log-only"
                    ));
                    let (index, _) = workflows.insert_full(
                        workflow.to_string(),
                        Arc::new(Workflow {
                            name: workflow.into(),
                            action: Action::Log,
                            max_concurrent: 1,
                            breaker: None,
                        }),
                    );
                    return index;
                }
                errors.push(section.place_of(&key), || {
                    format!(
                        "{} {what} workflow `{workflow}`, which is not declared under `workflows:`",
                        which()
                    )
                });
                0
            };
            case.workflow_index = resolve(&case.workflow, "names");
            if let Some(escalate) = &mut case.escalate {
                escalate.index = resolve(&escalate.workflow, "escalates to");
            }
        }
    }
    errors.into_result()?;

    let reflexes: Vec<Reflex> = reflexes.into_iter().map(|(reflex, _)| reflex).collect();
    let exact = reflexes
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_pattern)
        .map(|(i, r)| (r.key.to_string(), i));
    let matcher = Matcher::new(exact, patterns)
        .map_err(|message| ConfigErrors::one(error_at((1, 1), message)))?;
    // A map where an anomaly may fall through its first reflex's cases needs every matching
    // pattern in order: built now, at load, rather than by the first request that falls through.
    if reflexes.iter().any(Reflex::may_fall_through) {
        matcher.prepare_every_match();
    }
    let verifies = reflexes
        .iter()
        .any(|reflex| reflex.cases().any(|case| case.verify.is_some()));
    Ok(ReflexMap {
        reflexes,
        workflows,
        matcher,
        limits: Limits {
            actions: raw.limits.actions,
        },
        notes,
        verifies,
    })
}

/// The section of the file a reflex was written in, for finding its position on error.
///
/// Each reflex remembers its section, not its position: positions are found in the text, and
/// only for the reflexes an error is about (issue 5: 100,000 names took minutes otherwise).
#[derive(Debug, Clone, Copy)]
enum Section {
    Reflexes,
    Anomalies,
}

impl Section {
    fn place_of(self, key: &str) -> Place<'_> {
        match self {
            Section::Reflexes => Place::Key {
                section: "reflexes",
                key,
                nth: 1,
            },
            // Only a name's first occurrence in the list becomes a reflex.
            Section::Anomalies => Place::LegacyName { name: key, nth: 1 },
        }
    }
}

/// `position`, or the end of `source` when it is past it: at the end of a text without a final
/// line break, libyaml reports a line that is not there (found by the map_compile fuzz target).
fn within_text(source: &str, (line, column): (usize, usize)) -> (usize, usize) {
    // libyaml's line breaks: LF, CR, CRLF, and the Unicode NEL, LS and PS.
    let is_break = |c: char| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}');
    let lines = source.matches(is_break).count() - source.matches("\r\n").count() + 1;
    if line <= lines {
        return (line, column);
    }
    let last_line = source.rsplit(is_break).next().unwrap_or("");
    (lines, last_line.chars().count() + 1)
}

/// serde_yaml's message without its trailing ` at line L column C`, which we print up front.
fn yaml_message(err: &serde_yaml::Error) -> String {
    let text = err.to_string();
    if text == "repetition limit exceeded" {
        // serde_yaml's own bound on following aliases (100 per event of the text), met before
        // the budget by deep chains of small anchors; it has no position to give.
        return "alias expansion limit: aliases are followed more than 100 times per node of \
                the text; is it an alias bomb?"
            .into();
    }
    match text.find(" at line ") {
        Some(cut) if err.location().is_some() => text[..cut].to_string(),
        _ => text,
    }
}

/// Where an error is, found in the text only when the error is listed.
#[derive(Debug, Clone, Copy)]
enum Place<'k> {
    /// The `nth` (from 1) entry `key:` of the top-level `section:`.
    Key {
        section: &'static str,
        key: &'k str,
        nth: usize,
    },
    /// The `nth` (from 1) `name: NAME` of the original format's `anomalies:` list.
    LegacyName { name: &'k str, nth: usize },
}

/// The whole-file errors of one compile: the first `MAX_LISTED_ERRORS` with their positions,
/// then only a count, so a file of 50,000 errors is checked in linear time (issue 13: finding
/// every position by scanning the text took 27 s) and reported in a screenful.
struct Found<'s> {
    path: &'s Path,
    source: &'s str,
    /// Built on the first listed error: a map without errors never pays for it.
    positions: Option<Positions<'s>>,
    listed: Vec<ConfigError>,
    more: usize,
}

impl<'s> Found<'s> {
    fn new(path: &'s Path, source: &'s str) -> Self {
        Found {
            path,
            source,
            positions: None,
            listed: Vec::new(),
            more: 0,
        }
    }

    /// Adds an error at `place`, saying `message`; past the listed ones, only counts it.
    fn push(&mut self, place: Place<'_>, message: impl FnOnce() -> String) {
        if self.listed.len() >= MAX_LISTED_ERRORS {
            self.more += 1;
            return;
        }
        let source = self.source;
        let positions = self.positions.get_or_insert_with(|| Positions::of(source));
        let (line, column) = positions.find(place);
        self.listed.push(ConfigError {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message(),
        });
    }

    fn into_result(self) -> Result<(), ConfigErrors> {
        match ConfigErrors::new(self.listed, self.more) {
            Some(errors) => Err(errors),
            None => Ok(()),
        }
    }
}

/// Where the entries of the top-level sections start, from one pass over the text.
///
/// serde_yaml keeps no spans, so positions for whole-file errors come from the text: block-style
/// maps and lists (what people write) are found exactly; anything else falls back to the
/// section's own line, or to 1:1.
#[derive(Debug, Default)]
struct Positions<'s> {
    /// The line of each top-level `section:`.
    sections: HashMap<&'s str, usize>,
    /// Each `(section, key)` entry, at the indentation of the section's first entry, in order.
    keys: HashMap<(&'s str, &'s str), Vec<(usize, usize)>>,
    /// Each `name: NAME` in the `anomalies:` list, in order.
    legacy_names: HashMap<&'s str, Vec<(usize, usize)>>,
}

impl<'s> Positions<'s> {
    fn of(source: &'s str) -> Positions<'s> {
        let mut positions = Positions::default();
        // The section being read, and the indentation of its entries once its first is seen.
        let mut section: Option<(&str, Option<usize>)> = None;
        for (index, line) in source.lines().enumerate() {
            let line_number = index + 1;
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if indent == 0 && !trimmed.starts_with('-') {
                // A top-level key starts a section (and ends the one before).
                section = key_of(trimmed).map(|name| {
                    positions.sections.entry(name).or_insert(line_number);
                    (name, None)
                });
                continue;
            }
            let Some((name, entry_indent)) = &mut section else {
                continue;
            };
            if *name == "anomalies" {
                let item = trimmed.trim_start_matches('-').trim_start();
                if let Some(value) = item.strip_prefix("name:") {
                    let column = indent + (trimmed.len() - item.len()) + 1;
                    positions
                        .legacy_names
                        .entry(unquote(value.trim()))
                        .or_default()
                        .push((line_number, column));
                }
                continue;
            }
            if *entry_indent.get_or_insert(indent) != indent {
                continue; // inside an entry: a long-form reflex's `workflow:` is no reflex
            }
            if let Some(key) = key_of(trimmed) {
                positions
                    .keys
                    .entry((*name, key))
                    .or_default()
                    .push((line_number, indent + 1));
            }
        }
        positions
    }

    fn find(&self, place: Place<'_>) -> (usize, usize) {
        let (section, found, nth) = match place {
            Place::Key { section, key, nth } => (section, self.keys.get(&(section, key)), nth),
            Place::LegacyName { name, nth } => ("anomalies", self.legacy_names.get(name), nth),
        };
        let entry = found.and_then(|all| all.get(nth.saturating_sub(1)));
        let header = || self.sections.get(section).map(|&line| (line, 1));
        entry.copied().or_else(header).unwrap_or((1, 1))
    }
}

/// The key of a `key: value` line (plain, `"quoted"` or `'quoted'`), if the line is one.
fn key_of(text: &str) -> Option<&str> {
    for quote in ['"', '\''] {
        if let Some(rest) = text.strip_prefix(quote) {
            let (key, after) = rest.split_once(quote)?;
            return after.starts_with(':').then_some(key);
        }
    }
    // A plain key ends at the first `:` followed by a space or the end of the line.
    let mut from = 0;
    while let Some(found) = text[from..].find(':') {
        let colon = from + found;
        let after = &text[colon + 1..];
        if after.is_empty() || after.starts_with([' ', '\t']) {
            return Some(text[..colon].trim_end());
        }
        from = colon + 1;
    }
    None
}

/// `value` without one pair of surrounding quotes.
fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|rest| rest.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{parse_duration, Template, DEFAULT_EXEC_TIMEOUT};
    use super::*;

    fn compile_str(source: &str) -> Result<ReflexMap, ConfigErrors> {
        compile(Path::new("map.yml"), source)
    }

    fn errors_of(source: &str) -> String {
        compile_str(source).unwrap_err().to_string()
    }

    /// The case and workflow `name` selects with no details.
    fn lookup<'a>(map: &'a ReflexMap, name: &str) -> Option<(&'a Case, &'a Arc<Workflow>)> {
        let selected = map.select(name, &crate::anomaly::Details::empty())?;
        Some((selected.case, selected.workflow))
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
        let (reflex, workflow) = lookup(&map, "nginx.web1.down").unwrap();
        assert_eq!(
            &*map
                .select("nginx.web1.down", &crate::anomaly::Details::empty())
                .unwrap()
                .reflex
                .key,
            "nginx.*.down"
        );
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
        let (reflex, workflow) = lookup(&map, "api_latency.coinbase.high").unwrap();
        assert_eq!(reflex.cooldown, Duration::from_secs(10), "defaults apply");
        match &workflow.action {
            Action::Webhook(hook) => {
                assert_eq!(hook.retries, 3);
                assert_eq!(hook.timeout, Duration::from_secs(2));
                assert_eq!(hook.headers["X-Anomaly"].as_str(), "{{anomaly}}");
            }
            other => panic!("expected webhook, got {other:?}"),
        }
        assert_eq!(
            lookup(&map, "disk.sda.full").unwrap().1.action.kind(),
            "log"
        );
        assert!(lookup(&map, "nothing").is_none());
        assert!(map.notes.is_empty());
    }

    #[test]
    fn original_format_loads_unchanged() {
        let map = compile_str(
            "anomalies:\n  - name: api_latency.coinbase.high\n    workflow: run_coinbase_health_check_and_clear_cache\n    params: {exchange: coinbase}\n  - name: disk.*\n    workflow: page\n",
        )
        .unwrap();
        let (reflex, workflow) = lookup(&map, "api_latency.coinbase.high").unwrap();
        assert_eq!(workflow.action.kind(), "log");
        assert_eq!(reflex.params["exchange"], "coinbase");
        // Exact names only: `*` is literal in the original format.
        assert!(lookup(&map, "disk.sda").is_none());
        assert!(lookup(&map, "disk.*").is_some());
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
            "map.yml:4:5: reflexes.x: unknown field `cooldwn`, expected one of `workflow`, `params`, `cooldown`, `cooldown_key`, `verify`, `escalate`, `when`"
        );
        assert_eq!(
            errors_of("reflex:\n  x: a\n"),
            "map.yml:1:1: unknown field `reflex`, expected one of `defaults`, `limits`, `workflows`, `reflexes`, `anomalies`"
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
    fn retries_and_timeouts_are_bounded() {
        assert_eq!(
            errors_of("workflows:\n  a:\n    webhook: {url: http://h/, retries: 1000000}\n"),
            "map.yml:3:14: workflows.a.webhook: `retries` is 1000000: give at most 10"
        );
        assert_eq!(
            errors_of("workflows:\n  a:\n    webhook:\n      url: http://h/\n      retries: 11\n"),
            "map.yml:4:7: workflows.a.webhook: `retries` is 11: give at most 10"
        );
        assert_eq!(
            errors_of("workflows:\n  a:\n    exec: {command: [true], timeout: 0s}\n"),
            "map.yml:3:11: workflows.a.exec: timeout `0s` is shorter than 10ms: give one from 10ms to 1h"
        );
        assert_eq!(
            errors_of("workflows:\n  a:\n    webhook: {url: http://h/, timeout: 9ms}\n"),
            "map.yml:3:14: workflows.a.webhook: timeout `9ms` is shorter than 10ms: give one from 10ms to 1h"
        );
        assert_eq!(
            errors_of("workflows:\n  a:\n    exec: {command: [true], timeout: 61m}\n"),
            "map.yml:3:11: workflows.a.exec: timeout `61m` is longer than 1h: give one from 10ms to 1h"
        );
        let map = compile_str(
            "workflows:\n  a:\n    exec: {command: [true], timeout: 1h}\n  b:\n    webhook: {url: http://h/, timeout: 10ms, retries: 10}\n",
        )
        .unwrap();
        match (&map.workflows["a"].action, &map.workflows["b"].action) {
            (Action::Exec(exec), Action::Webhook(hook)) => {
                assert_eq!(exec.timeout, Duration::from_secs(3600));
                assert_eq!(hook.timeout, Duration::from_millis(10));
                assert_eq!(hook.retries, 10);
            }
            other => panic!("unexpected actions {other:?}"),
        }
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
    fn alias_bombs_are_refused_not_expanded() {
        // A list of 2,000 names aliased 1,000 times in a reflex's params: 2 million nodes.
        let mut bomb = String::from(
            "workflows:\n  w: {}\nreflexes:\n  a:\n    workflow: w\n    params:\n      big: &b [",
        );
        bomb.push_str(&vec!["x"; 2_000].join(", "));
        bomb.push_str("]\n      copies: [");
        bomb.push_str(&vec!["*b"; 1_000].join(", "));
        bomb.push_str("]\n");
        let errors = errors_of(&bomb);
        assert!(
            errors.starts_with("map.yml:7:") && errors.contains(": reflexes.a.params.copies["),
            "{errors}"
        );
        assert!(errors.contains("]: alias expansion limit: "), "{errors}");

        // Nine levels of ten aliases each: serde_yaml's own limit stops these first.
        let mut laughs = String::from("workflows:\n  w: {}\nreflexes:\n  a:\n    workflow: w\n    params:\n      l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for level in 1..9 {
            let items = vec![format!("*l{}", level - 1); 10].join(", ");
            laughs.push_str(&format!("      l{level}: &l{level} [{items}]\n"));
        }
        assert_eq!(
            errors_of(&laughs),
            "map.yml:1:1: alias expansion limit: aliases are followed more than 100 times per \
             node of the text; is it an alias bomb?"
        );
    }

    #[test]
    fn errors_at_the_end_of_the_text_point_into_it() {
        // Found by the map_compile fuzz target: libyaml said 3:1 of a two-line file.
        assert_eq!(
            errors_of("?\n<"),
            "map.yml:2:2: could not find expected ':'"
        );
        assert_eq!(
            errors_of("?\r\n<"),
            "map.yml:2:2: could not find expected ':'"
        );
        assert_eq!(
            errors_of("?\n<\n"),
            "map.yml:3:1: could not find expected ':'"
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
    fn errors_past_the_hundredth_are_counted_not_listed() {
        let mut source = String::from("workflows:\n  w: {}\nreflexes:\n");
        for i in 0..250 {
            source.push_str(&format!("  r{i}: missing\n"));
        }
        let errors = compile_str(&source).unwrap_err();
        assert_eq!(errors.listed().len(), MAX_LISTED_ERRORS);
        assert_eq!(errors.more(), 150);
        let text = errors.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 101);
        assert_eq!(
            lines[99],
            "map.yml:103:3: reflex `r99` names workflow `missing`, which is not declared under `workflows:`"
        );
        assert_eq!(lines[100], "… and 150 more errors");
    }

    #[test]
    fn each_repeat_is_reported_where_it_is() {
        assert_eq!(
            errors_of("workflows:\n  a: {}\nreflexes:\n  x: a\n  'x': a\n  \"x\": a\n"),
            "map.yml:5:3: reflexes: `x` is given twice\nmap.yml:6:3: reflexes: `x` is given twice"
        );
        assert_eq!(
            errors_of("workflows:\n  a: {}\nanomalies:\n- name: x\n  workflow: a\n- workflow: a\n  name: 'x'\n"),
            "map.yml:7:3: anomaly `x` is given twice"
        );
    }

    #[test]
    fn only_a_sections_own_keys_are_positions_of_its_entries() {
        // `workflow:` inside the long form of `a` is not the reflex named `workflow`.
        assert_eq!(
            errors_of("workflows:\n  w: {}\nreflexes:\n  a:\n    workflow: w\n  workflow: nope\n"),
            "map.yml:6:3: reflex `workflow` names workflow `nope`, which is not declared under `workflows:`"
        );
        // A flow-style section falls back to its own line.
        assert_eq!(
            errors_of("workflows: {w: {}}\nreflexes: {a: w, b: nope}\n"),
            "map.yml:2:1: reflex `b` names workflow `nope`, which is not declared under `workflows:`"
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
    fn short_long_and_list_forms_reject_other_shapes() {
        assert_eq!(
            errors_of("reflexes:\n  x: 5\n"),
            "map.yml:2:6: reflexes.x: invalid type: integer `5`, expected a workflow name, a mapping with `workflow` and optional `when`, `params`, `cooldown`, `cooldown_key`, `verify` and `escalate`, or a list of such cases"
        );
        assert_eq!(
            errors_of("reflexes:\n  x: []\n"),
            "map.yml:2:6: reflexes.x: the list of cases is empty: give at least one workflow"
        );
        assert_eq!(
            errors_of("reflexes:\n  x: [[a]]\n"),
            "map.yml:2:7: reflexes.x[0]: invalid type: sequence, expected a workflow name, or a mapping with `workflow` and optional `when`, `params`, `cooldown`, `cooldown_key`, `verify` and `escalate`"
        );
    }

    const CASES: &str = r#"
defaults: {cooldown: 1m}
limits:
  actions: {max: 10, within: 1m}
workflows:
  clean_tmp: {exec: {command: [systemd-tmpfiles, --clean]}}
  restart: {exec: {command: [systemctl, restart, nginx]}}
  page: {}
reflexes:
  disk.sda.full:
    - when: {details.mount: /boot}
      workflow: page
  "disk.*.full":
    - when: {details.percent: {gte: 95}, details.mount: {in: [/, /var]}}
      workflow: clean_tmp
      cooldown: 10m
      cooldown_key: "{{details.mount}}"
    - when: {details.labels.severity: {exists: true}}
      workflow: page
  "disk.**":
    - workflow: page
      cooldown: 0s
  "nginx.*.down":
    workflow: restart
    verify: 10m
    escalate: page
"#;

    fn take(map: &ReflexMap, name: &str, details: serde_json::Value) -> Option<(String, String)> {
        let details = crate::anomaly::Details::from_object(details.as_object().unwrap().clone());
        let selected = map.select(name, &details)?;
        Some((
            selected.reflex.key.to_string(),
            selected.case.workflow.clone(),
        ))
    }

    #[test]
    fn cases_are_tried_in_matching_order() {
        let map = compile_str(CASES).unwrap();
        let hit = |name: &str, details| take(&map, name, details);
        let pair = |reflex: &str, workflow: &str| Some((reflex.to_string(), workflow.to_string()));
        // The exact name's cases first...
        assert_eq!(
            hit("disk.sda.full", json!({"mount": "/boot"})),
            pair("disk.sda.full", "page")
        );
        // ...then each matching pattern's, in file order.
        assert_eq!(
            hit("disk.sda.full", json!({"mount": "/var", "percent": 97})),
            pair("disk.*.full", "clean_tmp")
        );
        assert_eq!(
            hit(
                "disk.sda.full",
                json!({"mount": "/var", "percent": 90, "labels": {"severity": "x"}})
            ),
            pair("disk.*.full", "page")
        );
        assert_eq!(
            hit("disk.sda.full", json!({"mount": "/home", "percent": 99})),
            pair("disk.**", "page")
        );
        assert_eq!(
            hit("disk.sdb.full", json!({"percent": "99"})),
            pair("disk.**", "page")
        );
        assert_eq!(
            hit("nginx.web1.down", json!({})),
            pair("nginx.*.down", "restart")
        );
        assert!(map.verifies);
        assert_eq!(
            map.limits.actions,
            Some(crate::map::Budget {
                max: 10,
                within: Duration::from_secs(60)
            })
        );
        let (case, _) = lookup(&map, "nginx.web1.down").unwrap();
        assert_eq!(
            case.cooldown,
            Duration::from_secs(60),
            "defaults apply to cases"
        );
        assert_eq!(case.verify, Some(Duration::from_secs(600)));
        assert_eq!(map.escalation(case).unwrap().name.as_ref(), "page");
        let candidates: Vec<&str> = map.candidates("disk.sda.full").map(|r| &*r.key).collect();
        assert_eq!(candidates, ["disk.sda.full", "disk.*.full", "disk.**"]);
    }

    #[test]
    fn select_observed_tells_every_case_tried_in_order() {
        let map = compile_str(CASES).unwrap();
        let tried = |name: &str, details: serde_json::Value| {
            let details =
                crate::anomaly::Details::from_object(details.as_object().unwrap().clone());
            let mut tried = Vec::new();
            let selected = map.select_observed(name, &details, |t| {
                tried.push((t.reflex.key.to_string(), t.index, t.held));
            });
            let taken = selected.map(|s| (s.reflex.key.to_string(), s.case.workflow.clone()));
            (tried, taken)
        };
        let key = |text: &str| text.to_string();
        let (trail, taken) = tried("disk.sda.full", json!({"mount": "/var", "percent": 90}));
        assert_eq!(
            trail,
            [
                (key("disk.sda.full"), 0, false),
                (key("disk.*.full"), 0, false),
                (key("disk.*.full"), 1, false),
                (key("disk.**"), 0, true),
            ]
        );
        assert_eq!(taken, Some((key("disk.**"), key("page"))));
        // The first case that holds ends the walk.
        let (trail, _) = tried("disk.sda.full", json!({"mount": "/var", "percent": 97}));
        assert_eq!(
            trail,
            [
                (key("disk.sda.full"), 0, false),
                (key("disk.*.full"), 0, true)
            ]
        );
        let (trail, taken) = tried("cpu.hot", json!({}));
        assert_eq!((trail, taken), (vec![], None));
    }

    #[test]
    fn when_no_case_holds_the_anomaly_is_unmatched() {
        let map = compile_str(
            "workflows: {page: {}}\nreflexes:\n  'a.*':\n    - when: {details.n: {gt: 5}}\n      workflow: page\n",
        )
        .unwrap();
        assert!(take(&map, "a.b", json!({"n": 6})).is_some());
        assert!(take(&map, "a.b", json!({"n": 5})).is_none());
        assert!(take(&map, "a.b", json!({})).is_none());
    }

    #[test]
    fn cooldown_keys_expand_per_instance() {
        let map = compile_str(CASES).unwrap();
        let details = crate::anomaly::Details::from_object(
            json!({"mount": "/var", "percent": 99})
                .as_object()
                .unwrap()
                .clone(),
        );
        let selected = map.select("disk.sdb.full", &details).unwrap();
        assert_eq!(selected.case.key_for("disk.sdb.full", &details), "/var");
        let plain = map.select("nginx.a.down", &details).unwrap();
        assert!(matches!(
            plain.case.key_for("nginx.a.down", &details),
            std::borrow::Cow::Borrowed("nginx.a.down")
        ));
    }

    #[test]
    fn reflexes_show_their_cases_and_new_keys() {
        let map = compile_str(CASES).unwrap();
        let shown = serde_json::to_value(&map.reflexes).unwrap();
        assert_eq!(
            shown[1],
            json!({"match": "disk.*.full", "cases": [
                {"when": {"details.percent": {"gte": 95}, "details.mount": {"in": ["/", "/var"]}},
                 "workflow": "clean_tmp", "params": {}, "cooldown": "10m",
                 "cooldown_key": "{{details.mount}}"},
                {"when": {"details.labels.severity": {"exists": true}},
                 "workflow": "page", "params": {}, "cooldown": "1m"},
            ]})
        );
        assert_eq!(
            shown[3],
            json!({"match": "nginx.*.down", "workflow": "restart", "params": {}, "cooldown": "1m",
                   "verify": "10m", "escalate": "page"})
        );
        assert_eq!(
            serde_json::to_value(map.limits).unwrap(),
            json!({"actions": {"max": 10, "within": "1m"}})
        );
    }

    #[test]
    fn invalid_autonomy_keys_are_errors_with_positions() {
        let reflex = |body: &str| {
            errors_of(&format!(
                "workflows: {{page: {{}}}}\nreflexes:\n  'a.*':\n{body}"
            ))
        };
        assert_eq!(
            reflex("    - when: {details.x: {gtee: 1}}\n      workflow: page\n"),
            "map.yml:4:25: reflexes.a.*[0].when.details.x: unknown operator `gtee`; use eq, ne, gt, gte, lt, lte, in, matches or exists"
        );
        assert_eq!(
            reflex("    - when:\n        anomaly: {matches: 'a(b'}\n      workflow: page\n"),
            "map.yml:5:28: reflexes.a.*[0].when.anomaly.matches: invalid regular expression `a(b`: unclosed group"
        );
        assert_eq!(
            reflex("    - when: {name: x}\n      workflow: page\n"),
            "map.yml:4:14: reflexes.a.*[0].when: unknown field `name` in `when`: use anomaly or details.KEY (dots for nesting)"
        );
        assert_eq!(
            reflex("    workflow: page\n    cooldown_key: 'k-{{action_id}}'\n"),
            "map.yml:5:19: reflexes.a.*.cooldown_key: `cooldown_key` `k-{{action_id}}` uses {{action_id}}, which differs for every action, so nothing would ever cool down"
        );
        assert_eq!(
            reflex("    workflow: page\n    verify: 0s\n"),
            "map.yml:5:13: reflexes.a.*.verify: `verify: 0s` would judge every action healed at once: give a window longer than 0s, or leave `verify` out"
        );
        assert_eq!(
            reflex("    - page\n    - {workflow: gone, escalate: pager}\n"),
            "map.yml:3:3: reflex `a.*` case 2 names workflow `gone`, which is not declared under `workflows:`\n\
             map.yml:3:3: reflex `a.*` case 2 escalates to workflow `pager`, which is not declared under `workflows:`"
        );
        assert_eq!(
            errors_of("limits:\n  actions: {max: 200000, within: 1m}\n"),
            "map.yml:2:12: limits.actions: `max` is 200000; the limit is 100000 actions per window"
        );
        assert_eq!(
            errors_of("limits:\n  actions: {max: 5, within: 0s}\n"),
            "map.yml:2:12: limits.actions: `within` must be longer than 0s"
        );
        assert_eq!(
            errors_of("limits:\n  action: {max: 5, within: 1s}\n"),
            "map.yml:2:3: limits: unknown field `action`, expected `actions`"
        );
    }

    #[test]
    fn the_original_format_escalates_to_log_only_workflows_too() {
        let map = compile_str("reflexes:\n  a: {workflow: fix, escalate: pager}\n").unwrap();
        assert_eq!(map.notes.len(), 2);
        let (case, _) = lookup(&map, "a").unwrap();
        assert_eq!(map.escalation(case).unwrap().action.kind(), "log");
    }
}
