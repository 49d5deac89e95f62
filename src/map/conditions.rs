//! `when` conditions on a reflex case (SPEC §9 "Cases"): which anomalies a case takes, judged on
//! the anomaly's name and details.
//!
//! A condition is parsed and compiled while the map is read (a regular expression once, never per
//! request), and every check on it runs during deserialization, so a bad operator or regex is a
//! map error with the line and column serde_yaml attaches. Evaluation allocates nothing: it walks
//! the details the request already parsed.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schema::checked_str;
use crate::anomaly::Details;

/// The operators a condition's mapping may hold, as an error message lists them.
const OPERATORS: &str = "eq, ne, gt, gte, lt, lte, in, matches or exists";

/// A case's `when`: every condition must hold.
#[derive(Debug)]
pub struct When(Box<[Condition]>);

/// One `FIELD: CONDITION` entry of a `when`.
#[derive(Debug)]
pub struct Condition {
    field: Field,
    /// All must hold.
    tests: Box<[Test]>,
}

/// What a condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    /// The anomaly's name.
    Anomaly,
    /// A path into the details, split on dots.
    Details(Box<[String]>),
}

/// One operator and its operand.
#[derive(Debug)]
enum Test {
    Eq(Scalar),
    Ne(Scalar),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    In(Box<[Scalar]>),
    Matches(MatchRegex),
    Exists(bool),
}

/// A value a condition compares with: what a YAML scalar can be.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// The value a field holds in one anomaly.
#[derive(Debug, Clone, Copy)]
enum Found<'a> {
    Missing,
    Str(&'a str),
    Json(&'a Value),
}

/// One condition of a `when` judged for one anomaly, for `autohealer explain`: the field, its
/// operators as `GET /reflexes` shows them, the value the anomaly has there, and the verdict.
#[derive(Debug, Serialize)]
pub struct Judged {
    pub field: String,
    pub test: Value,
    /// `None` (left out of the JSON) when the anomaly has no such field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    pub held: bool,
}

impl When {
    /// True when every condition holds for the anomaly `name` with `details`.
    pub fn holds(&self, name: &str, details: &Details) -> bool {
        self.0
            .iter()
            .all(|condition| condition.holds(name, details))
    }

    /// Every condition judged for the anomaly `name` with `details`, as `holds` judges it.
    pub fn judge(&self, name: &str, details: &Details) -> Vec<Judged> {
        self.0
            .iter()
            .map(|condition| {
                let found = condition.find(name, details);
                Judged {
                    field: condition.field.to_string(),
                    // Operands are scalars the map parsed: always JSON.
                    test: serde_json::to_value(TestsShown(&condition.tests)).unwrap_or(Value::Null),
                    value: match found {
                        Found::Missing => None,
                        Found::Str(text) => Some(Value::String(text.to_string())),
                        Found::Json(value) => Some(value.clone()),
                    },
                    held: condition.holds_for(found),
                }
            })
            .collect()
    }

    /// Whether any condition reads the details (the rest read only the name).
    #[cfg(test)]
    fn reads_details(&self) -> bool {
        self.0.iter().any(|c| matches!(c.field, Field::Details(_)))
    }
}

impl Condition {
    fn holds(&self, name: &str, details: &Details) -> bool {
        self.holds_for(self.find(name, details))
    }

    /// The value this condition looks at in the anomaly `name` with `details`.
    fn find<'a>(&self, name: &'a str, details: &'a Details) -> Found<'a> {
        match &self.field {
            Field::Anomaly => Found::Str(name),
            Field::Details(path) => find(details, path),
        }
    }

    fn holds_for(&self, found: Found<'_>) -> bool {
        self.tests.iter().all(|test| test.holds(found))
    }
}

/// Follows `path` into the details; a step through something that is not an object is missing.
fn find<'a>(details: &'a Details, path: &[String]) -> Found<'a> {
    let Some((first, rest)) = path.split_first() else {
        return Found::Missing;
    };
    let mut value = match details.object().get(first) {
        Some(value) => value,
        None => return Found::Missing,
    };
    for key in rest {
        value = match value.as_object().and_then(|object| object.get(key)) {
            Some(value) => value,
            None => return Found::Missing,
        };
    }
    Found::Json(value)
}

impl Test {
    /// A missing field holds only `exists: false`; a value of the wrong type holds nothing.
    fn holds(&self, found: Found<'_>) -> bool {
        match self {
            Test::Exists(wanted) => *wanted == !matches!(found, Found::Missing),
            Test::Eq(scalar) => scalar.compare(found) == Some(true),
            Test::Ne(scalar) => scalar.compare(found) == Some(false),
            Test::Gt(n) => number(found).is_some_and(|v| v > *n),
            Test::Gte(n) => number(found).is_some_and(|v| v >= *n),
            Test::Lt(n) => number(found).is_some_and(|v| v < *n),
            Test::Lte(n) => number(found).is_some_and(|v| v <= *n),
            Test::In(list) => list.iter().any(|s| s.compare(found) == Some(true)),
            Test::Matches(regex) => text(found).is_some_and(|t| regex.regex.is_match(t)),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Test::Eq(_) => "eq",
            Test::Ne(_) => "ne",
            Test::Gt(_) => "gt",
            Test::Gte(_) => "gte",
            Test::Lt(_) => "lt",
            Test::Lte(_) => "lte",
            Test::In(_) => "in",
            Test::Matches(_) => "matches",
            Test::Exists(_) => "exists",
        }
    }
}

fn number(found: Found<'_>) -> Option<f64> {
    match found {
        Found::Json(Value::Number(n)) => n.as_f64(),
        _ => None,
    }
}

fn text(found: Found<'_>) -> Option<&str> {
    match found {
        Found::Str(text) => Some(text),
        Found::Json(Value::String(text)) => Some(text),
        _ => None,
    }
}

impl Scalar {
    /// Whether `found` equals this scalar: `None` when it is missing or of another type, which
    /// holds neither `eq` nor `ne`.
    fn compare(&self, found: Found<'_>) -> Option<bool> {
        match (self, found) {
            (Scalar::Str(s), found) => text(found).map(|t| t == s),
            (Scalar::Num(n), found) => number(found).map(|v| v == *n),
            (Scalar::Bool(b), Found::Json(Value::Bool(v))) => Some(v == b),
            (Scalar::Null, Found::Json(Value::Null)) => Some(true),
            _ => None,
        }
    }
}

/// A regular expression that must match the whole string, compiled once when the map loads.
#[derive(Debug)]
struct MatchRegex {
    source: String,
    regex: regex::Regex,
}

impl TryFrom<String> for MatchRegex {
    type Error = String;
    fn try_from(source: String) -> Result<Self, String> {
        // Checked alone first, so the error speaks of what the operator wrote, not the anchors.
        if let Err(err) = regex::Regex::new(&source) {
            return Err(format!(
                "invalid regular expression `{source}`: {}",
                regex_error(&err)
            ));
        }
        let regex = regex::Regex::new(&format!(r"\A(?:{source})\z")).map_err(|err| {
            format!(
                "invalid regular expression `{source}`: {}",
                regex_error(&err)
            )
        })?;
        Ok(MatchRegex { source, regex })
    }
}

/// The regex crate's message on one line: its syntax errors draw the pattern and a caret over
/// several lines, and end with `error: WHAT`.
fn regex_error(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_string,
        )
}

impl TryFrom<String> for Field {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if text == "anomaly" {
            return Ok(Field::Anomaly);
        }
        let Some(path) = text.strip_prefix("details.") else {
            return Err(format!(
                "unknown field `{text}` in `when`: use anomaly or details.KEY (dots for nesting)"
            ));
        };
        let keys: Box<[String]> = path.split('.').map(str::to_string).collect();
        if keys.iter().any(String::is_empty) {
            return Err(format!("field `{text}` in `when` has an empty key"));
        }
        Ok(Field::Details(keys))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Anomaly => f.write_str("anomaly"),
            Field::Details(path) => write!(f, "details.{}", path.join(".")),
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer)
    }
}

impl<'de> Deserialize<'de> for MatchRegex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer)
    }
}

impl<'de> Deserialize<'de> for When {
    // A visitor, so a field given twice is an error (a plain map would keep the last silently).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WhenVisitor;
        impl<'de> Visitor<'de> for WhenVisitor {
            type Value = When;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping from a field (anomaly or details.KEY) to a condition")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<When, A::Error> {
                let mut conditions: Vec<Condition> = Vec::new();
                while let Some(field) = map.next_key::<Field>()? {
                    let Tests(tests) = map.next_value()?;
                    if conditions.iter().any(|c| c.field == field) {
                        return Err(de::Error::custom(format!(
                            "`{field}` is given twice in `when`"
                        )));
                    }
                    conditions.push(Condition { field, tests });
                }
                if conditions.is_empty() {
                    return Err(de::Error::custom(
                        "`when` is empty: leave it out for a case that always holds",
                    ));
                }
                Ok(When(conditions.into()))
            }
        }
        deserializer.deserialize_map(WhenVisitor)
    }
}

/// The tests of one condition: a scalar (equality) or a mapping of operators.
struct Tests(Box<[Test]>);

impl<'de> Deserialize<'de> for Tests {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TestsVisitor;
        impl<'de> Visitor<'de> for TestsVisitor {
            type Value = Tests;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a value to compare with, or a mapping of operators ({OPERATORS})"
                )
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Tests, E> {
                Ok(Tests(Box::new([Test::Eq(Scalar::Bool(v))])))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Tests, E> {
                Ok(Tests(Box::new([Test::Eq(Scalar::Num(v as f64))])))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tests, E> {
                Ok(Tests(Box::new([Test::Eq(Scalar::Num(v as f64))])))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Tests, E> {
                Ok(Tests(Box::new([Test::Eq(Scalar::Num(v))])))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Tests, E> {
                Ok(Tests(Box::new([Test::Eq(Scalar::Str(v.to_string()))])))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Tests, E> {
                Ok(Tests(Box::new([Test::Eq(Scalar::Null)])))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tests, A::Error> {
                let mut tests: Vec<Test> = Vec::new();
                while let Some(operator) = map.next_key::<String>()? {
                    let test = match operator.as_str() {
                        "eq" => Test::Eq(map.next_value()?),
                        "ne" => Test::Ne(map.next_value()?),
                        "gt" => Test::Gt(map.next_value::<Number>()?.0),
                        "gte" => Test::Gte(map.next_value::<Number>()?.0),
                        "lt" => Test::Lt(map.next_value::<Number>()?.0),
                        "lte" => Test::Lte(map.next_value::<Number>()?.0),
                        "in" => Test::In(map.next_value::<ScalarList>()?.0),
                        "matches" => Test::Matches(map.next_value()?),
                        "exists" => Test::Exists(map.next_value()?),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown operator `{other}`; use {OPERATORS}"
                            )))
                        }
                    };
                    if tests.iter().any(|t| t.name() == test.name()) {
                        return Err(de::Error::custom(format!(
                            "operator `{operator}` is given twice"
                        )));
                    }
                    tests.push(test);
                }
                if tests.is_empty() {
                    return Err(de::Error::custom(format!(
                        "a condition needs at least one operator ({OPERATORS})"
                    )));
                }
                // A missing field holds only `exists: false`, so nothing else can hold with it.
                if tests.len() > 1 && tests.iter().any(|t| matches!(t, Test::Exists(false))) {
                    return Err(de::Error::custom(
                        "`exists: false` holds only for a missing field, which no other operator \
                         holds: this condition could never hold",
                    ));
                }
                Ok(Tests(tests.into()))
            }
        }
        deserializer.deserialize_any(TestsVisitor)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number, boolean or null")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Num(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The operand of `gt`, `gte`, `lt` and `lte`.
struct Number(f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl Visitor<'_> for NumberVisitor {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
                Ok(Number(v))
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

/// The operand of `in`: a list of scalars.
struct ScalarList(Box<[Scalar]>);

impl<'de> Deserialize<'de> for ScalarList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = ScalarList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ScalarList, A::Error> {
                let mut list = Vec::new();
                while let Some(scalar) = seq.next_element()? {
                    list.push(scalar);
                }
                if list.is_empty() {
                    return Err(de::Error::custom(
                        "`in` is empty: give the values to compare with",
                    ));
                }
                Ok(ScalarList(list.into()))
            }
        }
        deserializer.deserialize_seq(ListVisitor)
    }
}

// Shown by `GET /reflexes` in the long form: every condition as a mapping of its operators.

impl Serialize for When {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for condition in self.0.iter() {
            map.serialize_entry(&condition.field.to_string(), &TestsShown(&condition.tests))?;
        }
        map.end()
    }
}

struct TestsShown<'a>(&'a [Test]);

impl Serialize for TestsShown<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for test in self.0 {
            match test {
                Test::Eq(v) | Test::Ne(v) => map.serialize_entry(test.name(), v)?,
                Test::Gt(n) | Test::Gte(n) | Test::Lt(n) | Test::Lte(n) => {
                    map.serialize_entry(test.name(), &Scalar::Num(*n))?
                }
                Test::In(list) => map.serialize_entry(test.name(), list)?,
                Test::Matches(regex) => map.serialize_entry(test.name(), &regex.source)?,
                Test::Exists(b) => map.serialize_entry(test.name(), b)?,
            }
        }
        map.end()
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Scalar::Str(text) => s.serialize_str(text),
            // Whole numbers as integers, as they were most likely written.
            Scalar::Num(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => s.serialize_i64(*n as i64),
            Scalar::Num(n) => s.serialize_f64(*n),
            Scalar::Bool(b) => s.serialize_bool(*b),
            Scalar::Null => s.serialize_unit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn when(yaml: &str) -> Result<When, String> {
        serde_yaml::from_str(yaml).map_err(|err| err.to_string())
    }

    fn details(value: Value) -> Details {
        Details::from_object(value.as_object().unwrap().clone())
    }

    fn holds(yaml: &str, name: &str, value: Value) -> bool {
        when(yaml).unwrap().holds(name, &details(value))
    }

    #[test]
    fn a_scalar_means_equality_of_the_same_type() {
        assert!(holds(
            "details.mount: /var",
            "disk",
            json!({"mount": "/var"})
        ));
        assert!(!holds("details.mount: /var", "disk", json!({"mount": "/"})));
        assert!(holds("details.n: 5", "x", json!({"n": 5})));
        assert!(holds("details.n: 5", "x", json!({"n": 5.0})));
        assert!(
            !holds("details.n: 5", "x", json!({"n": "5"})),
            "a string is not a number"
        );
        assert!(holds("details.up: false", "x", json!({"up": false})));
        assert!(holds("details.v: null", "x", json!({"v": null})));
        assert!(
            !holds("details.v: null", "x", json!({})),
            "missing is not null"
        );
        assert!(holds("anomaly: disk.sda.full", "disk.sda.full", json!({})));
    }

    #[test]
    fn numbers_compare_and_other_types_hold_nothing() {
        let yaml = "details.percent: {gte: 95, lt: 99.5}";
        assert!(holds(yaml, "x", json!({"percent": 95})));
        assert!(holds(yaml, "x", json!({"percent": 99.4})));
        assert!(!holds(yaml, "x", json!({"percent": 99.5})));
        assert!(!holds(yaml, "x", json!({"percent": 94.9})));
        assert!(!holds(yaml, "x", json!({"percent": "97"})));
        assert!(!holds(yaml, "x", json!({"percent": [97]})));
        assert!(!holds(yaml, "x", json!({})));
        assert!(holds("details.n: {gt: -1, lte: 0}", "x", json!({"n": 0})));
        assert!(!holds("details.n: {gt: 0}", "x", json!({"n": 0})));
    }

    #[test]
    fn ne_holds_only_for_a_present_value_of_the_same_type() {
        let yaml = "details.env: {ne: prod}";
        assert!(holds(yaml, "x", json!({"env": "dev"})));
        assert!(!holds(yaml, "x", json!({"env": "prod"})));
        assert!(
            !holds(yaml, "x", json!({})),
            "missing holds only exists: false"
        );
        assert!(
            !holds(yaml, "x", json!({"env": 3})),
            "wrong type holds nothing"
        );
    }

    #[test]
    fn in_matches_and_exists() {
        let yaml = "details.mount: {in: [/, /var, 7]}";
        assert!(holds(yaml, "x", json!({"mount": "/var"})));
        assert!(holds(yaml, "x", json!({"mount": 7})));
        assert!(!holds(yaml, "x", json!({"mount": "/home"})));
        let yaml = "anomaly: {matches: 'nginx\\.web[0-9]+\\.down'}";
        assert!(holds(yaml, "nginx.web12.down", json!({})));
        assert!(
            !holds(yaml, "nginx.web12.down.now", json!({})),
            "the whole string must match"
        );
        assert!(!holds(yaml, "xnginx.web1.down", json!({})));
        assert!(!holds("details.n: {matches: '5'}", "x", json!({"n": 5})));
        assert!(holds("details.a: {exists: true}", "x", json!({"a": null})));
        assert!(!holds("details.a: {exists: true}", "x", json!({})));
        assert!(holds("details.a: {exists: false}", "x", json!({})));
        assert!(!holds("details.a: {exists: false}", "x", json!({"a": 1})));
    }

    #[test]
    fn nested_fields_follow_objects_only() {
        let yaml = "details.labels.mount: /";
        assert!(holds(yaml, "x", json!({"labels": {"mount": "/"}})));
        assert!(!holds(yaml, "x", json!({"labels": "mount"})));
        assert!(!holds(yaml, "x", json!({"labels": {}})));
        let deep = "details.a.b.c: {exists: false}";
        assert!(
            holds(deep, "x", json!({"a": {"b": 5}})),
            "through a number: missing"
        );
        assert!(holds(deep, "x", json!({})));
        assert!(!holds(deep, "x", json!({"a": {"b": {"c": 0}}})));
    }

    #[test]
    fn every_condition_must_hold() {
        let yaml = "{anomaly: disk.root.full, details.percent: {gte: 95}}";
        assert!(holds(yaml, "disk.root.full", json!({"percent": 96})));
        assert!(!holds(yaml, "disk.var.full", json!({"percent": 96})));
        assert!(!holds(yaml, "disk.root.full", json!({"percent": 90})));
        assert!(when(yaml).unwrap().reads_details());
        assert!(!when("anomaly: x").unwrap().reads_details());
    }

    #[test]
    fn invalid_conditions_say_what_is_wrong() {
        // Positions are the offending value's own: an operand, or the condition's mapping.
        let err = |yaml: &str| when(yaml).unwrap_err();
        assert_eq!(
            err("details.x: {gtee: 5}"),
            "details.x: unknown operator `gtee`; use eq, ne, gt, gte, lt, lte, in, matches or exists at line 1 column 12"
        );
        assert_eq!(
            err("details.x: {matches: '(('}"),
            "details.x.matches: invalid regular expression `((`: unclosed group at line 1 column 22"
        );
        assert_eq!(
            err("details.x: {gt: five}"),
            "details.x.gt: invalid type: string \"five\", expected a number at line 1 column 17"
        );
        assert_eq!(
            err("details.x: {in: yes}"),
            "details.x.in: invalid type: string \"yes\", expected a list of values at line 1 column 17"
        );
        assert_eq!(
            err("details.x: {in: []}"),
            "details.x.in: `in` is empty: give the values to compare with at line 1 column 17"
        );
        assert_eq!(
            err("details.x: {exists: maybe}"),
            "details.x.exists: invalid type: string \"maybe\", expected a boolean at line 1 column 21"
        );
        assert_eq!(
            err("details.x: {}"),
            "details.x: a condition needs at least one operator (eq, ne, gt, gte, lt, lte, in, matches or exists) at line 1 column 12"
        );
        assert_eq!(
            err("details.x: {exists: false, eq: 1}"),
            "details.x: `exists: false` holds only for a missing field, which no other operator holds: this condition could never hold at line 1 column 12"
        );
        assert_eq!(
            err("details.x: {eq: 1, eq: 2}"),
            "details.x: operator `eq` is given twice at line 1 column 12"
        );
        assert_eq!(
            err("details.x: {eq: [1]}"),
            "details.x.eq: invalid type: sequence, expected a string, number, boolean or null at line 1 column 17"
        );
        // At the top of a document serde_yaml gives no position; inside a map file it does
        // (see `compile`'s tests).
        assert_eq!(
            err("name: x"),
            "unknown field `name` in `when`: use anomaly or details.KEY (dots for nesting)"
        );
        assert_eq!(
            err("details..x: 1"),
            "field `details..x` in `when` has an empty key"
        );
        assert_eq!(
            err("{details.x: 1, details.x: 2}"),
            "`details.x` is given twice in `when`"
        );
        assert_eq!(
            err("{}"),
            "`when` is empty: leave it out for a case that always holds"
        );
    }

    #[test]
    fn each_condition_is_judged_with_the_value_it_looked_at() {
        let when = when("{anomaly: {matches: 'disk\\..*'}, details.fs.used: {gte: 95}, details.mount: /, details.gone: {exists: true}}").unwrap();
        let details = details(json!({"fs": {"used": 97.5}, "mount": "/var"}));
        let judged = serde_json::to_value(when.judge("disk.sda.full", &details)).unwrap();
        assert_eq!(
            judged,
            json!([
                {"field": "anomaly", "test": {"matches": "disk\\..*"}, "value": "disk.sda.full", "held": true},
                {"field": "details.fs.used", "test": {"gte": 95}, "value": 97.5, "held": true},
                {"field": "details.mount", "test": {"eq": "/"}, "value": "/var", "held": false},
                {"field": "details.gone", "test": {"exists": true}, "held": false},
            ])
        );
        // The verdicts are the ones `holds` reaches.
        let all = when.judge("disk.sda.full", &details).iter().all(|j| j.held);
        assert_eq!(all, when.holds("disk.sda.full", &details));
    }

    #[test]
    fn conditions_are_shown_as_mappings_of_operators() {
        let shown = serde_json::to_value(
            when("{details.percent: {gte: 95}, details.mount: {in: [/, /var]}, anomaly: x, details.r: {matches: 'a+'}}")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            shown,
            json!({
                "details.percent": {"gte": 95},
                "details.mount": {"in": ["/", "/var"]},
                "anomaly": {"eq": "x"},
                "details.r": {"matches": "a+"},
            })
        );
    }
}
