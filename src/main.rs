//! The `autohealer` binary: command line in, exit code out; everything else is in the library.

use std::io::Write;
use std::process::ExitCode;

use autohealer::cli::{self, check, completions, explain, man, schema, send, silence};
use autohealer::host::{journald, systemd};
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
            // Under systemd, stderr is the journal: every line, the last words below included,
            // carries its priority, so `journalctl -p err` shows why the daemon stopped.
            let journal = journald::stderr_is_journal();
            let error_prefix = if journal {
                String::from_utf8_lossy(log::journal::priority_prefix(slog::Level::Error))
            } else {
                "".into()
            };
            let logging = log::init(
                args.log_format,
                args.log_level,
                args.audit_log.as_deref(),
                journal,
            );
            let (log, guard) = match logging {
                Ok(logging) => logging,
                Err(err) => {
                    eprintln!("{error_prefix}autohealer: cannot run: {err}");
                    return ExitCode::FAILURE;
                }
            };
            let result = app::run(args, log, host);
            drop(guard); // flush every record before the last words
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("{error_prefix}autohealer: cannot run: {err}");
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
        cli::Command::Explain(args) => match explain::run(&args) {
            explain::Verdict::Matched => ExitCode::SUCCESS,
            explain::Verdict::Unmatched => ExitCode::FAILURE,
            explain::Verdict::Usage => ExitCode::from(2),
        },
        cli::Command::Schema => print(schema::text().as_bytes()),
        cli::Command::Completions(args) => print(&completions::script(args.shell)),
        cli::Command::Man(args) => match args.dir {
            None => print(&man::page()),
            Some(dir) => match man::write_all(&dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("autohealer: {err}");
                    ExitCode::FAILURE
                }
            },
        },
    }
}

/// Writes `text` to stdout; a closed pipe or a full disk is an error message, not a panic.
fn print(text: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("autohealer: cannot write to stdout: {err}");
            ExitCode::FAILURE
        }
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
