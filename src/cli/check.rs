//! `autohealer check`: validates a reflex map exactly as the daemon would load it, like
//! `nginx -t` or `promtool check config`.

use std::path::Path;

use super::CheckArgs;
use crate::map::{self, LoadError, LoadedMap};

/// Prints a summary (valid) or the errors as `FILE:LINE:COLUMN: message` (invalid).
/// Returns whether the map is valid.
pub fn run(args: &CheckArgs) -> bool {
    match map::load(&args.file, 1) {
        Ok(loaded) => {
            println!("{}", summary(&args.file, &loaded));
            for note in &loaded.map.notes {
                println!("{}: note: {note}", args.file.display());
            }
            true
        }
        Err(LoadError::Invalid(errors)) => {
            // One line per listed error, then `… and N more errors`.
            eprintln!("{errors}");
            false
        }
        Err(err) => {
            eprintln!("{err}");
            false
        }
    }
}

fn summary(path: &Path, loaded: &LoadedMap) -> String {
    let map = &loaded.map;
    let exact = map.exact_count();
    let count = |kind: &str| {
        map.workflows
            .values()
            .filter(|w| w.action.kind() == kind)
            .count()
    };
    let mut line = format!(
        "{}: valid, version {}: {} reflexes ({} exact, {} patterns), {} workflows ({} log, {} exec, {} webhook)",
        path.display(),
        loaded.version,
        map.reflexes.len(),
        exact,
        map.reflexes.len() - exact,
        map.workflows.len(),
        count("log"),
        count("exec"),
        count("webhook"),
    );
    line.push_str(&autonomy_summary(map));
    line
}

/// The keys of SPEC §9 a map uses, for the summary: empty for a map that uses none of them.
fn autonomy_summary(map: &map::ReflexMap) -> String {
    let cases: Vec<&map::Case> = map.reflexes.iter().flat_map(|r| r.cases()).collect();
    let with = |has: fn(&map::Case) -> bool| cases.iter().filter(|c| has(c)).count();
    let (when, keyed, verify, escalate) = (
        with(|c| c.when.is_some()),
        with(|c| c.cooldown_key.is_some()),
        with(|c| c.verify.is_some()),
        with(|c| c.escalate.is_some()),
    );
    let mut out = String::new();
    if cases.len() > map.reflexes.len() || when + keyed + verify + escalate > 0 {
        out.push_str(&format!(
            "; {} cases ({when} with when, {keyed} with cooldown_key, {verify} with verify, {escalate} with escalate)",
            cases.len()
        ));
    }
    if let Some(budget) = map.limits.actions {
        out.push_str(&format!(
            "; budget {} actions per {}",
            budget.max,
            humantime::format_duration(budget.within)
        ));
    }
    out
}
