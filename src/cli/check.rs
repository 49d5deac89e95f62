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
    format!(
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
    )
}
