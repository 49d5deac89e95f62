//! `reflex_map.yml`: any text is a compiled map or errors with positions, never a panic, a hang
//! or an unbounded allocation (the alias expansion limit). A compiled map sends each exact name
//! to its own reflex; errors are listed at most 100 times, each at a real position.
#![no_main]

use std::path::Path;

use autohealer::map::{compile, MAX_LISTED_ERRORS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &[u8]| {
    let Ok(text) = std::str::from_utf8(text) else {
        return; // `MapFile` refuses what is not UTF-8 before compiling
    };
    match compile(Path::new("fuzz.yml"), text) {
        Ok(map) => {
            for reflex in map.reflexes.iter().filter(|r| !r.is_pattern) {
                let found = map
                    .candidates(&reflex.key)
                    .next()
                    .expect("an exact name matches");
                assert_eq!(found.key, reflex.key, "an exact name wins over patterns");
            }
        }
        Err(errors) => {
            let listed = errors.listed();
            assert!(!listed.is_empty() && listed.len() <= MAX_LISTED_ERRORS);
            // libyaml also breaks lines at a lone CR, NEL, LS and PS.
            let breaks = text
                .matches(['\n', '\u{85}', '\u{2028}', '\u{2029}'])
                .count()
                + text.matches('\r').count()
                - text.matches("\r\n").count();
            let lines = breaks + 1;
            for error in listed {
                assert!(error.line >= 1 && error.line <= lines, "{error}");
                assert!(error.column >= 1, "{error}");
            }
        }
    }
});
