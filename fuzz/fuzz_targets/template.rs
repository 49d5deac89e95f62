//! `{{...}}` templates: the first line is parsed as a template (as the map's loader does) and
//! expanded against the rest, a JSON object used as both details and params (as an action does).
//! Never a panic; text without `{{` is its own expansion.
#![no_main]

use autohealer::anomaly::{Details, JsonObject};
use autohealer::map::{Template, TemplateContext};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|input: &[u8]| {
    let Ok(input) = std::str::from_utf8(input) else {
        return;
    };
    let (source, json) = input.split_once('\n').unwrap_or((input, "{}"));
    let Ok(template) = Template::parse(source) else {
        assert!(
            source.contains("{{"),
            "plain text is a template: {source:?}"
        );
        return;
    };
    let _ = template.uses_caller_input();
    let details = serde_json::from_str::<&RawValue>(json)
        .ok()
        .and_then(|raw| Details::from_json(raw).ok())
        .unwrap_or_else(Details::empty);
    let params: JsonObject = serde_json::from_str(json).unwrap_or_default();
    let context = TemplateContext {
        anomaly: "fuzz.anomaly",
        workflow: "fuzz",
        action_id: uuid::Uuid::nil(),
        details: &details,
        params: &params,
    };
    let expanded = template.expand(&context);
    if !source.contains("{{") {
        assert_eq!(expanded.as_deref(), Ok(source));
    }
});
