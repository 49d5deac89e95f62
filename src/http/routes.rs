//! The routes of the API (SPEC §2, and §9's silences) and their answers: the routing table, the
//! bearer-token check, the body limits (content type, size, read timeout), and `ApiError`, which
//! turns every failure into a status and a `{"error": ...}` body.
//!
//! Handlers are generic over the request body, so the routing table and every error answer are
//! tested in-process, without a socket; the binary-level tests in `tests/` cover the rest.

use std::future::Future;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{
    HeaderName, HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

use super::alertmanager::AlertResult;
use super::ServerState;
use crate::anomaly::{Anomaly, Source};
use crate::dispatch::{DispatchOutcome, HISTORY_CAPACITY};
use crate::log::records::Trigger;
use crate::metrics;
use crate::rails::{NewSilence, SilenceError};
use crate::reload::{ReloadMessage, ReloadOutcome};

/// What a request body may be: hyper's `Incoming` when served, any `Body` in tests.
pub trait RequestBody: Body<Data = Bytes, Error: Into<BoxError>> + Unpin {}
impl<B: Body<Data = Bytes, Error: Into<BoxError>> + Unpin> RequestBody for B {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type HttpResponse = Response<Full<Bytes>>;

/// A failed request: its status, the message for the client, and a header some statuses need
/// (`Allow` for 405, `WWW-Authenticate` for 401).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    header: Option<(HeaderName, &'static str)>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            header: None,
        }
    }

    fn into_response(self) -> HttpResponse {
        let mut response = json_response(self.status, &json!({ "error": self.message }));
        if let Some((name, value)) = self.header {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// Routes one request and turns any `ApiError` into its response. Its body must have arrived
/// by `deadline` (SPEC §8: the whole request within the read timeout).
pub async fn handle(
    state: &ServerState,
    request: Request<impl RequestBody>,
    deadline: Instant,
) -> HttpResponse {
    route(state, request, deadline)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn route(
    state: &ServerState,
    request: Request<impl RequestBody>,
    deadline: Instant,
) -> Result<HttpResponse, ApiError> {
    let method = request.method().clone();
    let path = request.uri().path();
    // Health checks stay open so load balancers and systemd probes need no secret (SPEC §2).
    if let "/healthz" | "/health" = path {
        allow(&method, Method::GET, "GET")?;
        return Ok(json_response(StatusCode::OK, &json!({"status": "ok"})));
    }
    authorize(state, &request)?;
    match path {
        "/anomaly" => {
            allow(&method, Method::POST, "POST")?;
            post_anomaly(state, request, deadline).await
        }
        "/alertmanager" => {
            allow(&method, Method::POST, "POST")?;
            post_alertmanager(state, request, deadline).await
        }
        "/metrics" => {
            allow(&method, Method::GET, "GET")?;
            get_metrics()
        }
        "/reflexes" => {
            allow(&method, Method::GET, "GET")?;
            Ok(get_reflexes(state))
        }
        "/actions" => {
            allow(&method, Method::GET, "GET")?;
            get_actions(state, request.uri().query())
        }
        "/-/reload" => {
            allow(&method, Method::POST, "POST")?;
            post_reload(state).await
        }
        "/silences" => match method {
            Method::GET => Ok(get_silences(state)),
            Method::POST => post_silence(state, request, deadline).await,
            _ => Err(not_allowed(&method, "GET, POST")),
        },
        path if path.starts_with(SILENCE_PREFIX) => {
            allow(&method, Method::DELETE, "DELETE")?;
            delete_silence(state, &path[SILENCE_PREFIX.len()..])
        }
        path => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        )),
    }
}

/// 401 unless the request carries the bearer token in force (when `--token-file` is set).
fn authorize<B>(state: &ServerState, request: &Request<B>) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let header = request.headers().get(AUTHORIZATION);
    if token.authorizes(header) {
        return Ok(());
    }
    let message = match header {
        None => "this endpoint needs an `Authorization: Bearer <token>` header",
        Some(_) => "the bearer token is not valid",
    };
    Err(ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_string(),
        header: Some((WWW_AUTHENTICATE, "Bearer")),
    })
}

fn allow(method: &Method, expected: Method, allow: &'static str) -> Result<(), ApiError> {
    if *method == expected {
        return Ok(());
    }
    Err(not_allowed(method, allow))
}

/// 405 for `method`, with the methods the path takes in `Allow`.
fn not_allowed(method: &Method, allow: &'static str) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("method {method} is not allowed here; use {allow}"),
        header: Some((ALLOW, allow)),
    }
}

async fn post_anomaly(
    state: &ServerState,
    request: Request<impl RequestBody>,
    deadline: Instant,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(state, request, deadline).await?;
    let anomaly = Anomaly::from_json(&body)
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))?;
    let name = anomaly.name.clone();
    let outcome = state.dispatcher.dispatch(anomaly, Source::Http);
    let status = match outcome {
        DispatchOutcome::Dispatched { .. } => StatusCode::ACCEPTED,
        DispatchOutcome::Suppressed { .. }
        | DispatchOutcome::Silenced { .. }
        | DispatchOutcome::Unmatched => StatusCode::OK,
        DispatchOutcome::ShuttingDown => return Err(shutting_down()),
    };
    Ok(json_bytes_response(
        status,
        outcome.answer(&name).to_json_bytes(),
    ))
}

/// The answer once shutdown has begun: 503, which monitors and Alertmanager retry.
fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the daemon is shutting down; send it again once it is back",
    )
}

/// 200 for Alertmanager's own payloads, whatever became of each alert (a 4xx is for a body that
/// is not its payload at all); 503 once shutdown has begun, which Alertmanager retries.
async fn post_alertmanager(
    state: &ServerState,
    request: Request<impl RequestBody>,
    deadline: Instant,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(state, request, deadline).await?;
    let results = state
        .alerts
        .receive(&body, &state.dispatcher, &state.log)
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))?;
    // Alertmanager re-sends on 5xx; what did run is remembered and answers `duplicate` then.
    let stopped = results.iter().any(|result| {
        matches!(
            result,
            AlertResult::Dispatched {
                outcome: DispatchOutcome::ShuttingDown,
                ..
            }
        )
    });
    if stopped {
        return Err(shutting_down());
    }
    let mut body = b"{\"results\":[".to_vec();
    for (i, result) in results.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        result.write_json(&mut body);
    }
    body.extend_from_slice(b"]}");
    Ok(json_bytes_response(StatusCode::OK, body))
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

/// Checks the content type and size limit, then reads the whole body by `deadline`.
async fn read_json_body(
    state: &ServerState,
    request: Request<impl RequestBody>,
    deadline: Instant,
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
    // A declared Content-Length is the body's exact size hint: hyper has parsed it already.
    if request.body().size_hint().lower() > state.max_body as u64 {
        return Err(too_large());
    }
    let read = whole_body(Limited::new(request.into_body(), state.max_body));
    tokio::pin!(read);
    // A body sent with its head has been read by the time this runs: take it without arming a
    // timer. One that trickles in is held to what is left of the request's read timeout.
    let read = match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
        Poll::Ready(read) => read,
        Poll::Pending => match tokio::time::timeout_at(deadline, read).await {
            Ok(read) => read,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request was not received whole within {}",
                        humantime::format_duration(state.read_timeout)
                    ),
                ))
            }
        },
    };
    match read {
        Ok(body) => Ok(body),
        Err(err) if err.is::<LengthLimitError>() => Err(too_large()),
        Err(err) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("could not read the request body: {err}"),
        )),
    }
}

/// All of `body`'s data. A body of one frame, as most are, is kept as it came; later frames are
/// appended to a copy. (`BodyExt::collect` queues every frame first, one allocation more.)
async fn whole_body<B: Body<Data = Bytes> + Unpin>(mut body: B) -> Result<Bytes, B::Error> {
    let mut whole = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        if data.is_empty() {
            continue;
        }
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let mut both = BytesMut::from(whole.as_ref());
                both.extend_from_slice(&data);
                joined = Some(both);
            }
        }
    }
    Ok(joined.map_or(whole, BytesMut::freeze))
}

/// `application/json`, with or without parameters such as a charset.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    // Compared as bytes: this runs for every anomaly, and text checks cost ten times as much.
    let mime = content_type.and_then(|v| v.as_bytes().split(|b| *b == b';').next());
    mime.is_some_and(|mime| mime.trim_ascii().eq_ignore_ascii_case(b"application/json"))
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
            "limits": snapshot.map.limits,
        }),
    )
}

/// `GET /actions?limit=N`: the newest N actions (default 50, at most the history's size).
fn get_actions(state: &ServerState, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    const DEFAULT_LIMIT: usize = 50;
    let mut limit = DEFAULT_LIMIT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        if let Some(value) = pair.strip_prefix("limit=") {
            limit = value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=HISTORY_CAPACITY).contains(n))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("`limit` must be a whole number from 1 to {HISTORY_CAPACITY}"),
                    )
                })?;
        }
    }
    let actions = state.dispatcher.history().newest(limit);
    Ok(json_response(
        StatusCode::OK,
        &json!({ "actions": actions }),
    ))
}

/// The path of one silence, before its id: `DELETE /silences/ID`.
const SILENCE_PREFIX: &str = "/silences/";

/// `GET /silences`: the silences in force, oldest first.
fn get_silences(state: &ServerState) -> HttpResponse {
    let silences = state.dispatcher.active_silences();
    json_response(StatusCode::OK, &json!({ "silences": silences }))
}

/// `POST /silences`: 201 with the new silence; 400 for a bad matcher, duration or comment; 429
/// when the table is full.
async fn post_silence(
    state: &ServerState,
    request: Request<impl RequestBody>,
    deadline: Instant,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(state, request, deadline).await?;
    let new = NewSilence::from_json(&body)
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))?;
    match state.dispatcher.add_silence(new) {
        Ok(silence) => Ok(json_response(StatusCode::CREATED, &silence)),
        Err(full @ SilenceError::Full) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            full.to_string(),
        )),
    }
}

/// `DELETE /silences/ID`: ends the silence now; 404 when none in force has that id.
fn delete_silence(state: &ServerState, id: &str) -> Result<HttpResponse, ApiError> {
    let expired = Uuid::try_parse(id)
        .ok()
        .and_then(|id| state.dispatcher.expire_silence(id));
    match expired {
        Some(_) => Ok(json_response(StatusCode::OK, &json!({"status": "expired"}))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no silence in force has the id {id:?}"),
        )),
    }
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

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> HttpResponse {
    // Serializing plain data into a Vec cannot fail; `null` would be the answer if it did.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec());
    json_bytes_response(status, bytes)
}

/// An answer whose JSON body is already written.
fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use hyper::body::Frame;
    use serde_json::Value;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::auth::TokenFile;
    use crate::dispatch::Dispatcher;
    use crate::http::{AlertReceiver, ALERT_MEMORY_ENTRIES};

    const TOKEN: &str = "s3cret";

    /// A server state over a one-reflex map, with a token, and the reload channel's far end.
    struct Fixture {
        state: ServerState,
        reloads: mpsc::Receiver<ReloadMessage>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let map_path = dir.path().join("map.yml");
        std::fs::write(&map_path, "workflows: {page: {}}\nreflexes: {a.b: page}\n").unwrap();
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
        let map = Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::map::load(&map_path, 1).unwrap(),
        ));
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let dispatcher = Dispatcher::new(
            map.clone(),
            log.clone(),
            TaskTracker::new(),
            CancellationToken::new(),
            false,
        );
        let (reload, reloads) = mpsc::channel();
        let state = ServerState {
            dispatcher,
            map,
            reload,
            max_body: 64,
            read_timeout: Duration::from_millis(100),
            max_connections: 4,
            token: Some(Arc::new(TokenFile::load(&token_path).unwrap())),
            log,
            alerts: AlertReceiver::new(ALERT_MEMORY_ENTRIES),
        };
        Fixture {
            state,
            reloads,
            _dir: dir,
        }
    }

    /// A request with the token and the JSON content type.
    fn request(method: Method, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(CONTENT_TYPE, "application/json")
    }

    /// Handles one request in-process, its read deadline the read timeout from now.
    async fn handle_now(state: &ServerState, request: Request<impl RequestBody>) -> HttpResponse {
        handle(state, request, Instant::now() + state.read_timeout).await
    }

    /// Sends one request in-process; the status, the `{"error"}` or whole JSON body, and the
    /// one header a status may need.
    async fn send(state: &ServerState, request: Request<Full<Bytes>>) -> (StatusCode, Value) {
        let response = handle_now(state, request).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn with_body(builder: hyper::http::request::Builder, body: &str) -> Request<Full<Bytes>> {
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    #[tokio::test]
    async fn the_routing_table_answers_every_path_and_method() {
        let fixture = fixture();
        let state = &fixture.state;
        // Each endpoint with the one method it takes, asked with the other.
        for (path, allowed, wrong) in [
            ("/healthz", "GET", Method::POST),
            ("/health", "GET", Method::DELETE),
            ("/anomaly", "POST", Method::GET),
            ("/alertmanager", "POST", Method::GET),
            ("/metrics", "GET", Method::POST),
            ("/reflexes", "GET", Method::PUT),
            ("/actions", "GET", Method::POST),
            ("/-/reload", "POST", Method::GET),
            ("/silences", "GET, POST", Method::DELETE),
            ("/silences/x", "DELETE", Method::GET),
        ] {
            let response = handle_now(state, with_body(request(wrong.clone(), path), "")).await;
            assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(response.headers()[ALLOW], allowed, "{path}");
        }
        let (status, body) = send(state, with_body(request(Method::GET, "/nope"), "")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, json!({"error": "no such endpoint: /nope"}));

        let (status, body) = send(state, with_body(request(Method::GET, "/healthz"), "")).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
        let (status, body) = send(state, with_body(request(Method::GET, "/reflexes"), "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["generation"], 1);
        assert_eq!(body["reflexes"][0]["match"], "a.b");
        let metrics = handle_now(state, with_body(request(Method::GET, "/metrics"), "")).await;
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(metrics.headers()[CONTENT_TYPE], metrics::CONTENT_TYPE);
    }

    #[tokio::test]
    async fn anomalies_are_answered_as_the_contract_says() {
        let fixture = fixture();
        let state = &fixture.state;
        let post = |body: &str| with_body(request(Method::POST, "/anomaly"), body);
        let (status, body) = send(state, post(r#"{"name": "a.b"}"#)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["status"], "dispatched");
        assert_eq!(body["workflow"], "page");
        let (status, body) = send(state, post(r#"{"name": "x.y"}"#)).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::OK,
                json!({"status": "unmatched", "anomaly": "x.y"})
            )
        );
        let (status, body) = send(state, post(r#"{"name": 5}"#)).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                json!({"error": "`name` must be a string"})
            )
        );
        let (status, _) = send(state, post(&format!(r#"{{"name": "{}"}}"#, "x".repeat(80)))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

        let text = Request::builder()
            .method(Method::POST)
            .uri("/anomaly")
            .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let (status, body) = send(state, text).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            body,
            json!({"error": "the body must be sent with Content-Type: application/json"})
        );
    }

    /// A body sent in several frames with no length, as a chunked upload arrives; one that
    /// `stalls` never sends its end.
    struct Chunked {
        frames: std::collections::VecDeque<Bytes>,
        stalls: bool,
    }

    impl Body for Chunked {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.frames.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None if self.stalls => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    #[tokio::test]
    async fn bodies_in_frames_are_joined_and_held_to_the_limit() {
        let fixture = fixture();
        let chunked = |chunks: &[&str]| {
            let frames = chunks.iter().map(|c| Bytes::from(c.to_string())).collect();
            request(Method::POST, "/anomaly")
                .body(Chunked {
                    frames,
                    stalls: false,
                })
                .unwrap()
        };
        let response = handle_now(&fixture.state, chunked(&["{\"name\"", ": \"a.b\"}"])).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let long = "x".repeat(70);
        let response = handle_now(&fixture.state, chunked(&["{\"name\": \"", &long])).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_gets_408_at_the_requests_deadline_not_a_fresh_timeout() {
        let fixture = fixture();
        let started = Instant::now();
        // The header took most of the budget: what is left is 30 ms of the 100 ms timeout.
        let deadline = started + Duration::from_millis(30);
        let stalled = request(Method::POST, "/anomaly")
            .body(Chunked {
                frames: [Bytes::from_static(b"{\"name\":")].into(),
                stalls: true,
            })
            .unwrap();
        let response = handle(&fixture.state, stalled, deadline).await;
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"error": "the request was not received whole within 100ms"})
        );
    }

    #[tokio::test]
    async fn every_endpoint_but_health_needs_the_token() {
        let fixture = fixture();
        let state = &fixture.state;
        let bare = |method: Method, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let response = handle_now(state, bare(Method::GET, "/healthz")).await;
        assert_eq!(response.status(), StatusCode::OK);
        for (method, path) in [
            (Method::POST, "/anomaly"),
            (Method::GET, "/reflexes"),
            (Method::GET, "/metrics"),
            (Method::GET, "/actions"),
            (Method::POST, "/-/reload"),
            (Method::POST, "/alertmanager"),
            (Method::GET, "/silences"),
            (Method::POST, "/silences"),
            (
                Method::DELETE,
                "/silences/0190c0de-0000-7000-8000-000000000000",
            ),
        ] {
            let response = handle_now(state, bare(method, path)).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer", "{path}");
        }
        let wrong = Request::builder()
            .uri("/reflexes")
            .header(AUTHORIZATION, "Bearer nope")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, body) = send(state, wrong).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::UNAUTHORIZED,
                json!({"error": "the bearer token is not valid"})
            )
        );
    }

    #[tokio::test]
    async fn bad_queries_and_payloads_say_what_is_wrong() {
        let fixture = fixture();
        let state = &fixture.state;
        let (status, body) = send(
            state,
            with_body(request(Method::GET, "/actions?limit=0"), ""),
        )
        .await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                json!({"error": "`limit` must be a whole number from 1 to 1000"})
            )
        );
        let (status, body) = send(
            state,
            with_body(request(Method::POST, "/alertmanager"), "[]"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"],
            "the body is not an Alertmanager webhook payload: expected a JSON object with `alerts`"
        );
    }

    #[tokio::test]
    async fn a_reload_is_asked_of_the_reloader_and_its_answer_relayed() {
        let Fixture {
            state,
            reloads,
            _dir,
        } = fixture();
        // The reloader's side: answer one request as a rejected reload, then go away.
        let reloader = std::thread::spawn(move || {
            if let Ok(ReloadMessage::Reload {
                reply: Some(reply), ..
            }) = reloads.recv()
            {
                let _ = reply.send(ReloadOutcome::Rejected {
                    error: "map.yml:1:1: bad".into(),
                    kept_version: Arc::from("abc"),
                });
            }
        });
        let reload = || with_body(request(Method::POST, "/-/reload"), "");
        let (status, body) = send(&state, reload()).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "map.yml:1:1: bad", "kept_version": "abc"})
            )
        );
        reloader.join().unwrap();
        let (status, body) = send(&state, reload()).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the reloader is not running"})
            )
        );
    }

    #[tokio::test]
    async fn silences_are_added_listed_honoured_and_expired() {
        let fixture = fixture();
        let state = &fixture.state;
        let post = |body: &str| with_body(request(Method::POST, "/silences"), body);
        let (status, silence) = send(
            state,
            post(r#"{"matcher": "a.*", "duration": "2h", "comment": "up"}"#),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(silence["matcher"], "a.*");
        assert_eq!(silence["comment"], "up");
        let id = silence["id"].as_str().unwrap().to_string();
        let starts = humantime::parse_rfc3339(silence["starts_at"].as_str().unwrap()).unwrap();
        let ends = humantime::parse_rfc3339(silence["ends_at"].as_str().unwrap()).unwrap();
        assert_eq!(
            ends.duration_since(starts).unwrap(),
            Duration::from_secs(7200)
        );

        let (status, list) = send(state, with_body(request(Method::GET, "/silences"), "")).await;
        assert_eq!(
            (status, list),
            (StatusCode::OK, json!({"silences": [silence]}))
        );

        // The matched anomaly is held back, with the silence's id.
        let anomaly = with_body(request(Method::POST, "/anomaly"), r#"{"name": "a.b"}"#);
        let (status, body) = send(state, anomaly).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::OK,
                json!({"status": "suppressed", "anomaly": "a.b", "workflow": "page",
                       "reason": "silenced", "silence_id": id})
            )
        );

        let delete = |id: &str| with_body(request(Method::DELETE, &format!("/silences/{id}")), "");
        let (status, body) = send(state, delete(&id)).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"status": "expired"}))
        );
        let (status, body) = send(state, delete(&id)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            json!({"error": format!("no silence in force has the id \"{id}\"")})
        );
        let (status, _) = send(state, delete("not-an-id")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, list) = send(state, with_body(request(Method::GET, "/silences"), "")).await;
        assert_eq!(list, json!({"silences": []}));
        let anomaly = with_body(request(Method::POST, "/anomaly"), r#"{"name": "a.b"}"#);
        assert_eq!(send(state, anomaly).await.0, StatusCode::ACCEPTED);
    }

    #[tokio::test]
    async fn bad_silences_say_what_is_wrong() {
        let fixture = fixture();
        let state = &fixture.state;
        let post = |body: &str| with_body(request(Method::POST, "/silences"), body);
        let (status, body) = send(state, post(r#"{"matcher": "a", "duration": "0s"}"#)).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                json!({"error": "a silence lasts from 1s to 30d, not `0s`"})
            )
        );
        let (status, body) = send(state, post(r#"{"matcher": "a.***", "duration": "1h"}"#)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"],
            "invalid pattern `a.***`: `***` is ambiguous; use `*` within a segment or `**` across dots"
        );
        // The body limit of every endpoint applies.
        let long = format!(
            r#"{{"matcher": "a", "duration": "1h", "comment": "{}"}}"#,
            "x".repeat(64)
        );
        assert_eq!(
            send(state, post(&long)).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        // A full table: 429 with the reason.
        for _ in 0..crate::rails::MAX_SILENCES {
            let (status, _) = send(state, post(r#"{"matcher": "z", "duration": "1h"}"#)).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let (status, body) = send(state, post(r#"{"matcher": "z", "duration": "1h"}"#)).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "1000 silences are in force, the most the daemon keeps; expire one first"})
            )
        );
    }

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
