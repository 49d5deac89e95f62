//! An anomaly's `details`: the JSON object a monitor sent, kept as its text.
//!
//! Most workflows only log the details, and the record wants them as JSON text again. Parsing
//! them into a map, and writing the map back out, was a fifth of the daemon's own work per
//! `POST /anomaly` (issue 5, callgrind). So the text is validated and kept, and written as it
//! is into records, webhook bodies and `AUTOHEALER_DETAILS`; it is parsed only when a template
//! needs a value from it, and then once.

use std::borrow::Cow;
use std::fmt;
use std::sync::{LazyLock, OnceLock};

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use super::JsonObject;

/// A JSON object, as text on one line, with its parsed form made on first use.
pub struct Details {
    text: Cow<'static, RawValue>,
    parsed: OnceLock<JsonObject>,
}

/// The text of empty details, shared: most anomalies have none, and serializing an empty map
/// afresh for each cost ~600 instructions per `POST /anomaly` (callgrind).
static EMPTY_TEXT: LazyLock<&'static RawValue> =
    LazyLock::new(|| serde_json::from_str("{}").unwrap_or(RawValue::NULL));

impl Details {
    /// `{}`: what an anomaly without details has.
    pub fn empty() -> Details {
        // Parsed, like any other details, only if a template asks: building an empty map here
        // cost about 130 instructions per `POST /anomaly` (callgrind).
        Details {
            text: Cow::Borrowed(*EMPTY_TEXT),
            parsed: OnceLock::new(),
        }
    }

    /// Details from the text of a JSON value the request's parser has already validated, or
    /// why they cannot be: they must be an object (SPEC §2).
    pub fn from_json(value: &RawValue) -> Result<Details, &'static str> {
        let text = value.get();
        if !text.starts_with('{') {
            return Err("`details` must be a JSON object");
        }
        // Whitespace between tokens may hold line breaks, which a one-line record cannot;
        // strings cannot (JSON escapes them). Such a body is rewritten without them.
        let multiline = memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_some();
        // A number beyond an f64 (`1e400`) and a lone surrogate escape (`"\ud800"`) are passed
        // over by the token check that validated this text, but the parse a template needs
        // fails on them: the object would silently lack what the text shows (found by the
        // anomaly_body fuzz target). The rare text that may hold either is parsed now to tell.
        if multiline || may_not_parse(text.as_bytes()) {
            let object: JsonObject = serde_json::from_str(text).map_err(|_| UNREADABLE)?;
            if multiline {
                return Ok(Details::from_object(object));
            }
            return Ok(Details {
                text: Cow::Owned(value.to_owned()),
                parsed: OnceLock::from(object),
            });
        }
        Ok(Details {
            text: Cow::Owned(value.to_owned()),
            parsed: OnceLock::new(),
        })
    }

    /// Details built by the daemon itself (from an Alertmanager alert, in tests).
    pub fn from_object(object: JsonObject) -> Details {
        // A map of JSON values always serializes: the default (`null`) is never used.
        let text = Cow::Owned(serde_json::value::to_raw_value(&object).unwrap_or_default());
        let parsed = OnceLock::from(object);
        Details { text, parsed }
    }

    /// The object, parsed from the text the first time it is asked for.
    pub fn object(&self) -> &JsonObject {
        // The text was checked to be an object when these details were made.
        self.parsed
            .get_or_init(|| serde_json::from_str(self.text.get()).unwrap_or_default())
    }

    /// The object as compact JSON text on one line.
    pub fn as_json(&self) -> &str {
        self.text.get()
    }
}

/// Why JSON that passed the token check is no details: what only a full parse refuses.
const UNREADABLE: &str = "`details` holds a number beyond the range of a double (like 1e400) or \
                          an escape that is no character (a lone surrogate, like \\ud800)";

/// True when the JSON `text` may hold what only a full parse can refuse: a number an f64 cannot
/// hold (one with an exponent, or a run of more digits than f64::MAX has), or a `\u` escape (which
/// may be a lone surrogate). `true` and `false` are no exponents: a JSON exponent follows a digit.
fn may_not_parse(text: &[u8]) -> bool {
    /// Digits of f64::MAX, below which a run of digits always fits.
    const F64_MAX_DIGITS: usize = 309;
    let (mut in_string, mut escaped, mut digits) = (false, false, 0usize);
    for &byte in text {
        if in_string {
            match byte {
                b'u' if escaped => return true,
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'0'..=b'9' => {
                digits += 1;
                if digits >= F64_MAX_DIGITS {
                    return true;
                }
                continue;
            }
            b'e' | b'E' if digits > 0 => return true,
            b'"' => in_string = true,
            _ => {}
        }
        digits = 0;
    }
    false
}

impl Serialize for Details {
    /// Written as the object itself by serde_json, which copies the text (other serializers
    /// would see serde_json's private raw-value struct; all of the daemon's are serde_json).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.text.serialize(serializer)
    }
}

impl fmt::Debug for Details {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_json())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn from_text(text: &str) -> Result<Details, &'static str> {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        Details::from_json(&raw)
    }

    #[test]
    fn the_text_is_kept_and_parsed_on_demand() {
        let details = from_text(r#"{"latency_ms": 5000, "region": "us-east-1"}"#).unwrap();
        assert_eq!(
            details.as_json(),
            r#"{"latency_ms": 5000, "region": "us-east-1"}"#
        );
        assert_eq!(details.object()["latency_ms"], 5000);
        assert_eq!(
            serde_json::to_value(&details).unwrap(),
            json!({"latency_ms": 5000, "region": "us-east-1"})
        );
    }

    #[test]
    fn line_breaks_between_tokens_are_taken_out() {
        let details = from_text("{\n  \"a\": \"x\\ny\",\r\n  \"b\": [1,\n 2]\n}").unwrap();
        assert_eq!(details.as_json(), r#"{"a":"x\ny","b":[1,2]}"#);
    }

    #[test]
    fn only_objects_are_details() {
        for text in ["[1]", "\"x\"", "5", "true"] {
            assert_eq!(
                from_text(text).unwrap_err(),
                "`details` must be a JSON object"
            );
        }
        assert_eq!(Details::empty().as_json(), "{}");
        assert!(Details::empty().object().is_empty());
    }

    #[test]
    fn numbers_beyond_a_double_are_refused() {
        // Found by the anomaly_body fuzz target: accepted, then parsed as `{}`.
        let huge = "1".repeat(400);
        for text in [
            r#"{"":-5E01000}"#,
            r#"{"a": {"b": [1, 1e400]}}"#,
            &format!(r#"{{"a": {huge}}}"#),
            "{\n\"a\": 1e400\n}",
        ] {
            assert_eq!(from_text(text).unwrap_err(), UNREADABLE, "{text}");
        }
        // Exponents within range, and what only looks like one, are details like any other.
        let details = from_text(r#"{"a": 1.5e3, "b": true, "c": "1e400", "d": false}"#).unwrap();
        assert_eq!(details.object()["a"], 1500.0);
        assert_eq!(details.object()["c"], "1e400");
        assert_eq!(
            details.as_json(),
            r#"{"a": 1.5e3, "b": true, "c": "1e400", "d": false}"#
        );
        assert!(!may_not_parse(br#"{"a": true, "b": "\"1e9", "c": 123}"#));
        assert!(may_not_parse(br#"{"a": "x\\", "b": 1E2}"#));
    }

    #[test]
    fn lone_surrogates_are_refused() {
        // Found by the anomaly_body fuzz target: accepted, then parsed as `{}`.
        for text in [r#"{"\uDDDD":"u-"}"#, r#"{"a": ["x\ud800y"]}"#] {
            assert_eq!(from_text(text).unwrap_err(), UNREADABLE, "{text}");
        }
        let details = from_text(r#"{"a": "\u00e9\ud83d\ude00", "b": "\\u"}"#).unwrap();
        assert_eq!(details.object()["a"], "é😀");
        assert_eq!(details.object()["b"], "\\u");
    }

    #[test]
    fn details_built_in_the_daemon_read_back_the_same() {
        let object = json!({"labels": {"instance": "web-1"}})
            .as_object()
            .unwrap()
            .clone();
        let details = Details::from_object(object.clone());
        assert_eq!(details.object(), &object);
        assert_eq!(details.as_json(), r#"{"labels":{"instance":"web-1"}}"#);
    }
}
