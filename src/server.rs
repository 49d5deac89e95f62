//! The HTTP API (SPEC §2): hyper accept loop with graceful drain, request limits, routes, and
//! `ApiError`, which turns every failure into a status and a `{"error": ...}` body. Alertmanager's
//! payload is read in `alertmanager` and the metrics are kept in `metrics`; this module does
//! their HTTP.

use std::convert::Infallible;
use std::future::Future;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use slog::Logger;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::actions::Source;
use crate::alertmanager::AlertReceiver;
use crate::dispatch::{Anomaly, DispatchOutcome, Dispatcher};
use crate::metrics;
use crate::records::{self, Trigger};
use crate::reload::{MapHandle, ReloadMessage, ReloadOutcome};

/// A client that has not sent its whole request header by then is disconnected (SPEC §6).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler shares.
pub struct ServerState {
    pub dispatcher: Dispatcher,
    pub map: MapHandle,
    pub reload: mpsc::Sender<ReloadMessage>,
    pub max_body: usize,
    pub log: Logger,
    /// Alertmanager's alerts already acted on: server state, so it outlives every map reload.
    pub alerts: AlertReceiver,
}

type HttpResponse = Response<Full<Bytes>>;

/// A failed request: its status, the message for the client, and for 405 the allowed methods.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn into_response(self) -> HttpResponse {
        let mut response = json_response(self.status, &json!({ "error": self.message }));
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// Serves `listener` until `shutdown` resolves, then drains open connections until `deadline`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
    deadline: impl Future<Output = Instant>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    records::accept_failed(&state.log, &err);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, request).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that vanishes mid-request is not the daemon's error.
            let _ = connection.await;
        });
    }
    // Stop accepting, then let each connection finish its request in flight.
    drop(listener);
    let deadline = deadline.await;
    if tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        records::shutdown_timed_out(&state.log, "http connections");
    }
}

/// Routes one request and turns any `ApiError` into its response.
pub async fn handle(state: &ServerState, request: Request<Incoming>) -> HttpResponse {
    route(state, request)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn route(state: &ServerState, request: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let method = request.method().clone();
    match request.uri().path() {
        "/anomaly" => {
            allow(&method, Method::POST, "POST")?;
            post_anomaly(state, request).await
        }
        "/alertmanager" => {
            allow(&method, Method::POST, "POST")?;
            post_alertmanager(state, request).await
        }
        "/metrics" => {
            allow(&method, Method::GET, "GET")?;
            get_metrics()
        }
        "/healthz" | "/health" => {
            allow(&method, Method::GET, "GET")?;
            Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
        }
        "/reflexes" => {
            allow(&method, Method::GET, "GET")?;
            Ok(get_reflexes(state))
        }
        "/-/reload" => {
            allow(&method, Method::POST, "POST")?;
            post_reload(state).await
        }
        path => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        )),
    }
}

fn allow(method: &Method, expected: Method, allow: &'static str) -> Result<(), ApiError> {
    if *method == expected {
        return Ok(());
    }
    Err(ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("method {method} is not allowed here; use {allow}"),
        allow: Some(allow),
    })
}

async fn post_anomaly(
    state: &ServerState,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(state, request).await?;
    let anomaly = Anomaly::from_json(&body)
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))?;
    let name = anomaly.name.clone();
    let outcome = state.dispatcher.dispatch(anomaly, Source::Http);
    let status = match outcome {
        DispatchOutcome::Dispatched { .. } => StatusCode::ACCEPTED,
        DispatchOutcome::Unmatched => StatusCode::OK,
    };
    Ok(json_response(status, &outcome.to_json(&name)))
}

/// Always 200 for Alertmanager's own payloads, whatever became of each alert: Alertmanager
/// retries a 5xx, and a 4xx is for a body that is not its payload at all.
async fn post_alertmanager(
    state: &ServerState,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(state, request).await?;
    let results = state
        .alerts
        .receive(&body, &state.dispatcher, &state.log)
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))?;
    let results: Vec<_> = results.iter().map(|result| result.to_json()).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "results": results }),
    ))
}

fn get_metrics() -> Result<HttpResponse, ApiError> {
    let text = metrics::global().encode().map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded",
        )
    })?;
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    Ok(response)
}

/// Checks the content type and size limit, then reads the whole body.
async fn read_json_body(
    state: &ServerState,
    request: Request<Incoming>,
) -> Result<Bytes, ApiError> {
    if !is_json(request.headers().get(CONTENT_TYPE)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be sent with Content-Type: application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {} bytes", state.max_body),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), state.max_body)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(too_large()),
        Err(err) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("could not read the request body: {err}"),
        )),
    }
}

/// `application/json`, with or without parameters such as a charset.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn get_reflexes(state: &ServerState) -> HttpResponse {
    let snapshot = state.map.load();
    json_response(
        StatusCode::OK,
        &json!({
            "version": &*snapshot.version,
            "generation": snapshot.generation,
            "loaded_at": humantime::format_rfc3339_millis(snapshot.loaded_at).to_string(),
            "path": snapshot.path.display().to_string(),
            "reflexes": snapshot.map.reflexes,
            "workflows": snapshot.map.workflows,
        }),
    )
}

async fn post_reload(state: &ServerState) -> Result<HttpResponse, ApiError> {
    let (reply, outcome) = oneshot::channel();
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the reloader is not running",
        )
    };
    state
        .reload
        .send(ReloadMessage::Reload {
            trigger: Trigger::Http,
            reply: Some(reply),
        })
        .map_err(|_| unavailable())?;
    Ok(match outcome.await.map_err(|_| unavailable())? {
        ReloadOutcome::Loaded {
            version,
            generation,
        }
        | ReloadOutcome::Unchanged {
            version,
            generation,
        } => json_response(
            StatusCode::OK,
            &json!({"version": &*version, "generation": generation}),
        ),
        ReloadOutcome::Rejected {
            error,
            kept_version,
        } => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": error, "kept_version": &*kept_version}),
        ),
    })
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("Application/JSON; charset=utf-8"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(Some(&v("application/jsonx"))));
        assert!(!is_json(None));
    }
}
