//! The JSON form of a log record (SPEC §5): one object per line, `msg`, `level` and `ts` first,
//! then the logger's keys, then the record's, the layout slog-json writes.
//!
//! Written by hand rather than through slog-json, which sends every key through serde's map
//! serializer and every string through serde_json's escaper: formatting the two records of a
//! `POST /anomaly` cost about as much as the rest of the request (issue 5, callgrind). Here a
//! key is a few byte copies, a string without characters to escape is one copy, and a line is
//! built in a buffer each thread keeps, so formatting does not allocate.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use slog::{Key, OwnedKVList, Record, KV};

/// Capacity a thread's line buffer keeps between records; a larger record's is released.
const RETAINED_LINE_BYTES: usize = 16 * 1024;

/// Room made in the line before a record is written, so that the appends of its fields find
/// it there: a healing-action record is about 300 bytes.
const RECORD_BYTES: usize = 512;

thread_local! {
    static LINE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// The second the thread last wrote a timestamp in, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// Formats `record` as one JSON object followed by a newline and hands the line to `use_line`.
/// The line is built in a buffer the thread keeps, so formatting does not allocate.
pub fn with_line<T>(record: &Record, values: &OwnedKVList, use_line: impl FnOnce(&[u8]) -> T) -> T {
    // Taken rather than borrowed: a value whose formatting logs in turn finds no buffer and
    // builds its line in a new one.
    let mut line = LINE.try_with(Cell::take).unwrap_or_default();
    line.clear();
    write_record(&mut line, record, values);
    let used = use_line(&line);
    line.shrink_to(RETAINED_LINE_BYTES);
    let _ = LINE.try_with(|kept| kept.set(line));
    used
}

/// Appends `record` to `line` as one JSON object followed by a newline.
fn write_record(line: &mut Vec<u8>, record: &Record, values: &OwnedKVList) {
    line.reserve(RECORD_BYTES);
    line.extend_from_slice(b"{\"msg\":");
    write_fmt_string(line, record.msg());
    line.extend_from_slice(b",\"level\":\"");
    line.extend_from_slice(record.level().as_short_str().as_bytes());
    line.extend_from_slice(b"\",\"ts\":\"");
    write_timestamp(line, SystemTime::now());
    line.push(b'"');
    let mut fields = Fields { line };
    // Serializing into memory fails only if a value's own `serialize` reports an error; the
    // keys written so far still make a record worth keeping.
    let _ = values.serialize(record, &mut fields);
    let _ = record.kv().serialize(record, &mut fields);
    line.extend_from_slice(b"}\n");
}

/// Writes `now` in RFC 3339 form, UTC, with nanoseconds: `2026-11-27T23:39:02.318343395Z`.
/// The date and time of day change once a second, so each thread formats them once a second
/// and only writes the nanoseconds for every record.
fn write_timestamp(line: &mut Vec<u8>, now: SystemTime) {
    // A clock set before 1970 is written as 1970 rather than failing the record.
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    let format_second = || {
        let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second));
        let mut prefix = *b"0000-00-00T00:00:00";
        // Always 20 bytes ending in `Z`; should that ever change, the zeros stand.
        if let Some(date_time) = text.to_string().as_bytes().get(..19) {
            prefix.copy_from_slice(date_time);
        }
        prefix
    };
    let prefix = SECOND
        .try_with(|cached| match cached.get() {
            (cached_second, prefix) if cached_second == second => prefix,
            _ => {
                let prefix = format_second();
                cached.set((second, prefix));
                prefix
            }
        })
        .unwrap_or_else(|_| format_second());
    line.extend_from_slice(&prefix);
    // Nine digits, two at a time from the right: a digit at a time was 60 instructions of a
    // record's few hundred (callgrind).
    let mut fraction = *b".000000000Z";
    let mut nanos = since_epoch.subsec_nanos() as usize;
    for pair in fraction[2..10].rchunks_exact_mut(2) {
        pair.copy_from_slice(&DIGIT_PAIRS[nanos % 100]);
        nanos /= 100;
    }
    // Below 10 for any valid nanosecond count (under 10^9); `% 10` keeps a digit regardless.
    fraction[1] = b'0' + (nanos % 10) as u8;
    line.extend_from_slice(&fraction);
}

/// `00` to `99`, for writing numbers two digits at a time.
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0; 2]; 100];
    let mut n = 0;
    while n < 100 {
        pairs[n] = [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
        n += 1;
    }
    pairs
};

/// A drain that writes each record as one JSON line, in one write, on the logging thread: for
/// benchmarks and tests, which measure or read the format without the queue.
pub struct JsonLines<W: Write> {
    out: RefCell<W>,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W) -> JsonLines<W> {
        JsonLines {
            out: RefCell::new(out),
        }
    }
}

impl<W: Write> slog::Drain for JsonLines<W> {
    type Ok = ();
    type Err = io::Error;

    fn log(&self, record: &Record, values: &OwnedKVList) -> io::Result<()> {
        with_line(record, values, |line| self.out.borrow_mut().write_all(line))
    }
}

/// Writes each key and value as `,"key":value`.
struct Fields<'a> {
    line: &'a mut Vec<u8>,
}

impl Fields<'_> {
    /// Writes `,"key":`. Keys are written as they are: a slog key is a `&'static str`, and every
    /// key the daemon logs is a literal name with nothing to escape (checked in debug builds,
    /// so the tests of each record check its keys).
    fn key(&mut self, key: Key) {
        debug_assert_plain_key(key);
        self.line.extend_from_slice(b",\"");
        self.line.extend_from_slice(key.as_bytes());
        self.line.extend_from_slice(b"\":");
    }

    fn display(&mut self, key: Key, value: impl fmt::Display) -> slog::Result {
        self.key(key);
        let _ = write!(self.line, "{value}");
        Ok(())
    }

    fn literal(&mut self, key: Key, value: &[u8]) -> slog::Result {
        self.key(key);
        self.line.extend_from_slice(value);
        Ok(())
    }

    /// JSON has no NaN or infinity; serde_json writes them as `null`, and so does this.
    fn float(&mut self, key: Key, value: f64, display: impl fmt::Display) -> slog::Result {
        if value.is_finite() {
            self.display(key, display)
        } else {
            self.literal(key, b"null")
        }
    }
}

// Integers through itoa: `write!` goes through the formatting machinery, several times the
// cost of the digits (a finished record's `duration_ms`, issue 5).
macro_rules! emit_integers {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method(&mut self, key: Key, value: $ty) -> slog::Result {
            self.literal(key, itoa::Buffer::new().format(value).as_bytes())
        })*
    };
}

impl slog::Serializer for Fields<'_> {
    emit_integers!(
        emit_u8: u8, emit_i8: i8, emit_u16: u16, emit_i16: i16, emit_u32: u32, emit_i32: i32,
        emit_u64: u64, emit_i64: i64, emit_u128: u128, emit_i128: i128,
        emit_usize: usize, emit_isize: isize
    );

    fn emit_f32(&mut self, key: Key, value: f32) -> slog::Result {
        self.float(key, f64::from(value), value)
    }

    fn emit_f64(&mut self, key: Key, value: f64) -> slog::Result {
        self.float(key, value, value)
    }

    fn emit_bool(&mut self, key: Key, value: bool) -> slog::Result {
        self.literal(key, if value { b"true" } else { b"false" })
    }

    fn emit_unit(&mut self, key: Key) -> slog::Result {
        self.literal(key, b"null")
    }

    fn emit_none(&mut self, key: Key) -> slog::Result {
        self.literal(key, b"null")
    }

    fn emit_char(&mut self, key: Key, value: char) -> slog::Result {
        self.key(key);
        write_string(self.line, value.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn emit_str(&mut self, key: Key, value: &str) -> slog::Result {
        // Most keys carry a string: the key's closing quote and the value's opening one are
        // written together.
        debug_assert_plain_key(key);
        let line = &mut *self.line;
        line.extend_from_slice(b",\"");
        line.extend_from_slice(key.as_bytes());
        line.extend_from_slice(b"\":\"");
        write_escaped(line, value);
        line.push(b'"');
        Ok(())
    }

    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments) -> slog::Result {
        self.key(key);
        write_fmt_string(self.line, value);
        Ok(())
    }

    fn emit_serde(&mut self, key: Key, value: &dyn slog::SerdeValue) -> slog::Result {
        self.key(key);
        let start = self.line.len();
        if let Err(err) = serde_json::to_writer(&mut *self.line, value.as_serde()) {
            // A half-written value would break the line: say why it is missing instead.
            self.line.truncate(start);
            write_string(self.line, &format!("<cannot serialize: {err}>"));
        }
        Ok(())
    }
}

/// Panics in debug builds when `key` would need escaping in JSON, which `Fields` does not do.
#[inline(always)]
fn debug_assert_plain_key(key: Key) {
    debug_assert!(
        !needs_escape(key.as_bytes()),
        "log key {key:?} holds a character JSON must escape"
    );
}

/// Writes `value` as a JSON string: for log lines, and for the answer to `POST /anomaly`.
pub fn write_string(line: &mut Vec<u8>, value: &str) {
    line.push(b'"');
    write_escaped(line, value);
    line.push(b'"');
}

/// Writes formatted text as a JSON string, escaping each piece as it is produced.
fn write_fmt_string(line: &mut Vec<u8>, value: &fmt::Arguments) {
    line.push(b'"');
    match value.as_str() {
        Some(text) => write_escaped(line, text),
        None => {
            let _ = Escaping(line).write_fmt(*value);
        }
    }
    line.push(b'"');
}

/// A `fmt::Write` that appends what it is given as the inside of a JSON string.
struct Escaping<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        write_escaped(self.0, text);
        Ok(())
    }
}

/// Appends `text` as the inside of a JSON string, escaped as serde_json escapes it: `"`, `\\`
/// and the control characters, with the short forms for the common ones.
/// The check and the copy are inlined into each caller: most strings need no escaping, and
/// for a short key a call costs more than the copy.
#[inline(always)]
fn write_escaped(line: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    if needs_escape(bytes) {
        write_with_escapes(line, bytes);
    } else {
        line.extend_from_slice(bytes);
    }
}

/// `write_escaped` for text that has something to escape.
#[inline(never)]
fn write_with_escapes(line: &mut Vec<u8>, bytes: &[u8]) {
    let mut clean_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let mut unicode = *b"\\u00XX";
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                unicode[4] = HEX[usize::from(byte >> 4)];
                unicode[5] = HEX[usize::from(byte & 0xf)];
                &unicode
            }
            _ => continue,
        };
        line.extend_from_slice(&bytes[clean_from..at]);
        line.extend_from_slice(escape);
        clean_from = at + 1;
    }
    line.extend_from_slice(&bytes[clean_from..]);
}

/// Whether any byte of `bytes` must be escaped in a JSON string: `"`, `\\` or a control
/// character. Almost nothing a record holds does, so this is checked many bytes at a time (a
/// byte at a time, it was a tenth of a request's instructions): sixteen at a time for longer
/// strings, whose chunks the compiler checks as vectors, and as words for short keys and names,
/// whose tail is read as one overlapping piece rather than byte by byte.
#[inline(always)]
fn needs_escape(bytes: &[u8]) -> bool {
    let word_at = |at: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_ne_bytes(word)
    };
    let half_at = |at: usize| {
        let mut half = [0; 4];
        half.copy_from_slice(&bytes[at..at + 4]);
        u32::from_ne_bytes(half)
    };
    match bytes.len() {
        len @ 16.. => {
            let (chunks, _) = bytes.as_chunks::<16>();
            let mut last = [0; 16];
            last.copy_from_slice(&bytes[len - 16..]);
            // The last sixteen bytes overlap the last whole chunk and cover what is left.
            chunks.iter().any(chunk_needs_escape) || chunk_needs_escape(&last)
        }
        len @ 8..16 => any_byte_needs_escape(word_at(0)) || any_byte_needs_escape(word_at(len - 8)),
        len @ 4..8 => {
            // Two overlapping halves cover four to eight bytes.
            let word = u64::from(half_at(0)) | u64::from(half_at(len - 4)) << 32;
            any_byte_needs_escape(word)
        }
        _ => bytes.iter().any(byte_needs_escape),
    }
}

/// `needs_escape` for sixteen bytes, without an early exit, so that it compiles to a few
/// vector instructions.
#[inline(always)]
fn chunk_needs_escape(chunk: &[u8; 16]) -> bool {
    chunk
        .iter()
        .fold(false, |found, byte| found | byte_needs_escape(byte))
}

#[inline(always)]
fn byte_needs_escape(byte: &u8) -> bool {
    (*byte < 0x20) | (*byte == b'"') | (*byte == b'\\')
}

/// Whether any of the eight bytes in `word` is `"`, `\\` or below 0x20. Bit tricks from "Bit
/// Twiddling Hacks" (haszero, hasless): exact about whether, not about where.
fn any_byte_needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let is_quote = quote.wrapping_sub(ONES) & !quote;
    let is_backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | is_quote | is_backslash) & HIGHS != 0
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{json, Value};
    use slog::{crit, info, o, Drain, Logger};

    use super::*;

    /// Collects each line a logger writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<Vec<u8>>>>);

    impl slog::Drain for Lines {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
            self.0
                .lock()
                .unwrap()
                .push(with_line(record, values, <[u8]>::to_vec));
            Ok(())
        }
    }

    /// The same record written by slog-json, the layout this module keeps.
    fn slog_json_line(log: impl FnOnce(&Logger)) -> Value {
        let out = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let drain = slog_json::Json::new(Shared(out.clone()))
            .add_default_keys()
            .build();
        log(&Logger::root(
            Mutex::new(drain).fuse(),
            o!("daemon" => "autohealer"),
        ));
        let bytes = out.lock().unwrap().clone();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn our_line(log: impl FnOnce(&Logger)) -> (String, Value) {
        let lines = Lines::default();
        log(&Logger::root(lines.clone(), o!("daemon" => "autohealer")));
        let written = lines.0.lock().unwrap().pop().unwrap();
        let text = String::from_utf8(written).unwrap();
        let value = serde_json::from_str(&text).unwrap();
        (text, value)
    }

    /// Every kind of value a record can carry, with strings that need escaping.
    fn every_kind(log: &Logger) {
        let details =
            Arc::new(json!({"latency_ms": 5000, "note": "a \"b\"\n", "nested": [1, null]}));
        crit!(log, "healing action {}", "triggered";
            "details" => slog::Serde(details),
            "text" => "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} é ✓",
            "display" => %format_args!("{}:{}", "127.0.0.1", 8000),
            "unsigned" => 18_446_744_073_709_551_615u64,
            "signed" => -42i64,
            "float" => 1.5f64,
            "not_a_number" => f64::NAN,
            "flag" => true,
            "nothing" => None::<&str>,
            "unit" => (),
            "letter" => '"',
        );
    }

    #[test]
    fn lines_hold_the_same_object_as_slog_json_wrote() {
        let (text, ours) = our_line(every_kind);
        let mut theirs = slog_json_line(every_kind);
        assert!(
            text.ends_with("}\n") && text.matches('\n').count() == 1,
            "{text:?}"
        );
        // The clock moved between the two; only the timestamp's form can be compared.
        let ts = ours["ts"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        theirs["ts"] = ours["ts"].clone();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut specials: Vec<char> = (0u8..0x80).map(char::from).collect();
        specials.extend(['é', '✓', '\u{7f}', '\u{2028}', '𝄞']);
        // Every special character at every position of every length up to two chunks and a
        // half, so each of the short, half-word, word and overlapping-chunk checks meets it.
        for special in specials {
            for len in 1..=40 {
                for at in 0..len {
                    let text: String = (0..len)
                        .map(|i| if i == at { special } else { 'a' })
                        .collect();
                    let mut ours = Vec::new();
                    write_string(&mut ours, &text);
                    let theirs = serde_json::to_string(&text).unwrap();
                    assert_eq!(String::from_utf8(ours).unwrap(), theirs, "{text:?}");
                }
            }
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds_in_utc() {
        let written = |at: SystemTime| {
            let mut line = Vec::new();
            write_timestamp(&mut line, at);
            String::from_utf8(line).unwrap()
        };
        let at = UNIX_EPOCH + Duration::new(1_795_822_742, 18_343_395);
        assert_eq!(written(at), "2026-11-27T23:39:02.018343395Z");
        // The same second again comes from the thread's cache; the next one does not.
        assert_eq!(
            written(at + Duration::from_nanos(7)),
            "2026-11-27T23:39:02.018343402Z"
        );
        assert_eq!(
            written(at + Duration::from_secs(58)),
            "2026-11-27T23:40:00.018343395Z"
        );
        assert_eq!(
            written(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000000000Z"
        );
        for (nanos, fraction) in [(5, ".000000005Z"), (999_999_999, ".999999999Z")] {
            let text = written(UNIX_EPOCH + Duration::new(0, nanos));
            assert_eq!(&text[19..], fraction);
        }
        let now = SystemTime::now();
        assert_eq!(humantime::parse_rfc3339(&written(now)).unwrap(), now);
    }

    #[test]
    fn keys_come_in_slog_json_order() {
        let written =
            |log: &Logger| info!(log, "listening"; "addr" => "127.0.0.1:8000", "socket" => "bound");
        let (text, _) = our_line(written);
        let keys: Vec<&str> = text
            .split(",\"")
            .skip(1)
            .map(|field| field.split('"').next().unwrap())
            .collect();
        assert_eq!(keys, ["level", "ts", "daemon", "socket", "addr"]);
        assert!(text.starts_with("{\"msg\":\"listening\",\"level\":\"INFO\""));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "JSON must escape")]
    fn a_key_that_would_need_escaping_fails_in_debug_builds() {
        our_line(|log| info!(log, "x"; "a\"b" => 1));
    }

    #[test]
    fn a_value_that_cannot_be_serialized_leaves_a_valid_line() {
        // A map with non-string keys has no JSON form.
        let bad: std::collections::BTreeMap<Vec<u8>, u8> = [(vec![1], 1)].into();
        let (_, line) = our_line(|log| crit!(log, "x"; "after" => 1, "bad" => slog::Serde(bad)));
        assert!(line["bad"]
            .as_str()
            .unwrap()
            .starts_with("<cannot serialize"));
        assert_eq!(line["after"], 1);
    }

    #[test]
    fn the_file_drain_writes_each_record_in_one_write() {
        #[derive(Clone, Default)]
        struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);
        impl io::Write for Writes {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().push(buf.to_vec());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let writes = Writes::default();
        let log = Logger::root(
            Mutex::new(JsonLines::new(writes.clone())).ignore_res(),
            o!(),
        );
        crit!(log, "healing action triggered"; "anomaly" => "a\nb", "n" => 1);
        info!(log, "listening"; "addr" => "127.0.0.1:8000");
        let writes = writes.0.lock().unwrap().clone();
        assert_eq!(writes.len(), 2);
        let first: Value = serde_json::from_slice(&writes[0]).unwrap();
        assert_eq!(first["anomaly"], "a\nb");
        assert_eq!(first["n"], 1);
    }
}
