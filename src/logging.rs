//! The slog pipeline (SPEC §5): term or JSON to stderr, behind an async drain that blocks rather
//! than drops, with the level filter in front of it so filtered records never cross the channel.

use std::io::{IsTerminal, LineWriter};

use slog::{o, Drain, Logger};

use crate::cli::LogFormat;

/// Records the channel holds before callers block: large enough to absorb bursts without
/// blocking, small enough that the preallocated ring stays well under a MiB of resident memory.
const LOG_CHANNEL_RECORDS: usize = 4096;

/// Keeps the logging thread alive; dropping it flushes every queued record and joins the thread.
pub struct LogGuard(#[allow(dead_code)] slog_async::AsyncGuard);

/// Builds the daemon's root logger. `format` defaults to term on a terminal and JSON otherwise.
pub fn init(format: Option<LogFormat>, level: slog::Level) -> (Logger, LogGuard) {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Term
    } else {
        LogFormat::Json
    });
    match format {
        LogFormat::Term => {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            let drain = slog_term::FullFormat::new(decorator).build().ignore_res();
            finish(drain, level)
        }
        LogFormat::Json => {
            // LineWriter turns each record into one write(2), so concurrent writers never interleave.
            let drain = slog_json::Json::new(LineWriter::new(std::io::stderr()))
                .add_default_keys()
                .build()
                .ignore_res();
            finish(drain, level)
        }
    }
}

fn finish<D>(drain: D, level: slog::Level) -> (Logger, LogGuard)
where
    D: Drain<Ok = (), Err = slog::Never> + Send + 'static,
{
    let (async_drain, guard) = slog_async::Async::new(drain)
        .chan_size(LOG_CHANNEL_RECORDS)
        .overflow_strategy(slog_async::OverflowStrategy::Block)
        .thread_name("autohealer-log".into())
        .build_with_guard();
    let drain = slog::LevelFilter::new(async_drain, level).ignore_res();
    (Logger::root(drain, o!()), LogGuard(guard))
}
