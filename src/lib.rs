//! AutoHealer: a host daemon that acts as a machine's immune system.
//!
//! Layout, in dependency order: each module may use the ones listed before it, never those
//! after (`docs/architecture.md` draws the graph and the paths of an anomaly and of a save).
//! - `anomaly`: what a monitor sends — the name, its `details`, where it came from.
//! - `map`: `reflex_map.yml` — schema, `compile` into a `ReflexMap`, matcher, templates, and
//!   `load` with its checks; the `MapHandle` every reader loads the map in force from.
//! - `actions`: what a dispatched workflow does (log, exec, webhook) and how it ended.
//! - `rails`: the safety rails that hold an action back (cooldown, in-flight, breaker, budget,
//!   verification, silences), and the state file that keeps them across restarts.
//! - `metrics`: the Prometheus registry.
//! - `log`: one function per log record (`log::records`), the JSON and term formats, the
//!   queue to stderr and the audit file.
//! - `auth`: the bearer token file, for the HTTP front, `send` and the reloader.
//! - `host`: the service manager — systemd's notify protocol, socket activation, and whether
//!   stderr is the journal.
//! - `dispatch`: one snapshot of the map → match → rails → action; the anomaly answer and the
//!   history of recent actions.
//! - `reload`: the `Reloader`, sole writer of the map handle, and the file watcher.
//! - `http`: the API — accept loop, connection slots, routes, Alertmanager's webhook.
//! - `cli`: the command line: `check`, `send`, `silence` (with `client`, what the two share),
//!   `explain`, `schema`, `completions`, `man`.
//! - `app`: the daemon's life — startup order, signals, shutdown order.
//!
//! The binary (`main.rs`) only parses the command line and maps errors to exit codes; the library
//! exists so benchmarks and fuzz targets can reach the hot functions.

pub mod actions;
pub mod anomaly;
pub mod app;
pub mod auth;
pub mod cli;
pub mod dispatch;
pub mod host;
pub mod http;
pub mod log;
pub mod map;
pub mod metrics;
pub mod rails;
pub mod reload;
