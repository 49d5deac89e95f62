//! The term format's guard against forged lines (SPEC §8): a slog-term decorator that escapes
//! control characters in everything a record carries, so a caller's text, an Alertmanager
//! `startsAt` or a command's output can never start a line of its own, move the cursor or
//! recolour the terminal. (The JSON format escapes them already.)
//!
//! slog-term announces each part of a line to its decorator (`start_msg`, `start_key`,
//! `start_value`, …) before writing it; the only part it writes itself rather than from the
//! record is the whitespace between fields and the line's end, which it announces with
//! `start_whitespace`. So text written after `start_whitespace` passes as is, and all other text
//! is escaped, whichever value or serializer produced it.

use std::io::{self, Write};

use slog::{OwnedKVList, Record};
use slog_term::{Decorator, RecordDecorator};

/// Wraps a slog-term decorator (colours, the terminal) and escapes what records carry.
pub struct Escaping<D>(pub D);

impl<D: Decorator> Decorator for Escaping<D> {
    fn with_record<F>(&self, record: &Record, values: &OwnedKVList, f: F) -> io::Result<()>
    where
        F: FnOnce(&mut dyn RecordDecorator) -> io::Result<()>,
    {
        self.0.with_record(record, values, |inner| {
            f(&mut EscapingRecord {
                inner,
                verbatim: false,
            })
        })
    }
}

/// The per-record side of `Escaping`.
struct EscapingRecord<'a> {
    inner: &'a mut dyn RecordDecorator,
    /// Set by `start_whitespace` (slog-term's own spaces and newline), cleared by every other
    /// part, which may hold outside text.
    verbatim: bool,
}

impl Write for EscapingRecord<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.verbatim || !has_control(buf) {
            self.inner.write_all(buf)?;
        } else {
            // One write of the escaped text: the terminal decorator writes unbuffered.
            let mut escaped = Vec::with_capacity(buf.len() + 16);
            escape_controls(&mut escaped, buf);
            self.inner.write_all(&escaped)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Forwards a `start_*` call and says whether the text that follows is escaped.
macro_rules! parts {
    ($($part:ident: $verbatim:expr),* $(,)?) => {
        $(fn $part(&mut self) -> io::Result<()> {
            self.verbatim = $verbatim;
            self.inner.$part()
        })*
    };
}

impl RecordDecorator for EscapingRecord<'_> {
    fn reset(&mut self) -> io::Result<()> {
        self.inner.reset()
    }

    parts!(
        start_whitespace: true,
        start_msg: false,
        start_timestamp: false,
        start_level: false,
        start_comma: false,
        start_key: false,
        start_value: false,
        start_location: false,
        start_separator: false,
    );
}

/// The second byte of a C1 control character (U+0080–U+009F) after its UTF-8 lead byte 0xC2;
/// some terminals act on them as they do on ESC sequences.
const C1_LEAD: u8 = 0xc2;

/// Whether `bytes` holds a C0 control character, DEL, or a C1 control character.
fn has_control(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(at, &byte)| {
        byte < 0x20 || byte == 0x7f || (byte == C1_LEAD && is_c1_second(bytes.get(at + 1)))
    })
}

fn is_c1_second(byte: Option<&u8>) -> bool {
    byte.is_some_and(|byte| (0x80..=0x9f).contains(byte))
}

/// Appends `bytes` to `out` with each control character written as JSON writes it (`\n`, `\t`,
/// `\u001b`, …), the form the term format already shows `details` in.
fn escape_controls(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        let (code, len) = match byte {
            0..=0x1f | 0x7f => (byte, 1),
            C1_LEAD if is_c1_second(bytes.get(at + 1)) => (bytes[at + 1], 2),
            _ => {
                out.push(byte);
                at += 1;
                continue;
            }
        };
        match code {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(code >> 4)],
                HEX[usize::from(code & 0xf)],
            ]),
        }
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use slog::{crit, o, Drain, Logger};

    use super::super::captured::Captured;
    use super::*;

    /// What the term format writes for the records `log` writes, escaped or not.
    fn written(escaping: bool, log: impl FnOnce(&Logger)) -> String {
        let out = Captured::default();
        let plain = slog_term::PlainSyncDecorator::new(out.clone());
        let fixed_time = |w: &mut dyn Write| write!(w, "Dec 03 08:44:28.037");
        let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = if escaping {
            Box::new(
                slog_term::FullFormat::new(Escaping(plain))
                    .use_custom_timestamp(fixed_time)
                    .build()
                    .fuse(),
            )
        } else {
            Box::new(
                slog_term::FullFormat::new(plain)
                    .use_custom_timestamp(fixed_time)
                    .build()
                    .fuse(),
            )
        };
        log(&Logger::root(
            Mutex::new(drain).fuse(),
            o!("daemon" => "autohealer"),
        ));
        out.text()
    }

    #[test]
    fn control_characters_in_values_never_start_a_line() {
        let text = written(true, |log| {
            crit!(log, "healing action finished";
                "output" => "one\nDec 03 08:44:29.000 CRIT forged\r\x1b[31mred\u{85}\u{7f}\t✓",
                "starts_at" => %format_args!("2024\n{}", "INFO forged"),
                "details" => slog::Serde(serde_json::json!({"x": "a\nb"})),
            );
        });
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
        assert!(
            text.contains(
                r"output: one\nDec 03 08:44:29.000 CRIT forged\r\u001b[31mred\u0085\u007f\t✓"
            ),
            "{text:?}"
        );
        assert!(text.contains(r"starts_at: 2024\nINFO forged"), "{text:?}");
        assert!(text.contains(r#"details: {"x":"a\nb"}"#), "{text:?}");
    }

    #[test]
    fn records_without_control_characters_are_written_as_slog_term_writes_them() {
        let record = |log: &Logger| {
            crit!(log, "healing action triggered";
                "anomaly" => "api_latency.coinbase.high", "n" => 5000, "é" => "ü ✓ \\n",
                "details" => slog::Serde(serde_json::json!({"region": "us-east-1"})));
        };
        assert_eq!(written(true, record), written(false, record));
    }

    #[test]
    fn every_control_character_is_escaped_and_nothing_else_is() {
        for code in (0u32..0x20).chain(0x7f..=0x9f) {
            let control = char::from_u32(code).unwrap().to_string();
            let mut out = Vec::new();
            escape_controls(&mut out, control.as_bytes());
            assert!(has_control(control.as_bytes()), "{code:#x}");
            let expected = match code {
                0x0a => r"\n".to_string(),
                0x0d => r"\r".to_string(),
                0x09 => r"\t".to_string(),
                _ => format!("\\u{code:04x}"),
            };
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{code:#x}");
        }
        for text in ["plain", "é ü ✓ 𝄞 \u{a0} \u{2028}", "\\n", "\u{100}\u{c280}"] {
            assert!(!has_control(text.as_bytes()), "{text:?}");
            let mut out = Vec::new();
            escape_controls(&mut out, text.as_bytes());
            assert_eq!(out, text.as_bytes());
        }
    }
}
