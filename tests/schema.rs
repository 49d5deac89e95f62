//! `autohealer schema` and the shipped `reflex_map.schema.json` (SPEC §10): the two are the
//! same, and the maps people start from — the shipped one, the README's, the original
//! format's — validate against it and load in the daemon.

use serde_json::Value;

use crate::util::{run_cli, MapDir};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn shipped(name: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{name}")).unwrap_or_else(|err| panic!("{name}: {err}"))
}

/// A validator for the shipped schema, which must itself be a valid draft 2020-12 schema.
fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&shipped("reflex_map.schema.json")).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    jsonschema::draft202012::meta::validate(&schema).expect("a valid draft 2020-12 schema");
    jsonschema::draft202012::new(&schema).expect("a usable schema")
}

/// The schema's complaints about `yaml` (empty when it validates).
fn complaints(validator: &jsonschema::Validator, yaml: &str) -> Vec<String> {
    let value: Value = serde_yaml::from_str(yaml).unwrap_or_else(|err| panic!("{err}: {yaml}"));
    validator
        .iter_errors(&value)
        .map(|err| format!("{} at {}", err, err.instance_path()))
        .collect()
}

/// Asserts that `yaml` validates against the schema and that `autohealer check` loads it.
fn assert_valid_and_loads(validator: &jsonschema::Validator, what: &str, yaml: &str) {
    assert_eq!(complaints(validator, yaml), Vec::<String>::new(), "{what}");
    let map = MapDir::new(yaml);
    let (code, stdout, stderr) = run_cli(&["check", &map.path().display().to_string()]);
    assert_eq!(code, 0, "{what}: {stdout}{stderr}");
}

#[test]
fn the_shipped_schema_is_what_autohealer_schema_prints() {
    let (code, printed, stderr) = run_cli(&["schema"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        printed == shipped("reflex_map.schema.json"),
        "reflex_map.schema.json is stale: run `cargo run -- schema > reflex_map.schema.json`"
    );
}

#[test]
fn the_shipped_map_points_editors_at_the_schema() {
    let map = shipped("reflex_map.yml");
    assert_eq!(
        map.lines().next(),
        Some("# yaml-language-server: $schema=reflex_map.schema.json")
    );
}

#[test]
fn the_shipped_map_validates() {
    assert_valid_and_loads(&validator(), "reflex_map.yml", &shipped("reflex_map.yml"));
}

/// The ```yaml blocks of the README that are reflex maps (a top-level `reflexes:`,
/// `workflows:` or `anomalies:`).
fn readme_maps() -> Vec<String> {
    let readme = shipped("README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start().starts_with("```")) {
            (None, true) if line.trim() == "```yaml" => current = Some(String::new()),
            (Some(block), true) => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), false) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    assert!(current.is_none(), "README.md has an unclosed ```yaml block");
    blocks
        .into_iter()
        .filter(|block| {
            block.lines().any(|line| {
                ["reflexes:", "workflows:", "anomalies:"]
                    .iter()
                    .any(|key| line.starts_with(key))
            })
        })
        .collect()
}

#[test]
fn the_readme_examples_validate() {
    let validator = validator();
    let maps = readme_maps();
    assert!(!maps.is_empty(), "the README shows a map");
    // Among them the worked example of cases and rails.
    assert!(
        maps.iter().any(
            |map| ["when:", "cooldown_key:", "verify:", "escalate:", "limits:"]
                .iter()
                .all(|key| map.contains(key))
        ),
        "the README's worked example is a map the schema checks"
    );
    for map in maps {
        assert_valid_and_loads(&validator, "a README example", &map);
    }
}

#[test]
fn the_original_format_validates() {
    // The Python AutoHealer's format, unchanged (SPEC §3).
    let original = "anomalies:\n  - name: api_latency.coinbase.high\n    workflow: run_coinbase_health_check_and_clear_cache\n    params:\n      exchange: coinbase\n      threshold_ms: 5000\n  - name: disk.root.full\n    workflow: page_oncall\n";
    assert_valid_and_loads(&validator(), "the original format", original);
}

#[test]
fn mistakes_are_flagged_where_they_are() {
    let validator = validator();
    let flagged = |yaml: &str| complaints(&validator, yaml).join("\n");
    let typo = flagged("workflows:\n  w: {}\nreflexes:\n  a: {workflow: w, cooldwon: 5m}\n");
    assert!(
        typo.contains("cooldwon") && typo.contains("/reflexes/a"),
        "{typo}"
    );
    // Under an `anyOf` (a value or nothing) the validator names the enclosing key; editors
    // (yaml-language-server) point at the best-matching branch's key.
    let duration = flagged("workflows:\n  w: {exec: {command: [x], timeout: 30}}\nreflexes: {}\n");
    assert!(duration.contains("at /workflows/w/exec"), "{duration}");
    assert_eq!(
        flagged("workflows:\n  w: {exec: {command: [x], timeout: 30s}}\nreflexes: {}\n"),
        ""
    );
    let both = flagged(
        "workflows:\n  w: {exec: {command: [x]}, webhook: {url: \"http://h\"}}\nreflexes: {}\n",
    );
    assert!(both.contains("/workflows/w"), "{both}");
    // In a list of cases: an unknown operator, and a window that would judge at once.
    let cases = flagged(
        "workflows:\n  w: {}\nreflexes:\n  a:\n    - {workflow: w, when: {details.x: {gtee: 5}}}\n    - {workflow: w, verify: 0s}\n",
    );
    assert!(
        cases.contains("gtee") && cases.contains("/reflexes/a"),
        "{cases}"
    );
    assert!(cases.contains("\"0s\""), "{cases}");
    // A number in an argv list is text to the daemon: no complaint.
    assert_eq!(
        flagged("workflows:\n  w: {exec: {command: [sleep, 5]}}\nreflexes: {a: w}\n"),
        ""
    );
}
