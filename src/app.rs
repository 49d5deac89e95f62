//! The daemon's life: startup order, signal handling, and shutdown order.
//!
//! Startup: load the map and the token (fail fast, exit 78) → bind, or take the socket systemd
//! passed → start the reloader and watcher → restore the state file (`--state-dir`) and start
//! the task that keeps it → `READY=1` and the watchdog → serve.
//! Shutdown: `STOPPING=1` → stop accepting → drain connections → wait for running actions →
//! write the state a last time → stop the reloader; the caller then drops the log guard, which
//! flushes every record.

use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use slog::Logger;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{TokenError, TokenFile};
use crate::cli::RunArgs;
use crate::dispatch::Dispatcher;
use crate::host::systemd::{self, HostEnv};
use crate::http::{self, AlertReceiver, ServerState, ALERT_MEMORY_ENTRIES};
use crate::log::records::{self, Trigger};
use crate::map::{self, LoadError, LoadedMap};
use crate::metrics;
use crate::rails::state::{Persisted, Restored, StateFile, Within, SAVE_INTERVAL};
use crate::reload::{ReloadMessage, Reloader};

/// After the shutdown deadline, how long cancelled actions get to kill their processes and
/// write their finished records.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Why the daemon stopped with a failure; `main` maps it to an exit code.
#[derive(Debug)]
pub enum AppError {
    /// The map is missing or invalid at startup (exit 78, so systemd does not restart-loop).
    Config(LoadError),
    /// The token file is unreadable or empty at startup: configuration too, so exit 78.
    Token(TokenError),
    /// Anything else (exit 1).
    Other(anyhow::Error),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Config(err) => write!(f, "{err}"),
            AppError::Token(err) => write!(f, "{err}"),
            AppError::Other(err) => write!(f, "{err:#}"),
        }
    }
}

impl From<anyhow::Error> for AppError {
    fn from(err: anyhow::Error) -> Self {
        AppError::Other(err)
    }
}

/// Runs the daemon until SIGTERM or SIGINT, with what systemd handed the process in `host`.
pub fn run(args: RunArgs, log: Logger, host: HostEnv) -> Result<(), AppError> {
    let initial = map::load(&args.map.config, 1).map_err(AppError::Config)?;
    let token = match &args.token_file {
        Some(path) => {
            let token = TokenFile::load(path).map_err(AppError::Token)?;
            if let Some(mode) = token.readable_by_others() {
                records::token_file_exposed(&log, path, mode);
            }
            Some(Arc::new(token))
        }
        None => None,
    };
    // Before any action can run: exec children never see where the token came from.
    crate::actions::withhold_variables(
        token
            .as_deref()
            .map(TokenFile::revealing_variables)
            .unwrap_or_default(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("autohealer-worker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, log, host, initial, token))
}

/// The socket systemd passed (socket activation), else `--listen` bound here; true if passed.
async fn open_listener(
    args: &RunArgs,
    passed: Result<Option<std::os::fd::OwnedFd>, String>,
) -> anyhow::Result<(TcpListener, bool)> {
    match passed.map_err(anyhow::Error::msg)? {
        Some(fd) => {
            let listener = systemd::tcp_listener(fd)
                .and_then(TcpListener::from_std)
                .context("cannot serve on the socket systemd passed")?;
            Ok((listener, true))
        }
        None => {
            let listener = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            Ok((listener, false))
        }
    }
}

async fn serve(
    args: RunArgs,
    log: Logger,
    host: HostEnv,
    initial: LoadedMap,
    token: Option<Arc<TokenFile>>,
) -> Result<(), AppError> {
    // Before READY=1 and the `listening` record: from then on systemd (`systemctl reload`) or a
    // test may send SIGHUP, whose default action would kill the daemon.
    let signals = install_signals();
    let HostEnv {
        notifier,
        notify_error,
        watchdog,
        listener,
    } = host;
    if let Some(error) = notify_error {
        records::notify_unavailable(&log, &error);
    }
    let (listener, activated) = open_listener(&args, listener).await?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;

    records::map_loaded(&log, &initial, Trigger::Startup);
    let map = Arc::new(ArcSwap::from_pointee(initial));
    let (reload_tx, reload_rx) = mpsc::channel();
    let mut reloader = Reloader::new(args.map.config.clone(), map.clone(), log.clone())
        .with_notifier(notifier.clone())
        .with_token(token.clone());
    // Without a watcher the daemon still serves and reloads on SIGHUP and POST /-/reload.
    if let Err(err) = reloader.start_watching(reload_tx.clone()) {
        records::watcher_failed(&log, &err.to_string());
    }
    let reload_thread = reloader
        .spawn(reload_rx)
        .context("cannot start the reload thread")?;

    let tracker = TaskTracker::new();
    let cancel_actions = CancellationToken::new();
    let dispatcher = Dispatcher::new(
        map.clone(),
        log.clone(),
        tracker.clone(),
        cancel_actions.clone(),
        args.dry_run,
    );
    let budget = dispatcher.clone();
    metrics::global().watch_budget(move || budget.budget_remaining());
    let silences = dispatcher.silences().clone();
    metrics::global().watch_silences(move || silences.active_count(Instant::now()));
    let state = Arc::new(ServerState {
        dispatcher,
        map,
        reload: reload_tx.clone(),
        max_body: args.max_body,
        read_timeout: args.header_read_timeout,
        max_connections: args.max_connections as usize,
        token: token.clone(),
        log: log.clone(),
        alerts: AlertReceiver::new(ALERT_MEMORY_ENTRIES),
    });
    // Before the first request and the sweeper's first look: what the last run remembered.
    let state_file = restore_state(args.state_dir.as_deref(), &state, &log);
    let stop_saving = CancellationToken::new();
    let saver = state_file
        .clone()
        .map(|file| tokio::spawn(keep_state(file, log.clone(), stop_saving.clone())));
    // Verification windows are judged and silences ended when they end, with no request
    // needed (SPEC §9).
    let sweeper = state.dispatcher.spawn_sweeper();
    records::listening(&log, addr, &args.map.config, activated);
    if token.is_none() && !addr.ip().is_loopback() {
        records::listening_without_token(&log, addr);
    }
    // Map loaded, socket bound, reloader running: ready (SPEC §6).
    notifier.ready(&state.map.load().status_line(None));
    let watchdog = watchdog.filter(|_| notifier.is_enabled()).map(|timeout| {
        tokio::spawn(systemd::run_watchdog(
            notifier.clone(),
            timeout,
            log.clone(),
        ))
    });

    // The deadline starts when the stop signal arrives and bounds the whole drain.
    let (deadline_tx, mut deadline_rx) = watch::channel(None::<Instant>);
    let shutdown = {
        let log = log.clone();
        let reload_tx = reload_tx.clone();
        let timeout = args.shutdown_timeout;
        async move {
            let signal = wait_for_signals(&log, &reload_tx, signals).await;
            records::shutting_down(&log, signal);
            notifier.stopping(&format!("stopping on {signal}"));
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
    let dispatcher = state.dispatcher.clone();
    http::serve(listener, state, shutdown, deadline).await;
    // A request still in flight past the drain deadline must not start an action now.
    dispatcher.stop_accepting();

    // Every anomaly answered 202 gets its finished record: running actions may finish until the
    // shutdown deadline, then they are cancelled and recorded as failed.
    tracker.close();
    let at = deadline_for_actions
        .await
        .unwrap_or_else(|_| Instant::now());
    if tokio::time::timeout_at(at, tracker.wait()).await.is_err() {
        // Past the deadline: kill what is left; each still writes its `failed` record.
        records::shutdown_timed_out(&log, "healing actions");
        cancel_actions.cancel();
        if tokio::time::timeout(CANCEL_GRACE, tracker.wait())
            .await
            .is_err()
        {
            records::shutdown_timed_out(&log, "cancelled healing actions");
        }
    }
    // The actions' last word (breakers, windows) is in: write the state once more.
    stop_saving.cancel();
    if let Some(saver) = saver {
        let _ = saver.await;
    }
    let _ = reload_tx.send(ReloadMessage::Stop);
    let _ = tokio::task::spawn_blocking(move || reload_thread.join()).await;
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    sweeper.abort();
    Ok(())
}

/// The state file in `dir`, restored into `state`; `None` without a state dir. Nothing here
/// stops the daemon: a file it cannot use is a WARN and a fresh start (SPEC §9).
fn restore_state(
    dir: Option<&Path>,
    state: &Arc<ServerState>,
    log: &Logger,
) -> Option<Arc<StateFile>> {
    let Some(dir) = dir else {
        records::state_in_memory(log);
        return None;
    };
    // Every kind of state the daemon keeps across restarts: one entry each.
    let parts: Vec<Arc<dyn Persisted>> = vec![
        Arc::new(state.dispatcher.rails().clone()),
        Arc::new(state.dispatcher.silences().clone()),
        // Alertmanager's duplicate memory lives in the server's state.
        Arc::new(Within::new(state.clone(), |state| &state.alerts)),
    ];
    // A run outside systemd may name a directory not made yet; if this fails, the first write
    // says why.
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    let file = StateFile::new(dir.to_path_buf(), parts);
    let path = file.path();
    let restored_from = match file.restore() {
        Restored::Nothing => None,
        Restored::File {
            written_at,
            discarded,
        } => {
            for (part, reason) in &discarded {
                records::state_discarded(log, &path, Some(part), reason);
            }
            Some(written_at)
        }
        Restored::Discarded(reason) => {
            records::state_discarded(log, &path, None, &reason);
            None
        }
    };
    records::state_on_disk(log, &path, restored_from);
    Some(Arc::new(file))
}

/// Writes the state at most once every `SAVE_INTERVAL` while it changes, and once more when
/// `stop` is cancelled. A write that fails (a read-only or full disk) is said once and retried
/// every interval until one succeeds; the daemon serves on meanwhile.
async fn keep_state(file: Arc<StateFile>, log: Logger, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(SAVE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = false;
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = ticks.tick() => false,
            () = stop.cancelled() => true,
        };
        pending |= file.take_changed();
        if pending {
            // File writes and fsyncs block: off the async workers.
            let writer = file.clone();
            let written = tokio::task::spawn_blocking(move || writer.save())
                .await
                .unwrap_or_else(|panicked| Err(std::io::Error::other(panicked.to_string())));
            match written {
                Ok(_) => {
                    pending = false;
                    if std::mem::take(&mut failing) {
                        records::state_write_recovered(&log, &file.path());
                    }
                }
                Err(err) => {
                    if !std::mem::replace(&mut failing, true) {
                        records::state_write_failed(&log, &file.path(), &err);
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// The stop and reload signals' streams; from their creation on, none of them kills the daemon.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

fn install_signals() -> Option<Signals> {
    Some(Signals {
        term: signal(SignalKind::terminate()).ok()?,
        int: signal(SignalKind::interrupt()).ok()?,
        hup: signal(SignalKind::hangup()).ok()?,
    })
}

/// Waits for SIGTERM or SIGINT, forwarding each SIGHUP to the reloader meanwhile.
async fn wait_for_signals(
    log: &Logger,
    reload: &mpsc::Sender<ReloadMessage>,
    signals: Option<Signals>,
) -> &'static str {
    let Some(Signals {
        mut term,
        mut int,
        mut hup,
    }) = signals
    else {
        records::signals_unavailable(log);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::value::RawValue;

    use super::*;
    use crate::rails::state::{Changes, Clock};

    /// A part that counts how often it is written.
    #[derive(Default)]
    struct Counted {
        changes: Changes,
        saves: AtomicUsize,
    }

    impl Persisted for Counted {
        fn name(&self) -> &'static str {
            "counted"
        }
        fn take_changed(&self) -> bool {
            self.changes.take()
        }
        fn save(&self, _clock: &Clock) -> serde_json::Result<Box<RawValue>> {
            self.saves.fetch_add(1, Ordering::SeqCst);
            serde_json::value::to_raw_value(&0)
        }
        fn restore(&self, _saved: &RawValue, _clock: &Clock) -> Result<(), String> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_state_is_written_at_most_once_a_second_while_it_changes_and_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let part = Arc::new(Counted::default());
        let file = Arc::new(StateFile::new(dir.path().to_path_buf(), vec![part.clone()]));
        let stop = CancellationToken::new();
        let log = Logger::root(slog::Discard, slog::o!());
        let task = tokio::spawn(keep_state(file.clone(), log, stop.clone()));
        let saves = || part.saves.load(Ordering::SeqCst);
        let start = Instant::now();
        // Nothing changes: nothing is written.
        tokio::time::sleep_until(start + Duration::from_millis(2500)).await;
        assert_eq!(saves(), 0);
        // A change every 100 ms for two seconds: one write a second.
        for step in 1..=20 {
            part.changes.mark();
            tokio::time::sleep_until(start + Duration::from_millis(2500 + 100 * step)).await;
        }
        assert!((1..=2).contains(&saves()), "{} writes", saves());
        let before_stop = saves();
        // Stopping writes what changed since the last write, at once.
        part.changes.mark();
        stop.cancel();
        task.await.unwrap();
        assert_eq!(saves(), before_stop + 1);
        assert!(file.path().exists());
    }
}
