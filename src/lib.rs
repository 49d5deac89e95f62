//! AutoHealer: a host daemon that acts as a machine's immune system.
//!
//! Layout:
//! - `cli` parses the command line; `app` runs the daemon (startup, signals, shutdown order);
//!   `check` validates a map from the command line; `send` posts an anomaly to a running daemon.
//! - `config` parses and compiles `reflex_map.yml` into a `ReflexMap`, with `matcher` for names
//!   and patterns and `template` for `{{...}}` placeholders.
//! - `reload` owns the live map (the sole `ArcSwap` writer) and its file watcher.
//! - `server` is the HTTP API, with `auth` for its bearer token, `connections` for its
//!   connection cap and `alertmanager` for Alertmanager's webhook; `dispatch` turns an anomaly
//!   (its `details` kept as text) into an action, through the safety
//!   `rails`, and keeps the `history`; `actions` holds one module per kind of action.
//! - `records` writes the log records and bumps `metrics`; `logging` builds the slog drain,
//!   `json_log` formats JSON lines and `log_queue` carries them to the log thread; `systemd` speaks the
//!   notify protocol and takes a socket-activated listener.
//!
//! The binary (`main.rs`) only parses the command line and maps errors to exit codes; the library
//! exists so benchmarks can reach the hot functions.

pub mod actions;
pub mod alertmanager;
pub mod app;
pub mod auth;
pub mod check;
pub mod cli;
pub mod config;
pub mod connections;
pub mod details;
pub mod dispatch;
pub mod history;
pub mod json_log;
pub mod log_queue;
pub mod logging;
pub mod matcher;
pub mod metrics;
pub mod rails;
pub mod records;
pub mod reload;
pub mod send;
pub mod server;
pub mod systemd;
pub mod template;
