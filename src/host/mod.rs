//! The host the daemon runs on: what the service manager hands it and expects of it.
//! `systemd` speaks the notify protocol and takes a socket-activated listener; `journald`
//! tells whether stderr is the journal.

pub mod journald;
pub mod systemd;
