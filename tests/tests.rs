//! Integration tests: the real binary, real HTTP on loopback, real files and file-system events.

mod util;

mod actions;
mod alertmanager;
mod alertmanager_real;
mod autonomy;
mod brakes;
mod cli;
mod http_api;
mod log_records;
mod metrics;
mod reload;
mod security;
mod send;
mod systemd;
