//! journald: whether stderr is connected to the journal, so each log line can carry its syslog
//! priority (SPEC §10).
//!
//! systemd sets `JOURNAL_STREAM=DEV:INO` (decimal) to the device and inode of the stream it
//! connected to the service's stdout or stderr (systemd.exec(5)). The variable is inherited, so
//! it alone proves nothing: stderr is the journal only when fd 2 is that very file. A daemon
//! run by hand, with stderr redirected or piped, gets no prefix.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

/// The variable systemd sets to the journal stream's `DEV:INO`.
const JOURNAL_STREAM: &str = "JOURNAL_STREAM";

/// True when `JOURNAL_STREAM` names the file stderr is: lines written there go to the journal,
/// which reads a leading `<N>` as the line's priority.
pub fn stderr_is_journal() -> bool {
    let Some((dev, ino)) = std::env::var_os(JOURNAL_STREAM).as_deref().and_then(parse) else {
        return false;
    };
    // fstat through a duplicate descriptor, closed when the `File` drops.
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    File::from(stderr)
        .metadata()
        .is_ok_and(|meta| meta.dev() == dev && meta.ino() == ino)
}

/// `DEV:INO` as two decimal numbers.
fn parse(value: &OsStr) -> Option<(u64, u64)> {
    let (dev, ino) = value.to_str()?.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_two_decimal_numbers() {
        assert_eq!(parse(OsStr::new("8:1234")), Some((8, 1234)));
        assert_eq!(parse(OsStr::new("0:0")), Some((0, 0)));
        for bad in ["", "8", "8:", ":1", "8:x", "0x8:1", "8:1:2", "-1:2"] {
            assert_eq!(parse(OsStr::new(bad)), None, "{bad}");
        }
    }
}
