//! The JSON Schema of `reflex_map.yml` (SPEC §10): derived by schemars from the raw types in
//! `schema`, with the schema of each type whose deserialization is hand-written (a visitor or a
//! `try_from` check) written here beside nothing else, so it describes what that code accepts.
//!
//! YAML scalars keep their types when an editor validates them (`5` is a number, `true` a
//! boolean), while serde_yaml hands the daemon any scalar as text where it wants a string. So
//! where a string is expected and a number is natural (argv elements, header values) the schema
//! accepts numbers and booleans too: no red squiggle under `command: [sleep, 5]`, which loads.
//!
//! Left to the daemon's own message (`autohealer check`): the year limit on durations and the
//! 10ms-1h range of timeouts, the names inside `{{...}}` placeholders, the syntax of a `matches`
//! regular expression, and the whole-file checks of `compile` (undeclared workflows, keys given
//! twice).

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::super::conditions::When;
use super::super::{Budget, MAX_BUDGET_ACTIONS};
use super::{Argv, DistinctMap, DurationValue, Headers, KeyTemplate, RawCase, RawCaseLong};
use super::{RawFile, RawReflex, RawWorkflow, RawWorkflowFields, Retries, Timeout};
use super::{VerifyWindow, WebhookUrl, MAX_WEBHOOK_RETRIES};

/// A duration as `parse_duration` (humantime) reads it: one or more `<number><unit>` with an
/// optional fraction, or a bare `0`. The year limit is left to the daemon's message.
const DURATION_PATTERN: &str = r"^\s*(0|([0-9]+(\.[0-9]+)?\s*(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\s*)+)$";

/// The durations `DURATION_PATTERN` accepts that are zero (`0`, `0s`, `0.0m`), which `verify`
/// and `limits.actions.within` refuse.
const ZERO_DURATION_PATTERN: &str = r"^\s*(0|(0+(\.0+)?\s*[a-zµA-Z]+\s*)+)$";

/// A `when` field: `anomaly`, or `details.` and a path of non-empty keys.
const FIELD_PATTERN: &str = r"^(anomaly|details(\.[^.]+)+)$";

/// A `{{action_id}}` placeholder, which a `cooldown_key` may not use.
const ACTION_ID_PATTERN: &str = r"\{\{\s*action_id\s*\}\}";

/// The characters of an HTTP header name (RFC 9110 `token`), as `HeaderName` accepts them.
const HEADER_NAME_PATTERN: &str = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

/// The JSON Schema (draft 2020-12) of `reflex_map.yml`, pretty-printed with a final newline:
/// what `autohealer schema` prints and `reflex_map.schema.json` holds.
pub fn reflex_map_schema() -> String {
    let schema = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<RawFile>();
    // A schema is a JSON value with string keys: serializing it cannot fail.
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// A string, or a number or boolean that serde_yaml reads as its text.
fn scalar(description: &str) -> Schema {
    json_schema!({
        "type": ["string", "number", "boolean"],
        "description": description,
    })
}

impl JsonSchema for RawWorkflow {
    fn schema_name() -> Cow<'static, str> {
        "Workflow".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        // Deserialized from these fields, then checked (`try_from`).
        RawWorkflowFields::json_schema(generator)
    }
}

impl JsonSchema for RawReflex {
    fn schema_name() -> Cow<'static, str> {
        "Reflex".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        // The visitor in `schema` takes one case (a name or a mapping) or a non-empty list.
        let long = generator.subschema_for::<RawCaseLong>();
        let case = generator.subschema_for::<RawCase>();
        json_schema!({
            "anyOf": [
                workflow_name(),
                long,
                {
                    "type": "array",
                    "minItems": 1,
                    "items": case,
                    "description": "Cases tried in order: the first whose `when` holds is taken; when none holds, the next matching pattern's cases, else `unmatched`.",
                },
            ]
        })
    }
}

impl JsonSchema for RawCase {
    fn schema_name() -> Cow<'static, str> {
        "Case".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        // The visitor in `schema` takes a workflow name or a mapping.
        let long = generator.subschema_for::<RawCaseLong>();
        json_schema!({"anyOf": [workflow_name(), long]})
    }
}

/// A case written as its workflow's name alone.
fn workflow_name() -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "description": "The workflow to start, declared under `workflows:`.",
    })
}

impl JsonSchema for When {
    fn schema_name() -> Cow<'static, str> {
        "When".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // As `conditions` reads it: a value (equality) or a mapping of operators, per field.
        let value = json_schema!({"type": ["string", "number", "boolean", "null"]});
        let number = json_schema!({"type": "number"});
        let operators = json_schema!({
            "type": "object",
            "minProperties": 1,
            "additionalProperties": false,
            "properties": {
                "eq": value.clone(),
                "ne": value.clone(),
                "gt": number.clone(),
                "gte": number.clone(),
                "lt": number.clone(),
                "lte": number,
                "in": {"type": "array", "minItems": 1, "items": value.clone()},
                "matches": scalar("A regular expression (Rust regex syntax) the whole string must match."),
                "exists": {"type": "boolean"},
            },
            // A missing field holds only `exists: false`, which no other operator holds.
            "not": {
                "required": ["exists"],
                "properties": {"exists": {"const": false}},
                "minProperties": 2,
            },
        });
        json_schema!({
            "description": "Conditions that must all hold: a field (`anomaly`, or `details.KEY` with dots for nesting) maps to a value (equality) or to operators: eq, ne, gt, gte, lt, lte, in, matches, exists. A missing field holds only `exists: false`; a value of another type holds nothing.",
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": FIELD_PATTERN},
            "additionalProperties": {"anyOf": [value, operators]},
        })
    }
}

impl JsonSchema for KeyTemplate {
    fn schema_name() -> Cow<'static, str> {
        "CooldownKey".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "number", "boolean"],
            "not": {"type": "string", "pattern": ACTION_ID_PATTERN},
            "description": "A template such as \"{{details.mount}}\": one cooldown per value. `{{action_id}}` differs for every action, so it is refused.",
        })
    }
}

/// A duration longer than zero.
fn positive_duration(description: &str) -> Schema {
    json_schema!({
        "description": description,
        "type": "string",
        "pattern": DURATION_PATTERN,
        "not": {"pattern": ZERO_DURATION_PATTERN},
    })
}

impl JsonSchema for VerifyWindow {
    fn schema_name() -> Cow<'static, str> {
        "VerifyWindow".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        positive_duration("A duration longer than 0s, such as 10m: how long after an ok finish a recurrence of the same key means the remedy did not hold.")
    }
}

impl JsonSchema for Timeout {
    fn schema_name() -> Cow<'static, str> {
        "Timeout".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The range is left to the daemon's message; zero, at least, is refused here too.
        positive_duration("A duration from 10ms to 1h, such as 30s.")
    }
}

impl JsonSchema for Retries {
    fn schema_name() -> Cow<'static, str> {
        "Retries".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_WEBHOOK_RETRIES,
        })
    }
}

impl JsonSchema for Budget {
    fn schema_name() -> Cow<'static, str> {
        "Budget".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Checked by `Budget`'s visitor in `schema`.
        json_schema!({
            "type": "object",
            "additionalProperties": false,
            "required": ["max", "within"],
            "properties": {
                "max": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_BUDGET_ACTIONS,
                    "description": "Exec and webhook actions allowed within any `within`.",
                },
                "within": positive_duration("The sliding window, longer than 0s, such as 1m."),
            },
        })
    }
}

impl<K, V: JsonSchema> JsonSchema for DistinctMap<K, V> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("MapOf{}", V::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        // An empty section (`workflows:` with nothing under it) is an empty map.
        let value = generator.subschema_for::<V>();
        json_schema!({
            "type": ["object", "null"],
            "additionalProperties": value,
        })
    }
}

impl JsonSchema for DurationValue {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration such as 500ms, 30s, 5m or 1h, at most a year.",
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"const": 0},
            ]
        })
    }
}

impl JsonSchema for Argv {
    fn schema_name() -> Cow<'static, str> {
        "Command".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "array",
            "minItems": 1,
            "items": scalar("One argument; `{{...}}` placeholders expand inside it."),
            "description": "The program and its arguments, e.g. [systemctl, restart, \"{{params.unit}}\"]; never run through a shell. The program must not come from {{anomaly}} or {{details...}}.",
        })
    }
}

impl JsonSchema for Headers {
    fn schema_name() -> Cow<'static, str> {
        "Headers".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["object", "null"],
            "propertyNames": {"pattern": HEADER_NAME_PATTERN},
            "additionalProperties": scalar("The header's value; `{{...}}` placeholders expand inside it."),
        })
    }
}

impl JsonSchema for WebhookUrl {
    fn schema_name() -> Cow<'static, str> {
        "WebhookUrl".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "uri",
            "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]",
            "description": "An http or https URL with a host, e.g. http://127.0.0.1:5678/webhook/restart.",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::compile;
    use super::super::parse_duration;
    use super::*;

    /// Whether the daemon loads `yaml`, and whether the schema accepts it, for every sample:
    /// the two must agree.
    #[test]
    fn the_schema_accepts_what_the_parser_accepts() {
        let schema: serde_json::Value = serde_json::from_str(&reflex_map_schema()).unwrap();
        let validator = jsonschema::draft202012::new(&schema).expect("a valid schema");
        let head = "workflows:\n  w: {}\n";
        let samples: &[(&str, bool)] = &[
            ("reflexes: {a: w}\nworkflows: {w: {}}", true),
            ("workflows:\nreflexes:\nanomalies:\n", true),
            ("defaults:\nreflexes: {a: w}\n", true),
            ("defaults: {cooldown: 0}\nreflexes: {a: w}\n", true),
            ("defaults: {cooldown: 1h 30m}\nreflexes: {a: w}\n", true),
            ("defaults: {cooldown: 5}\nreflexes: {a: w}\n", false),
            ("defaults: {cooldown: soon}\nreflexes: {a: w}\n", false),
            ("defaults: {cool: 5m}\nreflexes: {a: w}\n", false),
            ("reflexes: {a: w}\nextra: 1\n", false),
            ("reflexes: {a: {workflow: w, params: {unit: nginx, n: 5}, cooldown: 5m}}", true),
            ("reflexes: {a: {workflow: w, cooldown: 5m, later: 1}}", false),
            ("reflexes:\n  a:\n    workflow: w\n    params:\n    cooldown:\n", true),
            ("reflexes: {a: {params: {}}}", false),
            ("reflexes: {a: [w]}", true),
            ("reflexes: {a: []}", false),
            ("reflexes: {a: w}\nworkflows: {w: {max_concurrent: 2, breaker: {failures: 3, within: 10m}}}", true),
            ("reflexes: {a: w}\nworkflows: {w: {max_concurrent: 0}}", false),
            ("reflexes: {a: w}\nworkflows: {w: {breaker: {failures: 3}}}", false),
            ("reflexes: {a: w}\nworkflows: {w: {exec: {command: [sleep, 5, true]}}}", true),
            ("reflexes: {a: w}\nworkflows: {w: {exec: {command: [], timeout: 5s}}}", false),
            ("reflexes: {a: w}\nworkflows: {w: {exec: {command: sleep}}}", false),
            ("reflexes: {a: w}\nworkflows: {w: {exec: {timeout: 5s}}}", false),
            ("reflexes: {a: w}\nworkflows: {w: {webhook: {url: \"http://h/x\", retries: 1, timeout: 2s, headers: {X-N: 5, X-A: \"{{anomaly}}\"}}}}", true),
            ("reflexes: {a: w}\nworkflows:\n  w:\n    webhook:\n      url: http://h/x\n      headers:\n", true),
            ("reflexes: {a: w}\nworkflows: {w: {webhook: {url: \"http://h/x\", headers: {\"X Y\": 1}}}}", false),
            ("reflexes: {a: w}\nworkflows: {w: {webhook: {url: \"ftp://h/x\"}}}", false),
            ("reflexes: {a: w}\nworkflows: {w: {webhook: {url: \"http://h/x\", retries: -1}}}", false),
            ("reflexes: {a: w}\nworkflows: {w: {webhook: {url: \"http://h/x\"}, exec: {command: [x]}}}", false),
            ("anomalies:\n  - {name: a.b, workflow: w, params: {x: 1}}\n  - {name: c, workflow: w}\n", true),
            ("anomalies:\n  - name: a.b\n    workflow: w\n    params:\n", true),
            ("anomalies:\n  - {name: a.b}\n", false),
            ("anomalies:\n  - {name: a.b, workflow: w, cooldown: 5m}\n", false),
            // Cases: one case as a name or a mapping, or a non-empty list of them.
            ("reflexes: {a: [w, {workflow: w, cooldown: 5m}]}", true),
            ("reflexes:\n  a:\n    - when: {details.percent: {gte: 95}, details.mount: {in: [/, /var]}}\n      workflow: w\n      cooldown: 10m\n      cooldown_key: \"{{details.mount}}\"\n    - workflow: w\n", true),
            ("reflexes: {a: {workflow: w, when: {anomaly: a}, verify: 10m, escalate: w}}", true),
            ("reflexes: {a: [w, [w]]}", false),
            ("reflexes: {a: [{when: {anomaly: a}}]}", false),
            ("reflexes: {a: [{workflow: w, later: 1}]}", false),
            ("reflexes: {a: [5]}", false),
            // `when`: a field to a value, or to operators.
            ("reflexes: {a: {workflow: w, when: {details.n: 5, details.s: x, details.b: true, details.z: null}}}", true),
            ("reflexes:\n  a:\n    workflow: w\n    when:\n      details.empty:\n", true),
            ("reflexes:\n  a:\n    workflow: w\n    when:\n", true),
            ("reflexes: {a: {workflow: w, when: {details.n: {gt: -1, gte: 0, lt: 9.5, lte: 9, eq: 1, ne: 2}}}}", true),
            ("reflexes: {a: {workflow: w, when: {anomaly: {matches: 'a\\.[0-9]+', in: [a.1, 7, true, null]}}}}", true),
            ("reflexes: {a: {workflow: w, when: {details.a.b.c: {exists: true}, details.d: {exists: false}}}}", true),
            ("reflexes: {a: {workflow: w, when: {}}}", false),
            ("reflexes: {a: {workflow: w, when: anomaly}}", false),
            ("reflexes: {a: {workflow: w, when: {name: a}}}", false),
            ("reflexes: {a: {workflow: w, when: {details: 1}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.: 1}}}", false),
            ("reflexes: {a: {workflow: w, when: {details..x: 1}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x.: 1}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: [1]}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: {}}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: {gtee: 5}}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: {gt: five}}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: {gt: \"5\"}}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: {eq: [1]}}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: {in: []}}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: {in: yes}}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: {in: [[1]]}}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: {matches: 5}}}}", true),
            ("reflexes: {a: {workflow: w, when: {details.x: {matches: [a]}}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: {exists: maybe}}}}", false),
            ("reflexes: {a: {workflow: w, when: {details.x: {exists: false, eq: 1}}}}", false),
            // `cooldown_key`, `verify` and `escalate`.
            ("reflexes: {a: {workflow: w, cooldown_key: \"{{anomaly}}-{{details.a.b}}-{{params.x}}\"}}", true),
            ("reflexes: {a: {workflow: w, cooldown_key: \"{{action_id}}\"}}", false),
            ("reflexes: {a: {workflow: w, cooldown_key: \"x-{{ action_id }}\"}}", false),
            ("reflexes: {a: {workflow: w, cooldown_key: [x]}}", false),
            ("reflexes: {a: {workflow: w, verify: 1h 30m}}", true),
            ("reflexes: {a: {workflow: w, verify: 0s}}", false),
            ("reflexes: {a: {workflow: w, verify: 0.0m}}", false),
            ("reflexes: {a: {workflow: w, verify: 0}}", false),
            ("reflexes: {a: {workflow: w, verify: 5}}", false),
            ("reflexes: {a: {workflow: w, verify: soon}}", false),
            ("reflexes: {a: {workflow: w, escalate: [w]}}", false),
            // Timeouts from 10ms to 1h (zero is refused by both), retries at most 10.
            ("reflexes: {a: w}\nworkflows: {w: {exec: {command: [x], timeout: 1h}}}", true),
            ("reflexes: {a: w}\nworkflows: {w: {exec: {command: [x], timeout: 0}}}", false),
            ("reflexes: {a: w}\nworkflows: {w: {exec: {command: [x], timeout: 0s}}}", false),
            ("reflexes: {a: w}\nworkflows: {w: {webhook: {url: \"http://h/x\", retries: 10}}}", true),
            ("reflexes: {a: w}\nworkflows: {w: {webhook: {url: \"http://h/x\", retries: 11}}}", false),
            // `limits.actions`.
            ("limits: {actions: {max: 20, within: 1m}}\nreflexes: {a: w}\n", true),
            ("limits: {actions: {max: 100000, within: 1h}}\nreflexes: {a: w}\n", true),
            ("limits:\nreflexes: {a: w}\n", true),
            ("limits: {actions: }\nreflexes: {a: w}\n", true),
            ("limits: {actions: {max: 0, within: 1m}}\nreflexes: {a: w}\n", false),
            ("limits: {actions: {max: 100001, within: 1m}}\nreflexes: {a: w}\n", false),
            ("limits: {actions: {max: 5, within: 0s}}\nreflexes: {a: w}\n", false),
            ("limits: {actions: {max: 5, within: 30}}\nreflexes: {a: w}\n", false),
            ("limits: {actions: {max: 5}}\nreflexes: {a: w}\n", false),
            ("limits: {actions: {max: 5, within: 1m, per: x}}\nreflexes: {a: w}\n", false),
            ("limits: {actions: 5}\nreflexes: {a: w}\n", false),
            ("limits: {budget: {max: 5, within: 1m}}\nreflexes: {a: w}\n", false),
        ];
        for (yaml, loads) in samples {
            let yaml = if yaml.contains("workflows:") || yaml.starts_with("anomalies") {
                yaml.to_string()
            } else {
                format!("{head}{yaml}")
            };
            let parsed = compile(std::path::Path::new("m.yml"), &yaml);
            assert_eq!(parsed.is_ok(), *loads, "the daemon on {yaml:?}: {parsed:?}");
            let value: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert_eq!(
                errors.is_empty(),
                *loads,
                "the schema on {yaml:?}: {errors:?}"
            );
        }
    }

    #[test]
    fn the_duration_pattern_accepts_what_parse_duration_accepts() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        let zero = regex::Regex::new(ZERO_DURATION_PATTERN).unwrap();
        for text in [
            "0",
            "0s",
            "500ms",
            "30s",
            "5m",
            "1h",
            "1h30m",
            "1h 30m",
            "5 minutes",
            "1.5s",
            "2days",
            "1week",
            "10µs",
            " 5m ",
            "3M",
            "1y",
            "00ms",
            "0.0m",
            "0h 0m",
            "0.5s",
            "0h 1m",
            "10s",
        ] {
            let parsed = parse_duration(text);
            assert!(parsed.is_ok(), "{text}");
            assert!(pattern.is_match(text), "{text}");
            // `verify` and `limits.actions.within` refuse a zero window.
            assert_eq!(
                zero.is_match(text),
                parsed.is_ok_and(|d| d.is_zero()),
                "zero: {text}"
            );
        }
        for text in [
            "",
            "5",
            "5x",
            "-1s",
            "s",
            "1.s",
            "five minutes",
            "1h,30m",
            "0.5",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
            assert!(!pattern.is_match(text), "{text}");
        }
    }

    #[test]
    fn the_header_name_pattern_agrees_with_header_name() {
        let pattern = regex::Regex::new(HEADER_NAME_PATTERN).unwrap();
        for name in [
            "X-AutoHealer-Anomaly",
            "authorization",
            "x_y",
            "A1!#$%&'*+.^`|~",
        ] {
            assert!(hyper::header::HeaderName::from_bytes(name.as_bytes()).is_ok());
            assert!(pattern.is_match(name), "{name}");
        }
        for name in ["", "X Y", "X:Y", "é", "a\"b", "(x)"] {
            assert!(hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err());
            assert!(!pattern.is_match(name), "{name}");
        }
    }
}
