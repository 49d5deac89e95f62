//! An anomaly as a monitor reports it (SPEC §2): its name, its `details`, and where it came
//! from. The bottom layer: every other module may use it, and it uses none of them, so the
//! request parser can be fuzzed and benchmarked on its own.

mod details;

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

pub use details::Details;

/// JSON object carried by anomalies (`details`) and reflexes (`params`).
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Longest anomaly name or reflex key accepted, in characters (SPEC §2).
pub const MAX_NAME_CHARS: usize = 256;

/// Checks an anomaly name or reflex key: 1 to 256 characters, none of them a control character.
pub fn validate_name(name: &str) -> Result<(), String> {
    // Most names are ASCII, where a character is a byte: one pass over the bytes decides, and
    // only other names are walked character by character.
    let ascii = name.is_ascii();
    let chars = if ascii {
        name.len()
    } else {
        name.chars().count()
    };
    if chars == 0 {
        return Err("must not be empty".to_string());
    }
    if chars > MAX_NAME_CHARS {
        return Err(format!(
            "is {chars} characters long; the limit is {MAX_NAME_CHARS}"
        ));
    }
    // In ASCII, the control characters are the bytes below 0x20 and 0x7f.
    let has_control = if ascii {
        name.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        name.chars().any(char::is_control)
    };
    if has_control {
        return Err("must not contain control characters".to_string());
    }
    Ok(())
}

/// Where an anomaly came from, as the `source` key of the triggered record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /anomaly`.
    Http,
    /// `POST /alertmanager`: a firing alert from Prometheus Alertmanager.
    Alertmanager,
}

impl Source {
    /// The value written to records.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Alertmanager => "alertmanager",
        }
    }
}

/// An anomaly as a monitor reported it.
#[derive(Debug)]
pub struct Anomaly {
    /// Shared, not copied, by the action, its history entry and the answer.
    pub name: Arc<str>,
    pub details: Details,
}

impl Anomaly {
    /// Parses a `POST /anomaly` body; the error is the message for a 400 answer.
    pub fn from_json(body: &[u8]) -> Result<Anomaly, String> {
        // Other top-level fields are ignored (SPEC §2), which serde does without building them.
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            name: Option<NameField<'a>>,
            #[serde(borrow)]
            details: Option<&'a RawValue>,
        }
        let not_an_object = || {
            "the body must be a JSON object like {\"name\": \"...\", \"details\": {...}}"
                .to_string()
        };
        // Checked as UTF-8 once, in bulk, so serde_json need not check each string it reads.
        // (JSON is UTF-8, RFC 8259; a body that is not is refused, whatever field it is in.)
        let text = std::str::from_utf8(body)
            .map_err(|err| format!("the body is not valid JSON: it is not UTF-8 ({err})"))?;
        let parsed: Result<Body, _> = serde_json::from_str(text);
        // serde also accepts a struct written as an array; the contract says object.
        let is_object = text.trim_ascii_start().starts_with('{');
        let body = match parsed {
            Ok(body) if is_object => body,
            Ok(_) => return Err(not_an_object()),
            Err(err) if err.is_data() => return Err(not_an_object()),
            Err(err) => return Err(unreadable(text, is_object, &err)),
        };
        let name: Arc<str> = match body.name {
            // `name: null` reaches here as `None`, like a body without a name.
            None => return Err("`name` is required".into()),
            Some(NameField::Text(name)) => Arc::from(name),
            Some(NameField::NotText) => return Err("`name` must be a string".into()),
        };
        validate_name(&name).map_err(|why| format!("`name` {why}"))?;
        // `details: null` reaches here as `None`, like a body without details.
        let details = match body.details {
            None => Details::empty(),
            Some(text) => Details::from_json(text)?,
        };
        Ok(Anomaly { name, details })
    }
}

/// The message for a body serde_json could not read. A number no `f64` holds (`1e400`) is valid
/// JSON that serde_json will not read as a value: as a `name` it is simply not a string, as the
/// first pass over raw tokens, which does not read numbers, tells.
fn unreadable(text: &str, is_object: bool, err: &serde_json::Error) -> String {
    #[derive(Deserialize)]
    struct RawName<'a> {
        #[serde(borrow)]
        name: Option<&'a RawValue>,
    }
    match serde_json::from_str::<RawName>(text) {
        Ok(RawName { name: Some(token) }) if is_object && !token.get().starts_with('"') => {
            "`name` must be a string".into()
        }
        _ => format!("the body is not valid JSON: {err}"),
    }
}

/// The `name` of a `POST /anomaly` body as sent: a string, borrowed from the body when it has
/// no escapes, or any other JSON value, which gets its own 400 message rather than serde's.
enum NameField<'a> {
    Text(Cow<'a, str>),
    NotText,
}

impl<'de: 'a, 'a> Deserialize<'de> for NameField<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Field<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Field<'a> {
            type Value = NameField<'a>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("any JSON value")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(NameField::Text(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(NameField::Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(NameField::Text(Cow::Owned(text)))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(NameField::NotText)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(NameField::NotText)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(NameField::NotText)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(NameField::NotText)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
                while items.next_element::<IgnoredAny>()?.is_some() {}
                Ok(NameField::NotText)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Self::Value, A::Error> {
                while entries.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NameField::NotText)
            }
        }
        deserializer.deserialize_any(Field(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anomaly_bodies_parse() {
        let anomaly = Anomaly::from_json(
            br#"{"name":"api_latency.coinbase.high","details":{"latency_ms":5000},"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(&*anomaly.name, "api_latency.coinbase.high");
        // A name with escapes is unescaped; spacing around it does not matter.
        let escaped = Anomaly::from_json(br#"{ "name" :  "caf\u00e9.\"x\"" }"#).unwrap();
        assert_eq!(&*escaped.name, "café.\"x\"");
        assert_eq!(anomaly.details.object()["latency_ms"], 5000);
        assert!(Anomaly::from_json(br#"{"name":"a"}"#)
            .unwrap()
            .details
            .object()
            .is_empty());
        assert!(Anomaly::from_json(br#"{"name":"a","details":null}"#).is_ok());
    }

    #[test]
    fn bad_anomaly_bodies_say_what_is_wrong() {
        let err = |body: &[u8]| Anomaly::from_json(body).unwrap_err();
        assert_eq!(
            err(b"{\"name\": "),
            "the body is not valid JSON: EOF while parsing a value at line 1 column 9"
        );
        assert_eq!(
            err(b"[1,2]"),
            "the body must be a JSON object like {\"name\": \"...\", \"details\": {...}}"
        );
        assert_eq!(
            err(b"{\"name\": \"caf\xe9\"}"),
            "the body is not valid JSON: it is not UTF-8 \
             (invalid utf-8 sequence of 1 bytes from index 13)"
        );
        assert_eq!(err(b"{}"), "`name` is required");
        assert_eq!(err(br#"{"name": null}"#), "`name` is required");
        assert_eq!(err(br#"{"name": ["a"]}"#), "`name` must be a string");
        assert_eq!(
            err(br#"{"name": "a\ud800"}"#),
            "the body is not valid JSON: unexpected end of hex escape at line 1 column 18"
        );
        for not_text in [
            "5",
            "1.5",
            "-1",
            "1e400",
            "true",
            "{}",
            r#"{"a": [1]}"#,
            "[]",
        ] {
            assert_eq!(
                err(format!(r#"{{"name": {not_text}, "details": {{}}}}"#).as_bytes()),
                "`name` must be a string",
                "{not_text}"
            );
        }
        assert_eq!(err(br#"{"name": ""}"#), "`name` must not be empty");
        // C0 controls, DEL, and (in a name that is not ASCII) C1 controls.
        for name in [r#""a\nb""#, r#""a\u007fb""#, r#""é\u0085""#] {
            assert_eq!(
                err(format!(r#"{{"name": {name}}}"#).as_bytes()),
                "`name` must not contain control characters",
                "{name}"
            );
        }
        assert!(Anomaly::from_json("{\"name\": \"café.grün\"}".as_bytes()).is_ok());
        assert_eq!(
            err(br#"{"name": "a", "details": [1]}"#),
            "`details` must be a JSON object"
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
        // Beyond ASCII the limit counts characters, not bytes, and C1 controls are refused.
        assert!(validate_name(&"é".repeat(256)).is_ok());
        assert_eq!(
            validate_name(&"é".repeat(257)).unwrap_err(),
            "is 257 characters long; the limit is 256"
        );
        assert_eq!(
            validate_name("disk.\u{85}.full").unwrap_err(),
            "must not contain control characters"
        );
    }
}
