//! The `autohealer` binary: command line in, exit code out; everything else is in the library.

use std::process::ExitCode;

use autohealer::cli::{self, check, send, silence};
use autohealer::host::systemd;
use autohealer::{app, log};

/// Exit code for a missing or invalid config at startup (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // clap exits with 2 on a usage error (0 for --help and --version).
    let cli = cli::Cli::parse_from_args(std::env::args_os()).unwrap_or_else(|err| err.exit());
    match cli.into_command() {
        cli::Command::Run(args) => {
            // SAFETY: no thread exists yet (the log drain starts its own just below).
            let host = unsafe { systemd::HostEnv::take() };
            let (log, guard) =
                match log::init(args.log_format, args.log_level, args.audit_log.as_deref()) {
                    Ok(logging) => logging,
                    Err(err) => {
                        eprintln!("autohealer: cannot run: {err}");
                        return ExitCode::FAILURE;
                    }
                };
            let result = app::run(args, log, host);
            drop(guard); // flush every record before the last words
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("autohealer: cannot run: {err}");
                    match err {
                        app::AppError::Config(_) | app::AppError::Token(_) => {
                            ExitCode::from(EXIT_CONFIG)
                        }
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
        cli::Command::Send(args) => client_exit(send::run(&args)),
        cli::Command::Silence(args) => client_exit(silence::run(&args)),
    }
}

/// The exit code of a subcommand that asks a running daemon: 0 when it did, 1 (with the
/// reason on stderr) when it refused or could not be reached.
fn client_exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("autohealer: {err:#}");
            ExitCode::FAILURE
        }
    }
}
