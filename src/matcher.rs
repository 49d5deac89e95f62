//! Anomaly-name matching: exact names in a hash map, patterns in one compiled multi-pattern regex.
//!
//! Built once per map load, never per request (SPEC §3 "Matching"): an exact name wins over
//! patterns; otherwise the first pattern in file order that matches. In patterns `*` matches any
//! run of characters except `.`, `?` one character except `.`, and `**` any run including dots.

use std::collections::HashMap;
use std::fmt;

use regex_automata::meta::Regex;

/// Longest anomaly name or reflex key accepted, in characters (SPEC §2).
pub const MAX_NAME_CHARS: usize = 256;

/// Checks an anomaly name or reflex key: 1 to 256 characters, none of them a control character.
pub fn validate_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err("must not be empty".to_string());
    }
    if chars > MAX_NAME_CHARS {
        return Err(format!(
            "is {chars} characters long; the limit is {MAX_NAME_CHARS}"
        ));
    }
    // Most names are ASCII, where the control characters are the bytes below 0x20 and 0x7f.
    let has_control = if name.is_ascii() {
        name.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        name.chars().any(char::is_control)
    };
    if has_control {
        return Err("must not contain control characters".to_string());
    }
    Ok(())
}

/// True when a reflex key is a pattern rather than an exact name.
pub fn is_pattern(key: &str) -> bool {
    key.contains(['*', '?'])
}

/// A reflex key that holds `*` or `?`, checked and translated to an anchored regex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    source: String,
    regex: String,
}

impl Pattern {
    /// Parses a glob-style pattern; `***` (or longer runs of stars) is rejected as ambiguous.
    pub fn parse(source: &str) -> Result<Pattern, String> {
        validate_name(source).map_err(|why| format!("invalid pattern `{source}`: {why}"))?;
        let mut regex = String::with_capacity(source.len() * 2 + 2);
        regex.push('^');
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    if chars.peek() == Some(&'*') {
                        return Err(format!(
                            "invalid pattern `{source}`: `***` is ambiguous; use `*` within a segment or `**` across dots"
                        ));
                    }
                    regex.push_str(".*");
                }
                '*' => regex.push_str("[^.]*"),
                '?' => regex.push_str("[^.]"),
                other => {
                    let mut buf = [0u8; 4];
                    regex.push_str(&regex::escape(other.encode_utf8(&mut buf)));
                }
            }
        }
        regex.push('$');
        Ok(Pattern {
            source: source.to_string(),
            regex,
        })
    }

    /// The pattern as written in the map.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Finds the reflex for an anomaly name. Indices refer to the map's reflexes in file order.
#[derive(Debug)]
pub struct Matcher {
    exact: HashMap<Box<str>, usize>,
    /// Every pattern in one regex, pattern `i` being the `i`-th in file order, whose reflex is
    /// `pattern_reflex[i]`. Each pattern is anchored at both ends, so a match spans the whole
    /// name, and leftmost-first semantics answer with the lowest-numbered pattern that matches:
    /// the first in file order. That is one search which stops at the answer; a `RegexSet`
    /// looked for every matching pattern, about 9,000 instructions a lookup with 1,000 patterns
    /// (issue 5).
    patterns: Regex,
    pattern_reflex: Vec<usize>,
}

impl Matcher {
    /// Compiles exact names and patterns, each paired with its reflex index.
    pub fn new(
        exact: impl IntoIterator<Item = (String, usize)>,
        patterns: impl IntoIterator<Item = (Pattern, usize)>,
    ) -> Result<Matcher, String> {
        let exact = exact
            .into_iter()
            .map(|(name, index)| (name.into_boxed_str(), index))
            .collect();
        let (regexes, pattern_reflex): (Vec<String>, Vec<usize>) = patterns
            .into_iter()
            .map(|(pattern, index)| (pattern.regex, index))
            .unzip();
        let patterns = Regex::new_many(&regexes)
            .map_err(|err| format!("the reflex patterns do not compile: {err}"))?;
        Ok(Matcher {
            exact,
            patterns,
            pattern_reflex,
        })
    }

    /// The reflex index for `name`: its exact entry, else the first matching pattern in file order.
    pub fn find(&self, name: &str) -> Option<usize> {
        if let Some(&index) = self.exact.get(name) {
            return Some(index);
        }
        if self.pattern_reflex.is_empty() {
            return None;
        }
        self.patterns
            .find(name)
            .map(|hit| self.pattern_reflex[hit.pattern().as_usize()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(exact: &[&str], patterns: &[&str]) -> Matcher {
        let exact_len = exact.len();
        Matcher::new(
            exact.iter().enumerate().map(|(i, n)| (n.to_string(), i)),
            patterns
                .iter()
                .enumerate()
                .map(|(i, p)| (Pattern::parse(p).unwrap(), exact_len + i)),
        )
        .unwrap()
    }

    #[test]
    fn single_star_stays_within_a_segment() {
        let m = matcher(&[], &["nginx.*.down"]);
        assert_eq!(m.find("nginx.web1.down"), Some(0));
        assert_eq!(m.find("nginx..down"), Some(0));
        assert_eq!(m.find("nginx.web1.eu.down"), None);
        assert_eq!(m.find("nginx.web1.down.now"), None);
    }

    #[test]
    fn double_star_crosses_dots() {
        let m = matcher(&[], &["disk.**"]);
        assert_eq!(m.find("disk.sda.full"), Some(0));
        assert_eq!(m.find("disk."), Some(0));
        assert_eq!(m.find("disks.sda"), None);
    }

    #[test]
    fn question_mark_is_one_character_but_not_a_dot() {
        let m = matcher(&[], &["cpu?.hot"]);
        assert_eq!(m.find("cpu1.hot"), Some(0));
        assert_eq!(m.find("cpu.hot"), None);
        assert_eq!(m.find("cpu12.hot"), None);
        assert_eq!(m.find("cpu..hot"), None);
    }

    #[test]
    fn exact_name_wins_over_an_earlier_pattern() {
        let m = Matcher::new(
            [("api.latency.high".to_string(), 1)],
            [(Pattern::parse("api.**").unwrap(), 0)],
        )
        .unwrap();
        assert_eq!(m.find("api.latency.high"), Some(1));
        assert_eq!(m.find("api.latency.low"), Some(0));
    }

    #[test]
    fn first_pattern_in_file_order_wins() {
        let m = matcher(&[], &["a.**", "a.*", "**"]);
        assert_eq!(m.find("a.b"), Some(0));
        assert_eq!(m.find("zzz"), Some(2));
    }

    #[test]
    fn the_first_matching_pattern_wins_whatever_the_others_match() {
        // Longer and shorter matches of later patterns never win over an earlier pattern.
        let m = matcher(&[], &["a*b", "a*", "a?.**", "**"]);
        assert_eq!(m.find("ab"), Some(0));
        assert_eq!(m.find("ac"), Some(1));
        assert_eq!(m.find("ab.c"), Some(2));
        assert_eq!(m.find("abc.d"), Some(3));
        let m = matcher(&[], &["**", "a*b"]);
        assert_eq!(m.find("ab"), Some(0));
    }

    #[test]
    fn regex_metacharacters_are_literal() {
        let m = matcher(&[], &["a+b.(x)|*"]);
        assert_eq!(m.find("a+b.(x)|anything"), Some(0));
        assert_eq!(m.find("aab.(x)|y"), None);
    }

    #[test]
    fn triple_star_is_rejected() {
        assert_eq!(
            Pattern::parse("a.***").unwrap_err(),
            "invalid pattern `a.***`: `***` is ambiguous; use `*` within a segment or `**` across dots"
        );
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(validate_name("").unwrap_err(), "must not be empty");
        assert_eq!(
            validate_name("a\u{7}b").unwrap_err(),
            "must not contain control characters"
        );
        assert!(validate_name(&"x".repeat(256)).is_ok());
        assert_eq!(
            validate_name(&"x".repeat(257)).unwrap_err(),
            "is 257 characters long; the limit is 256"
        );
    }

    #[test]
    fn no_patterns_means_only_exact_matches() {
        let m = matcher(&["a"], &[]);
        assert_eq!(m.find("a"), Some(0));
        assert_eq!(m.find("b"), None);
    }
}
