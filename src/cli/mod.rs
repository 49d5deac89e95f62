//! The command line (SPEC §1, §9, §10): `run` (the default), `check`, `send`, `silence`, and the
//! tools for the people who edit the map (`explain`, `schema`, `completions`, `man`), each
//! subcommand's work in a file of its own; `client` is what `send` and `silence` share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod check;
pub mod client;
pub mod completions;
pub mod explain;
pub mod man;
pub mod schema;
pub mod send;
pub mod silence;

use clap::{Args, Parser, Subcommand};

use crate::log::LogFormat;

/// AutoHealer: a host daemon that maps anomalies to corrective workflows.
#[derive(Debug, Parser)]
#[command(name = "autohealer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Words that name a subcommand or ask clap for help, so `run` is not put in front of them.
const NOT_RUN: [&str; 14] = [
    "run",
    "check",
    "send",
    "silence",
    "explain",
    "schema",
    "completions",
    "man",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
    "-v",
];

impl Cli {
    /// Parses `args` (the program name first), with `run` standing in when no subcommand is
    /// named, so a bare `autohealer --config FILE` runs the daemon. Inserting the word, rather
    /// than flattening `run`'s options into the top level, keeps `run`'s environment variables
    /// (`AUTOHEALER_LISTEN`, ...) from being parsed, and failing, for `check` and `send`.
    pub fn parse_from_args<I: IntoIterator<Item = std::ffi::OsString>>(
        args: I,
    ) -> Result<Cli, clap::Error> {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
        let names_subcommand = args
            .get(1)
            .is_some_and(|first| NOT_RUN.iter().any(|word| first == word));
        if !names_subcommand && !args.is_empty() {
            args.insert(1, "run".into());
        }
        Cli::try_parse_from(args)
    }

    /// The subcommand to execute.
    pub fn into_command(self) -> Command {
        self.command
    }
}

/// What `autohealer` was asked to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run(RunArgs),
    /// Validate a reflex map and print a summary; exit 0 when valid, 1 when not.
    Check(CheckArgs),
    /// Post an anomaly to a running daemon (for shell monitors and cron); exit 0 when the daemon
    /// accepted it, 1 when it rejected it or could not be reached.
    Send(SendArgs),
    /// Show, offline, what the map on disk would do with an anomaly: the reflex that matches
    /// and why, the rails that apply, and the exact argv or webhook request; exit 0 when a
    /// reflex matches, 1 when none does or the map is invalid.
    Explain(ExplainArgs),
    /// Print the JSON Schema (draft 2020-12) of reflex_map.yml, for editors and linters.
    Schema,
    /// Print a shell completion script: `source <(autohealer completions bash)`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff): `autohealer man | man -l -`.
    Man(ManArgs),
    /// Silence anomalies for a while (maintenance), list the silences in force, or end one, in
    /// a running daemon; exit 0 when the daemon did it, 1 when it refused or could not be
    /// reached.
    Silence(silence::SilenceArgs),
}

/// `-c, --config FILE`: the reflex map `run` loads and watches, and `explain` consults.
#[derive(Debug, Clone, Args)]
pub struct MapArg {
    /// The reflex map.
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = "AUTOHEALER_CONFIG",
        default_value = "reflex_map.yml"
    )]
    pub config: PathBuf,
}

/// Options of the daemon.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub map: MapArg,
    /// Address to listen on.
    #[arg(
        short,
        long,
        env = "AUTOHEALER_LISTEN",
        default_value = "127.0.0.1:8000"
    )]
    pub listen: SocketAddr,
    /// Log format: `term` for people, `json` for machines (default: term on a terminal, else json).
    #[arg(long, env = "AUTOHEALER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Lowest level logged: critical, error, warning, info, debug or trace.
    #[arg(long, env = "AUTOHEALER_LOG_LEVEL", default_value = "info", value_parser = parse_level)]
    pub log_level: slog::Level,
    /// Also append every healing-action record to FILE as a JSON line.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Keep cooldowns, breakers, pending verifications, the budget, silences and Alertmanager's
    /// duplicates in DIR/state.json, so a restart does not re-arm a flapping remedy (default:
    /// in memory only). The systemd unit passes its StateDirectory.
    #[arg(long, env = "AUTOHEALER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log actions as they would run, but execute no command or webhook.
    #[arg(long)]
    pub dry_run: bool,
    /// Require `Authorization: Bearer <token>` (token read from FILE) on every endpoint but /healthz.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 65536)]
    pub max_body: usize,
    /// How long shutdown waits for in-flight requests and running actions.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::map::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Most connections served at once; when full, the connection whose unfinished request began
    /// first (idle, or still sending) is closed to make room, so a flood of idle or slow clients
    /// cannot lock out local monitors.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long a client may take to send a whole request, header and body (SPEC §8 fixes
    /// 10s; hidden, so tests can observe a cut-off without waiting that long).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::map::parse_duration, hide = true)]
    pub header_read_timeout: Duration,
}

/// Options of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The reflex map to validate (default: $AUTOHEALER_CONFIG, else reflex_map.yml).
    #[arg(env = "AUTOHEALER_CONFIG", default_value = "reflex_map.yml")]
    pub file: PathBuf,
}

/// Options of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The anomaly's name, e.g. nginx.web1.down.
    pub name: String,
    /// Details of the anomaly. A VALUE that parses as JSON is sent as that JSON (5000, true,
    /// null, {"a":1}, "quoted"); any other VALUE is sent as a string.
    #[arg(value_name = "KEY=VALUE", value_parser = send::parse_detail)]
    pub details: Vec<(String, serde_json::Value)>,
    /// The daemon's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000", value_parser = parse_url)]
    pub url: reqwest::Url,
    /// Send `Authorization: Bearer <token>`, with the token read from FILE (whitespace trimmed).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Options of `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The anomaly's name, e.g. nginx.web1.down.
    pub name: String,
    /// Details of the anomaly, as for `send`: a VALUE that parses as JSON is that JSON, any
    /// other VALUE a string.
    #[arg(value_name = "KEY=VALUE", value_parser = send::parse_detail)]
    pub details: Vec<(String, serde_json::Value)>,
    #[command(flatten)]
    pub map: MapArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: completions::Shell,
}

/// Options of `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Instead of printing autohealer(1), write it and one page per subcommand
    /// (autohealer-run(1), ...) into DIR, as a package installs them.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

fn parse_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text)
        .map_err(|err| format!("{err} (write e.g. http://127.0.0.1:8000)"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("the scheme must be http or https, not {other}")),
    }
}

fn parse_level(text: &str) -> Result<slog::Level, String> {
    match text.to_ascii_lowercase().as_str() {
        "critical" | "crit" => Ok(slog::Level::Critical),
        "error" | "erro" => Ok(slog::Level::Error),
        "warning" | "warn" => Ok(slog::Level::Warning),
        "info" => Ok(slog::Level::Info),
        "debug" => Ok(slog::Level::Debug),
        "trace" => Ok(slog::Level::Trace),
        _ => Err("expected critical, error, warning, info, debug or trace".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: impl IntoIterator<Item = &'static str>) -> Result<Cli, clap::Error> {
        Cli::parse_from_args(args.into_iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn run_is_the_default_subcommand() {
        let cli = parse(["autohealer", "--config", "x.yml", "--dry-run"]).unwrap();
        match cli.into_command() {
            Command::Run(args) => {
                assert_eq!(args.map.config, PathBuf::from("x.yml"));
                assert!(args.dry_run);
                assert_eq!(args.shutdown_timeout, Duration::from_secs(30));
                // SPEC §6: a client has 10 s to send its header.
                assert_eq!(args.header_read_timeout, crate::http::HEADER_READ_TIMEOUT);
                assert_eq!(args.max_connections, 1024);
            }
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn check_takes_an_optional_file() {
        let cli = parse(["autohealer", "check"]).unwrap();
        match cli.into_command() {
            Command::Check(args) => assert_eq!(args.file, PathBuf::from("reflex_map.yml")),
            other => panic!("expected check, got {other:?}"),
        }
    }

    #[test]
    fn send_takes_a_name_and_details() {
        let cli = parse([
            "autohealer",
            "send",
            "disk.root.full",
            "used=0.93",
            "mount=/",
            "--url",
            "http://10.0.0.1:9000",
        ])
        .unwrap();
        match cli.into_command() {
            Command::Send(args) => {
                assert_eq!(args.name, "disk.root.full");
                assert_eq!(
                    args.details,
                    [
                        ("used".to_string(), serde_json::json!(0.93)),
                        ("mount".to_string(), serde_json::json!("/")),
                    ]
                );
                assert_eq!(args.url.as_str(), "http://10.0.0.1:9000/");
                assert_eq!(args.token_file, None);
            }
            other => panic!("expected send, got {other:?}"),
        }
        let cli = parse(["autohealer", "send", "a"]).unwrap();
        match cli.into_command() {
            Command::Send(args) => assert_eq!(args.url.as_str(), "http://127.0.0.1:8000/"),
            other => panic!("expected send, got {other:?}"),
        }
        for bad in [
            &["autohealer", "send"][..],
            &["autohealer", "send", "a", "novalue"],
            &["autohealer", "send", "a", "--url", "ftp://x"],
        ] {
            assert!(parse(bad.iter().copied()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn run_is_inserted_only_before_options() {
        assert!(
            parse(["autohealer", "--help"]).is_err(),
            "help is clap's own exit"
        );
        assert!(matches!(
            parse(["autohealer", "run", "-c", "m.yml"])
                .unwrap()
                .into_command(),
            Command::Run(_)
        ));
    }

    #[test]
    fn every_subcommand_is_named_in_not_run() {
        use clap::CommandFactory;
        // Otherwise `autohealer NAME` would parse as `autohealer run NAME` and fail.
        for sub in Cli::command().get_subcommands() {
            assert!(NOT_RUN.contains(&sub.get_name()), "{}", sub.get_name());
        }
        assert!(matches!(
            parse(["autohealer", "completions", "zsh"])
                .unwrap()
                .into_command(),
            Command::Completions(CompletionsArgs {
                shell: completions::Shell::Zsh
            })
        ));
        assert!(matches!(
            parse(["autohealer", "man"]).unwrap().into_command(),
            Command::Man(ManArgs { dir: None })
        ));
    }

    #[test]
    fn silence_takes_an_action_and_the_clients_options_anywhere() {
        let cli = parse([
            "autohealer",
            "silence",
            "add",
            "nginx.**",
            "--for",
            "2h",
            "--comment",
            "upgrade",
            "--url",
            "http://h:9/",
        ])
        .unwrap();
        match cli.into_command() {
            Command::Silence(args) => {
                assert_eq!(args.client.url.as_str(), "http://h:9/");
                match args.action {
                    silence::SilenceAction::Add {
                        matcher,
                        duration,
                        comment,
                    } => {
                        assert_eq!(matcher, "nginx.**");
                        assert_eq!(duration, "2h");
                        assert_eq!(comment.as_deref(), Some("upgrade"));
                    }
                    other => panic!("expected add, got {other:?}"),
                }
            }
            other => panic!("expected silence, got {other:?}"),
        }
        let cli = parse(["autohealer", "silence", "--token-file", "t", "list"]).unwrap();
        match cli.into_command() {
            Command::Silence(args) => {
                assert_eq!(args.client.token_file, Some(PathBuf::from("t")));
                assert!(matches!(args.action, silence::SilenceAction::List));
            }
            other => panic!("expected silence, got {other:?}"),
        }
        for bad in [
            &["autohealer", "silence"][..],
            &["autohealer", "silence", "add", "a"],
            &["autohealer", "silence", "expire"],
        ] {
            assert!(parse(bad.iter().copied()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn levels_parse() {
        assert_eq!(parse_level("WARN").unwrap(), slog::Level::Warning);
        assert!(parse_level("loud").is_err());
    }
}
