//! The reference server of SPEC §7: a bare hyper 1 server on the daemon's runtime settings.
//!
//! Same runtime as `app::run` (multi-thread, default worker count, all drivers), same accept
//! loop shape and http1 builder settings as `server::serve` (TokioTimer, the header-read
//! timeout, TCP_NODELAY). Per request it reads the whole body and answers 202 with a small JSON
//! body of the same shape and size as the daemon's `dispatched` answer. Nothing else: no
//! parsing, matching, records or action, which is what the ratio measures.
//!
//! The benchmark runs it by executing its own binary with `--reference-server`; it prints
//! `listening ADDR` on stdout and serves until it is killed.

use std::convert::Infallible;
use std::io::Write;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// The daemon's answer to a dispatched anomaly has this shape; the length matches too.
const ANSWER: &str = r#"{"status":"dispatched","anomaly":"bench.hit","workflow":"bench_log_0","action_id":"019ac7b0-3d5e-7c41-9a8e-3f2b6c1d0e9f"}"#;

pub fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("reference-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("reference server: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("reference server: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening {}", listener.local_addr()?)?;
        stdout.flush()?;
    }
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(autohealer::http::HEADER_READ_TIMEOUT);
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = builder.serve_connection(TokioIo::new(stream), service_fn(answer));
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body, as the daemon must, but do nothing with it.
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
    *response.status_mut() = StatusCode::ACCEPTED;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
