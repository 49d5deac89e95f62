//! The daemon's life: startup order, signal handling, and shutdown order.
//!
//! Startup: load the map (fail fast, exit 78) → bind → start the reloader and watcher → serve.
//! Shutdown: stop accepting → drain connections → wait for running actions → stop the reloader;
//! the caller then drops the log guard, which flushes every record.

use std::fmt;
use std::sync::{mpsc, Arc};

use anyhow::Context;
use arc_swap::ArcSwap;
use slog::Logger;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::alertmanager::{AlertReceiver, ALERT_MEMORY_ENTRIES};
use crate::cli::RunArgs;
use crate::dispatch::Dispatcher;
use crate::records::{self, Trigger};
use crate::reload::{self, LoadError, ReloadMessage, Reloader};
use crate::server::{self, ServerState};

/// Why the daemon stopped with a failure; `main` maps it to an exit code.
#[derive(Debug)]
pub enum AppError {
    /// The map is missing or invalid at startup (exit 78, so systemd does not restart-loop).
    Config(LoadError),
    /// Anything else (exit 1).
    Other(anyhow::Error),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Config(err) => write!(f, "{err}"),
            AppError::Other(err) => write!(f, "{err:#}"),
        }
    }
}

impl From<anyhow::Error> for AppError {
    fn from(err: anyhow::Error) -> Self {
        AppError::Other(err)
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: RunArgs, log: Logger) -> Result<(), AppError> {
    let initial = reload::load(&args.config, 1).map_err(AppError::Config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("autohealer-worker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, log, initial))
}

async fn serve(args: RunArgs, log: Logger, initial: reload::LoadedMap) -> Result<(), AppError> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;

    records::map_loaded(
        &log,
        &initial.version,
        initial.generation,
        initial.map.reflexes.len(),
        initial.map.workflows.len(),
        Trigger::Startup,
    );
    let map = Arc::new(ArcSwap::from_pointee(initial));
    let (reload_tx, reload_rx) = mpsc::channel();
    let reloader = Reloader::new(args.config.clone(), map.clone(), log.clone());
    // Without a watcher the daemon still serves and reloads on SIGHUP and POST /-/reload.
    let _watcher = match reloader.watch(reload_tx.clone()) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            records::watcher_failed(&log, &err.to_string());
            None
        }
    };
    let reload_thread = reloader
        .spawn(reload_rx)
        .context("cannot start the reload thread")?;

    let tracker = TaskTracker::new();
    let state = Arc::new(ServerState {
        dispatcher: Dispatcher::new(map.clone(), log.clone(), tracker.clone(), args.dry_run),
        map,
        reload: reload_tx.clone(),
        max_body: args.max_body,
        log: log.clone(),
        alerts: AlertReceiver::new(ALERT_MEMORY_ENTRIES),
    });
    records::listening(&log, addr, &args.config);

    // The deadline starts when the stop signal arrives and bounds the whole drain.
    let (deadline_tx, mut deadline_rx) = watch::channel(None::<Instant>);
    let shutdown = {
        let log = log.clone();
        let reload_tx = reload_tx.clone();
        let timeout = args.shutdown_timeout;
        async move {
            let signal = wait_for_signals(&log, &reload_tx).await;
            records::shutting_down(&log, signal);
            let _ = deadline_tx.send(Some(Instant::now() + timeout));
        }
    };
    let deadline = async move {
        loop {
            if let Some(deadline) = *deadline_rx.borrow_and_update() {
                return deadline;
            }
            if deadline_rx.changed().await.is_err() {
                return Instant::now();
            }
        }
    };
    let (deadline_for_actions_tx, deadline_for_actions) = tokio::sync::oneshot::channel();
    let deadline = async move {
        let at = deadline.await;
        let _ = deadline_for_actions_tx.send(at);
        at
    };
    server::serve(listener, state, shutdown, deadline).await;

    // Every anomaly answered 202 gets its finished record, up to the deadline.
    tracker.close();
    let at = deadline_for_actions
        .await
        .unwrap_or_else(|_| Instant::now());
    if tokio::time::timeout_at(at, tracker.wait()).await.is_err() {
        records::shutdown_timed_out(&log, "healing actions");
    }
    let _ = reload_tx.send(ReloadMessage::Stop);
    let _ = tokio::task::spawn_blocking(move || reload_thread.join()).await;
    Ok(())
}

/// Waits for SIGTERM or SIGINT, forwarding each SIGHUP to the reloader meanwhile.
async fn wait_for_signals(log: &Logger, reload: &mpsc::Sender<ReloadMessage>) -> &'static str {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        slog::error!(
            log,
            "cannot install signal handlers; stop the daemon with SIGKILL"
        );
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = hup.recv() => {
                let _ = reload.send(ReloadMessage::Reload { trigger: Trigger::Signal, reply: None });
            }
        }
    }
}
