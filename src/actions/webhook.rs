//! Webhook actions: a JSON POST into a workflow engine such as n8n, retried with exponential
//! backoff and jitter on connection errors, timeouts and 5xx; a 4xx is final.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{ActionReport, ActionRun, Outcome, SHUTDOWN_REASON};
use crate::anomaly::{Details, JsonObject};
use crate::map::WebhookAction;

/// Delay before the first retry; doubled for each further retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One client for every webhook, so connections and TLS sessions are reused.
fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                // A redirect would silently re-send the anomaly somewhere the map does not name.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("autohealer/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|err| format!("cannot build the HTTP client: {err}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// This machine's name, for the `host` field of the body.
fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        nix::unistd::gethostname()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

/// The request's extra headers, expanded; the error is the action's failure reason.
pub fn request_headers(hook: &WebhookAction, run: &ActionRun) -> Result<HeaderMap, String> {
    let context = run.template_context();
    let mut headers = HeaderMap::new();
    for header in hook.headers.values() {
        let value = header.value.expand(&context)?;
        let name = &header.name;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("header `{name}` expands to a value that is not valid in HTTP"))?;
        headers.insert(name.clone(), value);
    }
    Ok(headers)
}

/// Reports what would be posted, without posting it.
pub fn dry_run(hook: &WebhookAction, run: &ActionRun) -> ActionReport {
    ActionReport::dry_run(request_headers(hook, run).map(|_| format!("POST {}", hook.shown_url)))
}

/// The JSON body of every webhook request (SPEC §3), from borrowed parts.
#[derive(Serialize)]
struct Body<'a> {
    action_id: Uuid,
    anomaly: &'a str,
    details: &'a Details,
    host: &'a str,
    params: &'a JsonObject,
    received_at: String,
    workflow: &'a str,
}

/// The JSON body every attempt sends for `run`; the details go in as the text they arrived as.
pub fn request_body(run: &ActionRun) -> Bytes {
    let body = Body {
        action_id: run.action_id.uuid(),
        anomaly: &run.anomaly,
        details: &run.details,
        host: host(),
        params: &run.params,
        received_at: humantime::format_rfc3339_millis(run.received_at).to_string(),
        workflow: &run.workflow.name,
    };
    // Borrowed strings and JSON objects: serializing into memory cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// Posts the anomaly, retrying as configured, until success, a final failure or shutdown.
pub async fn run(
    hook: &WebhookAction,
    run: &ActionRun,
    cancel: &CancellationToken,
) -> ActionReport {
    let started = Instant::now();
    let prepared = client().and_then(|client| Ok((client, request_headers(hook, run)?)));
    let (client, headers) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return ActionReport::failed(started.elapsed(), err),
    };
    // Written once for every attempt.
    let body = request_body(run);

    let mut http_status = None;
    let mut last = (Outcome::Failed, String::new());
    let mut attempts = 0;
    while attempts <= hook.retries {
        if attempts > 0 {
            tokio::select! {
                () = tokio::time::sleep(backoff(attempts)) => {}
                () = cancel.cancelled() => {
                    last = (Outcome::Failed, SHUTDOWN_REASON.to_string());
                    break;
                }
            }
        }
        attempts += 1;
        let request = client
            .post(hook.url.clone())
            .headers(headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .timeout(hook.timeout)
            .send();
        let response = tokio::select! {
            response = request => response,
            () = cancel.cancelled() => {
                last = (Outcome::Failed, SHUTDOWN_REASON.to_string());
                break;
            }
        };
        match response {
            Ok(response) => {
                let status = response.status();
                http_status = Some(status.as_u16());
                if status.is_success() {
                    last = (Outcome::Ok, String::new());
                    break;
                }
                last = (
                    Outcome::Failed,
                    format!("{} answered HTTP {status}", hook.shown_url),
                );
                if !status.is_server_error() {
                    break; // 4xx (and 3xx): the request itself is wrong, retrying will not help
                }
            }
            Err(err) if err.is_timeout() => {
                last = (
                    Outcome::Timeout,
                    format!(
                        "{} did not answer within {}",
                        hook.shown_url,
                        humantime::format_duration(hook.timeout)
                    ),
                );
            }
            Err(err) => {
                let final_error = err.is_builder(); // the request cannot be built: retrying will not help
                                                    // reqwest's message repeats the URL, password and all: show ours instead.
                let err = err.without_url();
                last = (
                    Outcome::Failed,
                    format!("{}: {}", hook.shown_url, error_chain(&err)),
                );
                if final_error {
                    break;
                }
            }
        }
    }
    let (outcome, error) = last;
    let mut report = ActionReport::new(
        outcome,
        started.elapsed(),
        (outcome != Outcome::Ok).then(|| match attempts {
            1 => error,
            n => format!("{error} (after {n} attempts)"),
        }),
    );
    report.http_status = http_status;
    report.attempts = Some(attempts);
    report
}

/// Exponential backoff with ±50% jitter, so a fleet of daemons does not retry in lockstep.
fn backoff(retry: u32) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1 << retry.saturating_sub(1).min(16));
    base.min(MAX_BACKOFF).mul_f64(0.5 + fastrand::f64())
}

/// reqwest's error with its sources, which hold the useful part ("connection refused").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= FIRST_BACKOFF / 2 && first < FIRST_BACKOFF * 3 / 2);
            let third = backoff(3);
            assert!(third >= FIRST_BACKOFF * 2 && third < FIRST_BACKOFF * 6);
            assert!(backoff(40) < MAX_BACKOFF * 3 / 2);
        }
    }
}
