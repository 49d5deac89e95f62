//! AutoHealer: a host daemon that acts as a machine's immune system.
//!
//! Layout: `cli` parses the command line; `app` runs the daemon (startup, signals, shutdown);
//! `config` parses and compiles `reflex_map.yml`, with `matcher` for names and patterns; `reload`
//! owns the live map and its watcher; `server` is the HTTP API, with `alertmanager` for
//! Alertmanager's webhook; `dispatch` turns an anomaly into an action from `actions`; `records`
//! writes the log records and bumps `metrics`; `logging` builds the slog drain; `send` is the
//! client that posts an anomaly to a running daemon.

mod actions;
mod alertmanager;
mod app;
mod check;
mod cli;
mod config;
mod dispatch;
mod logging;
mod matcher;
mod metrics;
mod records;
mod reload;
mod send;
mod server;

use std::process::ExitCode;

use clap::Parser;

/// Exit code for a missing or invalid config at startup (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // clap exits with 2 on a usage error.
    match cli::Cli::parse().into_command() {
        cli::Command::Run(args) => {
            let (log, guard) = logging::init(args.log_format, args.log_level);
            let result = app::run(args, log);
            drop(guard); // flush every record before the last words
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("autohealer: cannot run: {err}");
                    match err {
                        app::AppError::Config(_) => ExitCode::from(EXIT_CONFIG),
                        app::AppError::Other(_) => ExitCode::FAILURE,
                    }
                }
            }
        }
        cli::Command::Check(args) => {
            if check::run(&args) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        cli::Command::Send(args) => match send::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("autohealer: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}
