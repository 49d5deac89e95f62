//! `{{...}}` templates in exec argv elements and webhook header values (SPEC §3 "Templates").
//!
//! A template is parsed when the map loads, so a typo such as `{{detail.unit}}` is a config error
//! with a position, not a failed action at 3 a.m. Expansion produces exactly one string per
//! template: a placeholder never splits an argv element, and nothing reaches a shell. An argv
//! element is expanded with `expand_argument`, which also keeps caller text from becoming an
//! option (SPEC §8).

use std::fmt;

use serde::{Serialize, Serializer};
use uuid::Uuid;

use crate::anomaly::Details;
use crate::anomaly::JsonObject;

/// A parsed template: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Anomaly,
    Workflow,
    ActionId,
    /// A path into the anomaly's `details`, split on dots.
    Details(Vec<String>),
    /// A path into the reflex's `params`, split on dots.
    Params(Vec<String>),
}

/// The values a template is expanded against, for one action.
pub struct TemplateContext<'a> {
    pub anomaly: &'a str,
    pub workflow: &'a str,
    pub action_id: Uuid,
    /// Parsed only if a placeholder reads from them (most templates do not).
    pub details: &'a Details,
    pub params: &'a JsonObject,
}

impl Template {
    /// Parses `source`; the error names the placeholder that is wrong.
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!("template `{source}` has `{{{{` without a closing `}}}}`")
            })?;
            parts.push(parse_placeholder(source, after[..close].trim())?);
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    /// Expands every placeholder; a missing key fails with a message naming it.
    pub fn expand(&self, context: &TemplateContext<'_>) -> Result<String, String> {
        self.expand_with(context, false)
    }

    /// Expands every placeholder, a missing key as an empty string: for a `cooldown_key`, where
    /// a missing field must mean more suppression, never a failed dispatch (SPEC §9).
    pub fn expand_or_empty(&self, context: &TemplateContext<'_>) -> String {
        // With `lenient`, a missing key is never an error.
        self.expand_with(context, true).unwrap_or_default()
    }

    /// True when the template names `{{action_id}}`, which differs for every action.
    pub fn uses_action_id(&self) -> bool {
        self.parts.iter().any(|part| matches!(part, Part::ActionId))
    }

    fn expand_with(&self, context: &TemplateContext<'_>, lenient: bool) -> Result<String, String> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            part.expand_into(&mut out, context, lenient)?;
        }
        Ok(out)
    }

    /// Expands an argument of an exec command, refusing one that begins with caller-supplied
    /// text (`{{anomaly}}`, `{{details.*}}`) starting with `-`: the program would read it as an
    /// option, as tar reads `--checkpoint-action=exec=sh` (SPEC §8). Text from the map in front
    /// of the placeholder (`--unit={{details.x}}`) makes it a value; `{{params.*}}` is trusted.
    pub fn expand_argument(&self, context: &TemplateContext<'_>) -> Result<String, String> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            let starts_here = out.is_empty();
            part.expand_into(&mut out, context, false)?;
            // Whatever comes first in the argument decides: an empty part before it does not.
            if starts_here && part.is_caller_input() && out.starts_with('-') {
                return Err(format!(
                    "the command's argument `{}` begins with `{{{{{}}}}}`, whose value starts \
                     with `-` and would be read as an option; nothing was run",
                    self.source,
                    part.placeholder_name(),
                ));
            }
        }
        Ok(out)
    }

    /// True when the expansion depends on what the caller sent (the anomaly name or details),
    /// which must never choose the program an exec action runs.
    pub fn uses_caller_input(&self) -> bool {
        self.parts.iter().any(Part::is_caller_input)
    }

    /// The template as written in the map.
    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl Part {
    /// Appends this part's expansion to `out`.
    /// Appends this part's value; with `lenient`, a missing key appends nothing.
    fn expand_into(
        &self,
        out: &mut String,
        context: &TemplateContext<'_>,
        lenient: bool,
    ) -> Result<(), String> {
        let looked_up = |found: Result<String, String>| match found {
            Err(_) if lenient => Ok(String::new()),
            other => other,
        };
        match self {
            Part::Literal(text) => out.push_str(text),
            Part::Anomaly => out.push_str(context.anomaly),
            Part::Workflow => out.push_str(context.workflow),
            Part::ActionId => out.push_str(
                context
                    .action_id
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer()),
            ),
            Part::Details(path) => out.push_str(&looked_up(lookup(
                context.details.object(),
                path,
                "details",
            ))?),
            Part::Params(path) => out.push_str(&looked_up(lookup(context.params, path, "params"))?),
        }
        Ok(())
    }

    /// True for the parts whose text the caller chose: the anomaly name and its details.
    fn is_caller_input(&self) -> bool {
        matches!(self, Part::Anomaly | Part::Details(_))
    }

    /// The placeholder as it is named in a template, for messages; empty for literal text.
    fn placeholder_name(&self) -> String {
        match self {
            Part::Literal(_) => String::new(),
            Part::Anomaly => "anomaly".into(),
            Part::Workflow => "workflow".into(),
            Part::ActionId => "action_id".into(),
            Part::Details(path) => format!("details.{}", path.join(".")),
            Part::Params(path) => format!("params.{}", path.join(".")),
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

fn parse_placeholder(source: &str, name: &str) -> Result<Part, String> {
    let path = |prefix: &str| -> Option<Result<Vec<String>, String>> {
        let rest = name.strip_prefix(prefix)?;
        let keys: Vec<String> = rest.split('.').map(str::to_string).collect();
        if keys.iter().any(String::is_empty) {
            return Some(Err(format!(
                "template `{source}`: `{{{{{name}}}}}` has an empty key"
            )));
        }
        Some(Ok(keys))
    };
    match name {
        "anomaly" => Ok(Part::Anomaly),
        "workflow" => Ok(Part::Workflow),
        "action_id" => Ok(Part::ActionId),
        _ => {
            if let Some(keys) = path("details.") {
                return keys.map(Part::Details);
            }
            if let Some(keys) = path("params.") {
                return keys.map(Part::Params);
            }
            Err(format!(
                "template `{source}`: unknown placeholder `{{{{{name}}}}}`; use anomaly, workflow, action_id, details.KEY or params.KEY"
            ))
        }
    }
}

/// Follows `path` into `object`; strings expand bare, other JSON values as JSON text.
fn lookup(object: &JsonObject, path: &[String], root: &str) -> Result<String, String> {
    let missing = || format!("template key `{root}.{}` is missing", path.join("."));
    let (first, rest) = path.split_first().ok_or_else(missing)?;
    let mut value = object.get(first).ok_or_else(missing)?;
    for key in rest {
        value = value.get(key).ok_or_else(missing)?;
    }
    Ok(match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: serde_json::Value) -> JsonObject {
        value.as_object().unwrap().clone()
    }

    fn expand(template: &str, details: serde_json::Value) -> Result<String, String> {
        let details = Details::from_object(object(details));
        let params = object(json!({"unit": "nginx", "deep": {"x": 1}}));
        Template::parse(template).unwrap().expand(&TemplateContext {
            anomaly: "nginx.web1.down",
            workflow: "restart",
            action_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            details: &details,
            params: &params,
        })
    }

    #[test]
    fn placeholders_expand_in_place() {
        assert_eq!(
            expand(
                "--unit={{params.unit}}/{{ anomaly }}/{{workflow}}/{{action_id}}",
                json!({})
            )
            .unwrap(),
            "--unit=nginx/nginx.web1.down/restart/01900000-0000-7000-8000-000000000001"
        );
        assert_eq!(expand("{{params.deep.x}}", json!({})).unwrap(), "1");
        assert_eq!(expand("{{details.n}}", json!({"n": 5000})).unwrap(), "5000");
        assert_eq!(
            expand("{{details.o}}", json!({"o": {"a": true}})).unwrap(),
            r#"{"a":true}"#
        );
        assert_eq!(
            expand("no placeholders", json!({})).unwrap(),
            "no placeholders"
        );
    }

    #[test]
    fn hostile_values_stay_one_string() {
        let hostile = "x; touch /tmp/pwned $(id) `id` 'q' \"d\"";
        assert_eq!(
            expand("{{details.v}}", json!({"v": hostile})).unwrap(),
            hostile
        );
    }

    #[test]
    fn missing_keys_fail_clearly() {
        assert_eq!(
            expand("{{details.region}}", json!({})).unwrap_err(),
            "template key `details.region` is missing"
        );
        assert_eq!(
            expand("{{params.deep.y}}", json!({})).unwrap_err(),
            "template key `params.deep.y` is missing"
        );
    }

    fn expand_argument(template: &str, details: serde_json::Value) -> Result<String, String> {
        expand_argument_of("nginx.web1.down", template, details)
    }

    fn expand_argument_of(
        anomaly: &str,
        template: &str,
        details: serde_json::Value,
    ) -> Result<String, String> {
        let details = Details::from_object(object(details));
        let params = object(json!({"flag": "-v", "empty": ""}));
        Template::parse(template)
            .unwrap()
            .expand_argument(&TemplateContext {
                anomaly,
                workflow: "restart",
                action_id: Uuid::nil(),
                details: &details,
                params: &params,
            })
    }

    #[test]
    fn caller_text_at_the_start_of_an_argument_never_becomes_an_option() {
        let hostile = json!({"file": "--checkpoint-action=exec=sh", "dash": "-"});
        assert_eq!(
            expand_argument("{{details.file}}", hostile.clone()).unwrap_err(),
            "the command's argument `{{details.file}}` begins with `{{details.file}}`, whose \
             value starts with `-` and would be read as an option; nothing was run"
        );
        assert!(expand_argument("{{details.dash}}.log", hostile.clone()).is_err());
        // An empty trusted value in front leaves the caller's text first.
        assert!(expand_argument("{{params.empty}}{{details.file}}", hostile.clone()).is_err());
        assert_eq!(
            expand_argument_of("-rf.down", "{{anomaly}}", json!({})).unwrap_err(),
            "the command's argument `{{anomaly}}` begins with `{{anomaly}}`, whose value starts \
             with `-` and would be read as an option; nothing was run"
        );
        // Map text in front makes the value a value; params come from the map.
        assert_eq!(
            expand_argument("--unit={{details.file}}", hostile.clone()).unwrap(),
            "--unit=--checkpoint-action=exec=sh"
        );
        assert_eq!(
            expand_argument("./{{details.file}}", hostile.clone()).unwrap(),
            "./--checkpoint-action=exec=sh"
        );
        assert_eq!(expand_argument("{{params.flag}}", json!({})).unwrap(), "-v");
        assert_eq!(
            expand_argument("{{params.flag}}{{details.file}}", hostile.clone()).unwrap(),
            "-v--checkpoint-action=exec=sh"
        );
        // A dash inside or after the value is harmless; plain `expand` (headers) is unchanged.
        assert_eq!(
            expand_argument("{{details.v}}", json!({"v": "web-1 -x"})).unwrap(),
            "web-1 -x"
        );
        assert_eq!(
            expand("{{details.file}}", hostile).unwrap(),
            "--checkpoint-action=exec=sh"
        );
    }

    #[test]
    fn a_key_expands_missing_fields_to_nothing() {
        let details = Details::from_object(object(json!({"mount": "/var"})));
        let params = JsonObject::new();
        let context = TemplateContext {
            anomaly: "disk.sda.full",
            workflow: "clean",
            action_id: Uuid::nil(),
            details: &details,
            params: &params,
        };
        let key = |text: &str| Template::parse(text).unwrap().expand_or_empty(&context);
        assert_eq!(key("{{details.mount}}"), "/var");
        assert_eq!(key("{{anomaly}}@{{details.host}}"), "disk.sda.full@");
        assert_eq!(key("{{params.unit}}"), "");
        assert!(Template::parse("x{{action_id}}").unwrap().uses_action_id());
        assert!(!Template::parse("{{anomaly}}").unwrap().uses_action_id());
    }

    #[test]
    fn bad_templates_are_rejected_at_parse() {
        assert_eq!(
            Template::parse("{{detail.unit}}").unwrap_err(),
            "template `{{detail.unit}}`: unknown placeholder `{{detail.unit}}`; use anomaly, workflow, action_id, details.KEY or params.KEY"
        );
        assert_eq!(
            Template::parse("a {{anomaly").unwrap_err(),
            "template `a {{anomaly` has `{{` without a closing `}}`"
        );
        assert_eq!(
            Template::parse("{{params.}}").unwrap_err(),
            "template `{{params.}}`: `{{params.}}` has an empty key"
        );
    }
}
