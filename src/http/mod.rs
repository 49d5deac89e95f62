//! The HTTP API (SPEC §2): the hyper accept loop with graceful drain and the read timeout,
//! here; the connection cap and each request's read deadline in `connections`; the routes,
//! their limits and their answers in `routes`; Alertmanager's payload in `alertmanager`.

mod alertmanager;
mod connections;
mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use slog::Logger;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::auth::TokenFile;
use crate::dispatch::Dispatcher;
use crate::log::records;
use crate::map::MapHandle;
use crate::reload::ReloadMessage;
use connections::{Close, Connection, ConnectionSlots, ReceivingBody};

pub use alertmanager::{parse_payload, AlertReceiver, ALERT_MEMORY_ENTRIES};
pub use routes::handle;

/// What every request handler shares.
pub struct ServerState {
    pub dispatcher: Dispatcher,
    pub map: MapHandle,
    pub reload: mpsc::Sender<ReloadMessage>,
    pub max_body: usize,
    /// A request must arrive whole — header and body — within this time (SPEC §8: 10 s): a
    /// client that has not sent its whole header by then is disconnected, and one that has not
    /// sent its whole body gets 408.
    pub read_timeout: Duration,
    /// Connections served at once (`--max-connections`).
    pub max_connections: usize,
    /// The bearer token every endpoint but `/healthz` requires, when `--token-file` is given.
    pub token: Option<Arc<TokenFile>>,
    pub log: Logger,
    /// Alertmanager's alerts already acted on: server state, so it outlives every map reload.
    pub alerts: AlertReceiver,
}

/// One connection's share of the server: the state every request reads, and the connection's
/// slot in the table of open connections.
struct Served {
    state: Arc<ServerState>,
    slot: Connection,
}

/// The default of `--header-read-timeout` (SPEC §8: a request must arrive whole, header and
/// body, within 10 s); the benchmark's reference server uses it for the header.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` resolves, then drains open connections until `deadline`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
    deadline: impl Future<Output = Instant>,
) {
    let mut builder = http1::Builder::new();
    // hyper starts this clock whenever it waits for a request head: on a fresh connection and
    // on an idle keep-alive one alike, so a silent or trickling client is cut off either way.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.read_timeout);
    let slots = ConnectionSlots::new(state.max_connections);
    let mut limit_reported = false;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Usually EMFILE: free a descriptor an idle client holds, and back off
                    // briefly instead of spinning.
                    records::accept_failed(&state.log, &err);
                    slots.evict_slowest();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match slots.try_admit() {
            Some(slot) => {
                limit_reported = false;
                slot
            }
            None => {
                // Reported once per episode: a flood must not flood the log too.
                if !limit_reported {
                    records::connection_limit_reached(&state.log, slots.max());
                    limit_reported = true;
                }
                tokio::select! {
                    slot = slots.admit() => slot,
                    () = &mut shutdown => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        // One `Arc` for what each request needs: cloned per request, it costs one locked
        // increment and one decrement rather than two of each.
        let served = Arc::new(Served {
            state: state.clone(),
            slot,
        });
        let service = {
            let served = served.clone();
            service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let served = served.clone();
                async move {
                    let Served { state, slot } = &*served;
                    let guard = slot.request();
                    // The header's time counts against the body's: one budget per request.
                    let deadline = guard.deadline(state.read_timeout);
                    let request = request.map(|body| ReceivingBody::new(body, &guard));
                    let response = handle(state, request, deadline).await;
                    drop(guard);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            // A client that vanishes mid-request is not the daemon's error.
            let close = tokio::select! {
                // In this order on every wake, without drawing a random branch first.
                biased;
                _ = connection.as_mut() => return,
                close = served.slot.told_to_close() => close,
            };
            match close {
                // Dropping a connection without a whole request closes it (a request half
                // read is dropped with it); its slot is freed with `served`.
                Close::Evicted => {}
                // Shutdown: answer the request in flight, then close. A keep-alive connection
                // between requests closes at once; one that has not yet sent a whole request
                // is served that request, or cut off by the header timeout or the deadline.
                Close::Shutdown => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    // Stop accepting, then let each connection finish its request in flight.
    drop(listener);
    slots.close_all();
    let deadline = deadline.await;
    if tokio::time::timeout_at(deadline, slots.all_closed())
        .await
        .is_err()
    {
        records::shutdown_timed_out(&state.log, "http connections");
    }
}
