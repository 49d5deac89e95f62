//! `autohealer send NAME [KEY=VALUE]...` (SPEC §1): posts one anomaly to a running daemon, so
//! shell monitors and cron jobs need neither curl nor hand-built JSON.
//!
//! Exit status: 0 when the daemon accepted the anomaly (dispatched, unmatched or suppressed),
//! 1 when it rejected it (4xx/5xx) or could not be reached; `main` prints the error.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::SendArgs;
use crate::anomaly::JsonObject;
use crate::auth::{self, TokenError};

/// How long the whole request may take: the daemon answers before the workflow runs, so a
/// slow answer means a stuck daemon or network, not a slow action.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Characters of a non-JSON error body quoted in the message (it may be a proxy's HTML page).
const QUOTED_BODY_CHARS: usize = 200;

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
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let url = anomaly_url(&args.url);
    let details: JsonObject = args.details.iter().cloned().collect();
    let body = serde_json::json!({"name": args.name, "details": details});
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (status, text) = runtime.block_on(post(&url, &body, token))?;
    if status.is_success() {
        println!("{text}");
        return Ok(());
    }
    bail!(
        "the daemon at {url} did not accept the anomaly ({status}): {}",
        error_message(&text)
    );
}

/// `POST /anomaly` under the base URL, which may carry a path prefix (a reverse proxy's).
fn anomaly_url(base: &Url) -> Url {
    let mut url = base.clone();
    let path = format!("{}/anomaly", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

async fn post(
    url: &Url,
    body: &Value,
    token: Option<HeaderValue>,
) -> anyhow::Result<(StatusCode, String)> {
    let client = reqwest::Client::builder()
        .timeout(SEND_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    let mut request = client.post(url.clone()).json(body);
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, token);
    }
    let response = request.send().await.map_err(|err| {
        let why = if err.is_timeout() {
            format!("no answer within {}s", SEND_TIMEOUT.as_secs())
        } else if err.is_connect() {
            "is the daemon running there?".to_string()
        } else {
            "the request failed".to_string()
        };
        anyhow::Error::new(err).context(format!("cannot reach the daemon at {url} ({why})"))
    })?;
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("cannot read the answer of the daemon at {url}"))?;
    Ok((status, text))
}

/// The `Authorization` header for the token in `path`, read as the daemon reads it.
fn read_token(path: &Path) -> anyhow::Result<HeaderValue> {
    let shown = path.display();
    let token = auth::read_token(path).map_err(|err| match err {
        TokenError::Read { source, .. } => {
            anyhow::anyhow!("cannot read the token file {shown}: {source}")
        }
        TokenError::Empty { .. } => anyhow::anyhow!("the token file {shown} is empty"),
        TokenError::Malformed { .. } => {
            anyhow::anyhow!("the token in {shown} has characters an HTTP header cannot carry")
        }
    })?;
    let mut header = HeaderValue::from_bytes(&[b"Bearer ".as_slice(), &token].concat())
        .with_context(|| {
            format!("the token in {shown} has characters an HTTP header cannot carry")
        })?;
    header.set_sensitive(true);
    Ok(header)
}

/// The daemon's `{"error": ...}` message, or the start of whatever else answered.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    match parsed.as_ref().and_then(|v| v["error"].as_str()) {
        Some(message) => message.to_string(),
        None if body.trim().is_empty() => "(empty answer)".to_string(),
        None => body.trim().chars().take(QUOTED_BODY_CHARS).collect(),
    }
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

    #[test]
    fn the_endpoint_keeps_a_path_prefix() {
        let url = |base: &str| anomaly_url(&Url::parse(base).unwrap()).to_string();
        assert_eq!(
            url("http://127.0.0.1:8000"),
            "http://127.0.0.1:8000/anomaly"
        );
        assert_eq!(url("http://h/autohealer/"), "http://h/autohealer/anomaly");
        assert_eq!(url("https://h/a/b"), "https://h/a/b/anomaly");
    }

    #[test]
    fn error_messages_come_from_the_answer() {
        assert_eq!(
            error_message(r#"{"error":"`name` is required"}"#),
            "`name` is required"
        );
        assert_eq!(error_message(""), "(empty answer)");
        assert_eq!(error_message("<html>502</html>\n"), "<html>502</html>");
    }

    #[test]
    fn tokens_are_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "Bearer s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(
            read_token(&path).unwrap_err().to_string(),
            format!("the token file {} is empty", path.display())
        );
    }
}
