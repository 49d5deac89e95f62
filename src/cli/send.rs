//! `autohealer send NAME [KEY=VALUE]...` (SPEC §1): posts one anomaly to a running daemon, so
//! shell monitors and cron jobs need neither curl nor hand-built JSON.
//!
//! Exit status: 0 when the daemon accepted the anomaly (dispatched, unmatched or suppressed),
//! 1 when it rejected it (4xx/5xx) or could not be reached; `main` prints the error. The URL,
//! the token and the request are `client`'s, shared with `silence`.

use anyhow::bail;
use reqwest::Method;
use serde_json::Value;

use super::client::Client;
use super::SendArgs;
use crate::anomaly::JsonObject;

/// Parses one `KEY=VALUE` argument: the value as JSON where it parses, else as a string.
pub fn parse_detail(text: &str) -> Result<(String, Value), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got {text:?}"));
    };
    if key.is_empty() {
        return Err(format!("the KEY of {text:?} is empty; write KEY=VALUE"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

/// Posts the anomaly, prints the daemon's answer, and fails unless the daemon accepted it.
pub fn run(args: &SendArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.url, args.token_file.as_deref())?;
    let details: JsonObject = args.details.iter().cloned().collect();
    let body = serde_json::json!({"name": args.name, "details": details});
    let answer = client.request(Method::POST, "anomaly", Some(&body))?;
    if answer.status.is_success() {
        println!("{}", answer.body);
        return Ok(());
    }
    bail!(
        "the daemon at {} did not accept the anomaly ({}): {}",
        answer.url,
        answer.status,
        answer.error_message()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_json_where_they_parse_and_strings_otherwise() {
        let detail = |text: &str| parse_detail(text).unwrap();
        assert_eq!(
            detail("latency_ms=5000"),
            ("latency_ms".into(), json!(5000))
        );
        assert_eq!(detail("ratio=0.5"), ("ratio".into(), json!(0.5)));
        assert_eq!(detail("ok=true"), ("ok".into(), json!(true)));
        assert_eq!(detail("gone=null"), ("gone".into(), json!(null)));
        assert_eq!(
            detail(r#"obj={"a":[1]}"#),
            ("obj".into(), json!({"a": [1]}))
        );
        assert_eq!(detail(r#"id="5""#), ("id".into(), json!("5")));
        assert_eq!(
            detail("region=us-east-1"),
            ("region".into(), json!("us-east-1"))
        );
        assert_eq!(detail("zip=01234"), ("zip".into(), json!("01234")));
        assert_eq!(detail("empty="), ("empty".into(), json!("")));
        assert_eq!(detail("eq=a=b"), ("eq".into(), json!("a=b")));
        assert_eq!(
            parse_detail("novalue").unwrap_err(),
            "expected KEY=VALUE, got \"novalue\""
        );
        assert_eq!(
            parse_detail("=5").unwrap_err(),
            "the KEY of \"=5\" is empty; write KEY=VALUE"
        );
    }
}
