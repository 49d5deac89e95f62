//! Integration tests: the real binary, real HTTP on loopback, real files and file-system events.

mod util;

mod actions;
mod alertmanager;
mod alertmanager_real;
mod autonomy;
mod brakes;
mod cli;
mod completions;
mod exec_hardening;
mod explain;
mod fault_injection;
mod hostile_maps;
mod http_api;
mod journald;
mod log_faults;
mod log_records;
mod metrics;
mod reload;
mod schema;
mod security;
mod send;
mod slow_clients;
mod systemd;
