//! Anomaly-name matching: exact names in a hash map; patterns indexed by their literal head, with
//! one compiled multi-pattern regex for the patterns the index does not take.
//!
//! Built once per map load, never per request (SPEC §3 "Matching"): an exact name wins over
//! patterns; otherwise the first pattern in file order that matches. In patterns `*` matches any
//! run of characters except `.`, `?` one character except `.`, and `**` any run including dots.
//!
//! When a reflex's cases all have conditions and none holds, the anomaly falls through to the
//! next matching pattern (SPEC §9 "Cases"): `find_pattern_after` walks the matches in file order.
//! The first match stays the one search it always was; the later ones are found only for an
//! anomaly that falls through.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use regex_automata::meta::Regex;

use crate::anomaly::{validate_name, MAX_NAME_CHARS};

/// True when a reflex key is a pattern rather than an exact name.
pub fn is_pattern(key: &str) -> bool {
    key.contains(['*', '?'])
}

/// A reflex key that holds `*` or `?`, checked and split into tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
}

/// One piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Token {
    Literal(Box<str>),
    /// `*`: any run of characters except `.`.
    WithinSegment,
    /// `**`: any run of characters.
    AcrossDots,
    /// `?`: one character except `.`.
    OneChar,
}

impl Pattern {
    /// Parses a glob-style pattern; `***` (or longer runs of stars) is rejected as ambiguous.
    pub fn parse(source: &str) -> Result<Pattern, String> {
        validate_name(source).map_err(|why| format!("invalid pattern `{source}`: {why}"))?;
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            let wildcard = match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    if chars.peek() == Some(&'*') {
                        return Err(format!(
                            "invalid pattern `{source}`: `***` is ambiguous; use `*` within a segment or `**` across dots"
                        ));
                    }
                    Token::AcrossDots
                }
                '*' => Token::WithinSegment,
                '?' => Token::OneChar,
                other => {
                    literal.push(other);
                    continue;
                }
            };
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal).into()));
            }
            tokens.push(wildcard);
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal.into()));
        }
        Ok(Pattern {
            source: source.to_string(),
            tokens,
        })
    }

    /// The pattern as written in the map.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern matches all of `name`: for one pattern on its own, such as a
    /// silence's (SPEC §9), where building a `Matcher` would cost more than it saves.
    pub fn matches(&self, name: &str) -> bool {
        tokens_match(&self.tokens, name)
    }

    /// The pattern as a regex anchored at both ends: for the patterns the head index does not
    /// take.
    fn regex(&self) -> String {
        let mut regex = String::with_capacity(self.source.len() * 2 + 2);
        regex.push('^');
        for token in &self.tokens {
            match token {
                Token::Literal(literal) => regex.push_str(&regex::escape(literal)),
                Token::WithinSegment => regex.push_str("[^.]*"),
                Token::AcrossDots => regex.push_str(".*"),
                Token::OneChar => regex.push_str("[^.]"),
            }
        }
        regex.push('$');
        regex
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A table keyed by names from the map. Hashed with foldhash rather than std's SipHash: its
/// keys are the operator's, inserted once per load, and a caller's name is only ever looked up,
/// which cannot lengthen the table's probe sequences; the hasher is still seeded per process.
/// SipHash was ~100 instructions of each `POST /anomaly` and 5% of loading a 100,000-name map
/// (callgrind).
type NameTable<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// Finds the reflex for an anomaly name. Indices refer to the map's reflexes in file order.
#[derive(Debug)]
pub struct Matcher {
    exact: NameTable<usize>,
    /// Patterns by head: the literal text before the first wildcard, up to and including its
    /// last dot (`hit.p7.` for `hit.p7.web*.down`). A name can only match patterns whose head is
    /// one of its own dot-ended prefixes, so a lookup reads a few small buckets and matches only
    /// their patterns. One regex over all patterns walked a lazy DFA spread over megabytes, cold
    /// on every request: a pattern hit in the 100k map cost ~1.3 µs more than in a small map
    /// (issue 5). Each bucket lists its patterns in file order.
    by_head: NameTable<Vec<HeadedPattern>>,
    /// Lengths of the heads in `by_head`: only prefixes of these lengths are looked up.
    head_lengths: Vec<usize>,
    /// The patterns the index does not take (those without a dotted head, and buckets of more
    /// than `BUCKET_LIMIT`), in one regex. Pattern `i` is the `i`-th of them in file order, and
    /// its reflex is `regex_reflex[i]`. Each pattern is anchored at both ends, so a match spans
    /// the whole name, and leftmost-first semantics answer with the lowest-numbered pattern
    /// that matches: the first in file order. That is one search which stops at the answer; a
    /// `RegexSet` looked for every matching pattern, about 9,000 instructions a lookup with
    /// 1,000 patterns (issue 5).
    regex: Regex,
    regex_reflex: Vec<usize>,
    /// The regex's patterns, for `every`.
    regex_sources: Vec<String>,
    /// Every pattern of the regex at once, reporting all that match: for the matches after the
    /// first, which the leftmost-first regex cannot give. Built once, at load when the map can
    /// fall through (`prepare_every_match`), else by the first lookup that needs it.
    every: OnceLock<Option<regex::RegexSet>>,
}

/// A pattern in `Matcher::by_head`: the tokens after its head, and its reflex.
#[derive(Debug)]
struct HeadedPattern {
    rest: Vec<Token>,
    reflex: usize,
}

/// Patterns one head may index; a larger group goes to the regex, whose cost per lookup does
/// not grow with the number of patterns.
const BUCKET_LIMIT: usize = 8;

impl Matcher {
    /// Compiles exact names and patterns, each paired with its reflex index.
    pub fn new(
        exact: impl IntoIterator<Item = (String, usize)>,
        patterns: impl IntoIterator<Item = (Pattern, usize)>,
    ) -> Result<Matcher, String> {
        Matcher::with_bucket_limit(exact, patterns, BUCKET_LIMIT)
    }

    fn with_bucket_limit(
        exact: impl IntoIterator<Item = (String, usize)>,
        patterns: impl IntoIterator<Item = (Pattern, usize)>,
        bucket_limit: usize,
    ) -> Result<Matcher, String> {
        let exact = exact
            .into_iter()
            .map(|(name, index)| (name.into_boxed_str(), index))
            .collect();
        let mut by_head: NameTable<Vec<(Pattern, usize)>> = NameTable::default();
        let mut unindexed = Vec::new();
        for (pattern, reflex) in patterns {
            match pattern.head() {
                Some(head) => by_head
                    .entry(head.into())
                    .or_default()
                    .push((pattern, reflex)),
                None => unindexed.push((pattern, reflex)),
            }
        }
        by_head.retain(|_, bucket| {
            // In file order, whatever order the caller gave: a bucket's first match must be
            // its earliest.
            bucket.sort_by_key(|(_, reflex)| *reflex);
            let keep = bucket.len() <= bucket_limit;
            if !keep {
                unindexed.append(bucket);
            }
            keep
        });
        // The regex numbers its patterns in file order, which is reflex order.
        unindexed.sort_by_key(|(_, reflex)| *reflex);
        let (regexes, regex_reflex): (Vec<String>, Vec<usize>) = unindexed
            .into_iter()
            .map(|(pattern, reflex)| (pattern.regex(), reflex))
            .unzip();
        let regex = Regex::new_many(&regexes)
            .map_err(|err| format!("the reflex patterns do not compile: {err}"))?;
        let regex_sources = regexes;
        let by_head: NameTable<Vec<HeadedPattern>> = by_head
            .into_iter()
            .map(|(head, bucket)| {
                let bucket = bucket
                    .into_iter()
                    .map(|(pattern, reflex)| HeadedPattern {
                        rest: pattern.tokens_after(head.len()),
                        reflex,
                    })
                    .collect();
                (head, bucket)
            })
            .collect();
        let mut head_lengths: Vec<usize> = by_head.keys().map(|head| head.len()).collect();
        head_lengths.sort_unstable();
        head_lengths.dedup();
        Ok(Matcher {
            exact,
            by_head,
            head_lengths,
            regex,
            regex_reflex,
            regex_sources,
            every: OnceLock::new(),
        })
    }

    /// The reflex index for `name`: its exact entry, else the first matching pattern in file order.
    pub fn find(&self, name: &str) -> Option<usize> {
        if let Some(&index) = self.exact.get(name) {
            return Some(index);
        }
        self.find_pattern(name)
    }

    /// The reflex whose exact name is `name`, if any.
    pub fn find_exact(&self, name: &str) -> Option<usize> {
        self.exact.get(name).copied()
    }

    /// The first pattern in file order that matches `name` and comes after reflex `after`
    /// (every pattern when `after` is `None`).
    pub fn find_pattern_after(&self, name: &str, after: Option<usize>) -> Option<usize> {
        let Some(after) = after else {
            return self.find_pattern(name);
        };
        let mut first = self.first_in_buckets(name, Some(after));
        // The regex's patterns are in file order: the first match past `after` is the answer
        // from the regex, unless the index found an earlier one.
        if self.regex_reflex.last().is_some_and(|&last| last > after) {
            if let Some(every) = self.every() {
                let hit = every
                    .matches(name)
                    .iter()
                    .map(|id| self.regex_reflex[id])
                    .find(|&reflex| reflex > after);
                if let Some(reflex) = hit {
                    first = Some(first.map_or(reflex, |f| f.min(reflex)));
                }
            }
        }
        first
    }

    /// Builds the set `find_pattern_after` needs now rather than on first use.
    pub fn prepare_every_match(&self) {
        let _ = self.every();
    }

    fn every(&self) -> Option<&regex::RegexSet> {
        self.every
            .get_or_init(|| {
                // The same patterns compiled once already, into the leftmost regex; no size
                // limit of the regex crate is near what `Regex::new_many` accepted.
                regex::RegexSet::new(&self.regex_sources).ok()
            })
            .as_ref()
    }

    /// The first indexed pattern in file order that matches `name` (and comes after reflex
    /// `after`, when given).
    #[inline]
    fn first_in_buckets(&self, name: &str, after: Option<usize>) -> Option<usize> {
        let mut first: Option<usize> = None;
        for &len in &self.head_lengths {
            // A head ends with a dot, so it can only be a prefix ending with one.
            if name.as_bytes().get(len.wrapping_sub(1)) != Some(&b'.') {
                continue;
            }
            let Some(bucket) = self.by_head.get(&name[..len]) else {
                continue;
            };
            // In file order: the bucket's first match is its earliest.
            let hit = bucket.iter().find(|p| {
                after.is_none_or(|after| p.reflex > after) && tokens_match(&p.rest, &name[len..])
            });
            if let Some(hit) = hit {
                first = Some(first.map_or(hit.reflex, |f| f.min(hit.reflex)));
            }
        }
        first
    }

    /// The first pattern in file order that matches `name`.
    fn find_pattern(&self, name: &str) -> Option<usize> {
        let mut first = self.first_in_buckets(name, None);
        // The regex can only improve on a match its earliest pattern already follows.
        let regex_can_win = match (first, self.regex_reflex.first()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(found), Some(&earliest)) => earliest < found,
        };
        if regex_can_win {
            if let Some(hit) = self.regex.find(name) {
                let reflex = self.regex_reflex[hit.pattern().as_usize()];
                first = Some(first.map_or(reflex, |f| f.min(reflex)));
            }
        }
        first
    }
}

impl Pattern {
    /// The literal text before the first wildcard, up to and including its last dot; `None`
    /// when that is empty.
    fn head(&self) -> Option<&str> {
        let Some(Token::Literal(literal)) = self.tokens.first() else {
            return None;
        };
        let literal = literal.as_ref();
        // A pattern without wildcards is an exact name, never a `Pattern`; cut at the last dot
        // only when a wildcard follows, so the rest of the literal stays a token.
        let end = literal.rfind('.')? + 1;
        Some(&literal[..end])
    }

    /// The tokens after the first `head_len` bytes (which lie inside the first literal).
    fn tokens_after(&self, head_len: usize) -> Vec<Token> {
        let mut rest = Vec::with_capacity(self.tokens.len());
        for (i, token) in self.tokens.iter().enumerate() {
            match token {
                Token::Literal(literal) if i == 0 => {
                    if literal.len() > head_len {
                        rest.push(Token::Literal(literal[head_len..].into()));
                    }
                }
                other => rest.push(other.clone()),
            }
        }
        rest
    }
}

/// Byte positions a partial match can have reached in a name of at most `MAX_NAME_BYTES`.
struct Positions([u64; POSITION_WORDS]);

/// The longest name in bytes: `MAX_NAME_CHARS` of up to four bytes each.
const MAX_NAME_BYTES: usize = MAX_NAME_CHARS * 4;
const POSITION_WORDS: usize = MAX_NAME_BYTES / 64 + 1;

impl Positions {
    fn none() -> Positions {
        Positions([0; POSITION_WORDS])
    }

    fn set(&mut self, at: usize) {
        self.0[at / 64] |= 1 << (at % 64);
    }

    fn has(&self, at: usize) -> bool {
        self.0[at / 64] & (1 << (at % 64)) != 0
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|word| *word == 0)
    }

    /// The positions, in increasing order.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    w * 64 + bit
                })
            })
        })
    }
}

/// Whether `tokens` match all of `text`: every position a partial match can reach is carried
/// from token to token, so the cost is at most the tokens times the text's length, whatever
/// the wildcards (no backtracking).
fn tokens_match(tokens: &[Token], text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() > MAX_NAME_BYTES {
        return false; // longer than any valid name
    }
    let mut reached = Positions::none();
    reached.set(0);
    for token in tokens {
        let mut next = Positions::none();
        match token {
            Token::Literal(literal) => {
                for at in reached.iter() {
                    if bytes[at..].starts_with(literal.as_bytes()) {
                        next.set(at + literal.len());
                    }
                }
            }
            Token::OneChar => {
                for at in reached.iter() {
                    // `at` may fall inside a character after a `*`: no character starts there.
                    if let Some(c) = text.get(at..).and_then(|rest| rest.chars().next()) {
                        if c != '.' {
                            next.set(at + c.len_utf8());
                        }
                    }
                }
            }
            Token::WithinSegment => {
                let mut filled_to = 0;
                for at in reached.iter() {
                    let mut end = at.max(filled_to);
                    next.set(end);
                    while end < bytes.len() && bytes[end] != b'.' {
                        end += 1;
                        next.set(end);
                    }
                    filled_to = end;
                }
            }
            Token::AcrossDots => {
                if let Some(first) = reached.iter().next() {
                    for at in first..=bytes.len() {
                        next.set(at);
                    }
                }
            }
        }
        if next.is_empty() {
            return false;
        }
        reached = next;
    }
    reached.has(bytes.len())
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

    /// A random string of `pieces`, with a length in `len`.
    fn random_text(
        rng: &mut fastrand::Rng,
        pieces: &[&str],
        len: std::ops::Range<usize>,
    ) -> String {
        (0..rng.usize(len))
            .map(|_| pieces[rng.usize(..pieces.len())])
            .collect()
    }

    /// `count` random valid patterns of fewer than `max_pieces` of `pieces`.
    fn random_patterns(
        rng: &mut fastrand::Rng,
        pieces: &[&str],
        count: usize,
        max_pieces: usize,
    ) -> Vec<Pattern> {
        let mut patterns = Vec::new();
        while patterns.len() < count {
            let text = random_text(rng, pieces, 1..max_pieces);
            if is_pattern(&text) {
                if let Ok(pattern) = Pattern::parse(&text) {
                    patterns.push(pattern);
                }
            }
        }
        patterns
    }

    #[test]
    fn the_head_index_answers_as_the_regex_does() {
        // Random maps and names over a small alphabet, so that patterns share heads, overlap
        // and nest: the index (and its regex for the rest) must agree with the regex alone.
        let mut rng = fastrand::Rng::with_seed(5);
        let pieces = ["a", "b", ".", "é", "a.", "b.", "*", "**", "?"];
        let letters = ["a", "b", ".", "é"];
        for _ in 0..300 {
            let patterns = random_patterns(&mut rng, &pieces, 12, 7);
            let numbered = || patterns.iter().cloned().enumerate().map(|(i, p)| (p, i));
            let indexed = Matcher::with_bucket_limit([], numbered(), 2).unwrap();
            let regex_only = Matcher::with_bucket_limit([], numbered(), 0).unwrap();
            assert!(regex_only.by_head.is_empty());
            for _ in 0..200 {
                let name = random_text(&mut rng, &letters, 1..9);
                assert_eq!(
                    indexed.find(&name),
                    regex_only.find(&name),
                    "{name:?} against {:?}",
                    patterns.iter().map(Pattern::as_str).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn patterns_with_a_dotted_head_are_indexed() {
        let m = matcher(&[], &["hit.p1.*.down", "hit.p1.**", "*.down", "disk*"]);
        let heads: Vec<&str> = m.by_head.keys().map(|h| &**h).collect();
        assert_eq!(heads, ["hit.p1."]);
        assert_eq!(m.regex_reflex, [2, 3]);
        assert_eq!(m.find("hit.p1.web.down"), Some(0));
        assert_eq!(m.find("hit.p1.a.b.c"), Some(1));
        assert_eq!(m.find("x.down"), Some(2));
        assert_eq!(m.find("diskette"), Some(3));
        assert_eq!(m.find("hit.p2.web.down"), None);
        assert_eq!(m.find("hit.p1"), None);
        // Earlier regex patterns still win over later indexed ones.
        let m = matcher(&[], &["**", "hit.p1.*"]);
        assert_eq!(m.find("hit.p1.x"), Some(0));
    }

    /// Every pattern that matches `name`, in file order, as `find_pattern_after` walks them.
    fn walk(m: &Matcher, name: &str) -> Vec<usize> {
        let mut found = Vec::new();
        let mut after = None;
        while let Some(next) = m.find_pattern_after(name, after) {
            found.push(next);
            after = Some(next);
        }
        found
    }

    #[test]
    fn later_matches_come_in_file_order() {
        let m = matcher(
            &["disk.sda.full"],
            &["disk.*.full", "x.**", "disk.**", "**"],
        );
        assert_eq!(m.find("disk.sda.full"), Some(0), "the exact name first");
        assert_eq!(m.find_exact("disk.sda.full"), Some(0));
        assert_eq!(m.find_exact("disk.sdb.full"), None);
        assert_eq!(walk(&m, "disk.sda.full"), [1, 3, 4]);
        assert_eq!(walk(&m, "x.y"), [2, 4]);
        assert_eq!(walk(&m, "y"), [4]);
    }

    #[test]
    fn later_matches_agree_with_matching_each_pattern_alone() {
        // Random maps over a small alphabet, half of them indexed by head: the walk must list
        // exactly the patterns that match, in file order.
        let mut rng = fastrand::Rng::with_seed(14);
        let pieces = ["a", "b", ".", "a.", "b.", "*", "**", "?"];
        let letters = ["a", "b", "."];
        for round in 0..200 {
            let patterns = random_patterns(&mut rng, &pieces, 10, 6);
            let numbered = patterns.iter().cloned().enumerate().map(|(i, p)| (p, i));
            let m = Matcher::with_bucket_limit([], numbered, round % 3).unwrap();
            for _ in 0..100 {
                let name = random_text(&mut rng, &letters, 1..8);
                let expected: Vec<usize> = patterns
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| tokens_match(&p.tokens, &name))
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(
                    walk(&m, &name),
                    expected,
                    "{name:?} against {:?}",
                    patterns.iter().map(Pattern::as_str).collect::<Vec<_>>()
                );
            }
        }
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
    fn no_patterns_means_only_exact_matches() {
        let m = matcher(&["a"], &[]);
        assert_eq!(m.find("a"), Some(0));
        assert_eq!(m.find("b"), None);
    }
}
