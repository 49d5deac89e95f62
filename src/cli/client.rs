//! The HTTP client of the subcommands that talk to a running daemon (`send`, `silence`): the
//! base URL (which may carry a reverse proxy's path prefix), the bearer token read as the daemon
//! reads it, one request with a deadline, and the daemon's `{"error": ...}` message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::auth::{self, TokenError};

/// How long the whole request may take: the daemon answers before any workflow runs, so a
/// slow answer means a stuck daemon or network, not a slow action.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Characters of a non-JSON error body quoted in the message (it may be a proxy's HTML page).
const QUOTED_BODY_CHARS: usize = 200;

/// Where the daemon is and how to prove who is asking: `--url` and `--token-file`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The daemon's base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8000", value_parser = super::parse_url)]
    pub url: Url,
    /// Send `Authorization: Bearer <token>`, with the token read from FILE (whitespace trimmed).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// A daemon's answer to one request.
#[derive(Debug)]
pub struct Answer {
    pub url: Url,
    pub status: StatusCode,
    pub body: String,
}

impl Answer {
    /// The daemon's `{"error": ...}` message, or the start of whatever else answered.
    pub fn error_message(&self) -> String {
        error_message(&self.body)
    }
}

/// One daemon, reached at `base` with an optional token.
pub struct Client {
    base: Url,
    token: Option<HeaderValue>,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client of the daemon at `base`, with the token in `token_file` if given.
    pub fn new(base: &Url, token_file: Option<&Path>) -> anyhow::Result<Client> {
        let token = token_file.map(read_token).transpose()?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Client {
            base: base.clone(),
            token,
            http,
            runtime,
        })
    }

    /// A client for `--url` and `--token-file`.
    pub fn from_args(args: &ClientArgs) -> anyhow::Result<Client> {
        Client::new(&args.url, args.token_file.as_deref())
    }

    /// Sends `method path` (with `body` as JSON, if any) and reads the answer; an error only
    /// when no answer came.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let url = endpoint(&self.base, path);
        let mut request = self.http.request(method, url.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        self.runtime.block_on(async {
            let response = request.send().await.map_err(|err| {
                let why = if err.is_timeout() {
                    format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
                } else if err.is_connect() {
                    "is the daemon running there?".to_string()
                } else {
                    "the request failed".to_string()
                };
                anyhow::Error::new(err).context(format!("cannot reach the daemon at {url} ({why})"))
            })?;
            let status = response.status();
            let body = response
                .text()
                .await
                .with_context(|| format!("cannot read the answer of the daemon at {url}"))?;
            Ok(Answer { url, status, body })
        })
    }
}

/// `path` under the base URL, which may carry a path prefix (a reverse proxy's).
pub fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url
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

    #[test]
    fn endpoints_keep_a_path_prefix() {
        let url = |base: &str, path: &str| endpoint(&Url::parse(base).unwrap(), path).to_string();
        assert_eq!(
            url("http://127.0.0.1:8000", "anomaly"),
            "http://127.0.0.1:8000/anomaly"
        );
        assert_eq!(
            url("http://h/autohealer/", "anomaly"),
            "http://h/autohealer/anomaly"
        );
        assert_eq!(url("https://h/a/b", "/silences"), "https://h/a/b/silences");
        assert_eq!(url("http://h/", "silences/0190"), "http://h/silences/0190");
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
