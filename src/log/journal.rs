//! Lines for the journal: when stderr is the journal (`host::journald` decides, `main` passes
//! the answer to `init`), every line starts with its record's syslog priority, `<N>`
//! (sd-daemon(3)), so `journalctl -p crit` lists the healing actions. Elsewhere lines are
//! unchanged. The audit file never gets a prefix: it is not the journal.

use std::io;

use slog::{Level, OwnedKVList, Record};
use slog_term::{Decorator, RecordDecorator};

/// The `<N>` prefix for `level`: CRIT 2, ERRO 3, WARN 4, INFO 6, DEBG and TRCE 7.
pub fn priority_prefix(level: Level) -> &'static [u8] {
    match level {
        Level::Critical => b"<2>",
        Level::Error => b"<3>",
        Level::Warning => b"<4>",
        Level::Info => b"<6>",
        Level::Debug | Level::Trace => b"<7>",
    }
}

/// The prefix of a stderr line at `level`: its priority when `prioritized` (stderr is the
/// journal), nothing otherwise.
pub fn line_prefix(prioritized: bool, level: Level) -> &'static [u8] {
    if prioritized {
        priority_prefix(level)
    } else {
        b""
    }
}

/// A slog-term decorator that starts each record with its priority prefix when `prioritized`.
pub struct Prioritized<D> {
    pub inner: D,
    pub prioritized: bool,
}

impl<D: Decorator> Decorator for Prioritized<D> {
    fn with_record<F>(&self, record: &Record, values: &OwnedKVList, f: F) -> io::Result<()>
    where
        F: FnOnce(&mut dyn RecordDecorator) -> io::Result<()>,
    {
        self.inner.with_record(record, values, |decorator| {
            decorator.write_all(line_prefix(self.prioritized, record.level()))?;
            f(decorator)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        let prefixes: Vec<&[u8]> = [
            Level::Critical,
            Level::Error,
            Level::Warning,
            Level::Info,
            Level::Debug,
            Level::Trace,
        ]
        .into_iter()
        .map(priority_prefix)
        .collect();
        let expected: [&[u8]; 6] = [b"<2>", b"<3>", b"<4>", b"<6>", b"<7>", b"<7>"];
        assert_eq!(prefixes, expected);
    }
}
