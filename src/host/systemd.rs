//! Life under systemd (SPEC §6): the notify protocol and socket activation.
//!
//! `HostEnv::take` reads what the service manager handed the process — `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`, `LISTEN_FDS` — once, before any thread exists, and removes it from the
//! environment so that exec workflows neither inherit the listening socket's variables nor can
//! speak for the daemon. The `Notifier` then sends `READY=1`, `RELOADING=1`, `STATUS=`,
//! `WATCHDOG=1` and `STOPPING=1`; without `NOTIFY_SOCKET` it holds nothing and every call
//! returns at once. The watchdog task pings only while the runtime proves it still runs work.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use slog::Logger;
use tokio::time::{Instant, MissedTickBehavior};

use crate::log::records;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_PASSED_FD: i32 = 3;

/// What the service manager handed this process at start.
#[derive(Debug)]
pub struct HostEnv {
    /// Speaks the notify protocol; a no-op when `NOTIFY_SOCKET` was not set.
    pub notifier: Notifier,
    /// Why `NOTIFY_SOCKET` could not be used, for a WARN once logging is up.
    pub notify_error: Option<String>,
    /// `WATCHDOG_USEC`, when the watchdog is armed for this process.
    pub watchdog: Option<Duration>,
    /// The listening socket passed by socket activation, or why it cannot be used.
    pub listener: Result<Option<OwnedFd>, String>,
}

impl HostEnv {
    /// Reads and unsets the systemd variables. Takes ownership of fd 3 when a socket was passed.
    ///
    /// # Safety
    ///
    /// Must be called once, before any other thread exists (it removes environment variables),
    /// and before anything else in the process opens or claims fd 3.
    pub unsafe fn take() -> HostEnv {
        let notify_socket = std::env::var_os("NOTIFY_SOCKET");
        // SAFETY: the caller guarantees no other thread exists yet.
        let (watchdog, passed) = unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("LISTEN_FDNAMES");
            (
                sd_notify::watchdog_enabled_and_unset_env(),
                sd_notify::listen_fds_and_unset_env(),
            )
        };
        let (notifier, notify_error) = match notify_socket {
            None => (Notifier::default(), None),
            Some(path) => match Notifier::connect(&path) {
                Ok(notifier) => (notifier, None),
                Err(err) => (
                    Notifier::default(),
                    Some(format!("NOTIFY_SOCKET={}: {err}", path.to_string_lossy())),
                ),
            },
        };
        let listener = match passed {
            Err(err) => Err(format!("cannot use the sockets systemd passed: {err}")),
            Ok(fds) if fds.len() == 0 => Ok(None),
            Ok(fds) if fds.len() == 1 => {
                // SAFETY: LISTEN_PID named this process, so fd 3 was passed to it and is open;
                // the caller guarantees nothing else has claimed it.
                Ok(Some(unsafe { OwnedFd::from_raw_fd(FIRST_PASSED_FD) }))
            }
            Ok(fds) => Err(format!(
                "systemd passed {} sockets; autohealer serves exactly one (one ListenStream=)",
                fds.len()
            )),
        };
        HostEnv {
            notifier,
            notify_error,
            watchdog,
            listener,
        }
    }
}

/// Turns the socket systemd passed into a listener, refusing anything but a listening TCP socket.
pub fn tcp_listener(fd: OwnedFd) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::from(fd);
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    if socket.r#type()? != socket2::Type::STREAM || socket.local_addr()?.as_socket().is_none() {
        return Err(invalid(
            "the passed socket is not a TCP socket (use ListenStream=ADDRESS:PORT)",
        ));
    }
    if !socket.is_listener()? {
        return Err(invalid("the passed socket is not listening"));
    }
    // tokio needs it non-blocking; systemd passes it blocking.
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Sends state changes to the service manager; cheap to clone, and free when not under systemd.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<Arc<NotifySocket>>,
}

#[derive(Debug)]
struct NotifySocket {
    datagram: UnixDatagram,
    addr: SocketAddr,
    /// Set by `stopping`: later READY or WATCHDOG messages would contradict it.
    stopping: AtomicBool,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`: a path, or `@name` for the abstract namespace.
    pub(crate) fn connect(path: &OsStr) -> io::Result<Notifier> {
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(path)?,
        };
        let datagram = UnixDatagram::unbound()?;
        // A manager too busy to read loses a message rather than stalling a runtime worker.
        datagram.set_nonblocking(true)?;
        Ok(Notifier {
            socket: Some(Arc::new(NotifySocket {
                datagram,
                addr,
                stopping: AtomicBool::new(false),
            })),
        })
    }

    /// True when running under a service manager that listens.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// `READY=1` with the map in force as `STATUS=`: startup is done, or a reload ended.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=`, which systemd 253+ requires to match it to READY.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// `WATCHDOG=1`: the daemon is healthy.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// `STOPPING=1`; READY and WATCHDOG are not sent after it.
    pub fn stopping(&self, status: &str) {
        if let Some(socket) = &self.socket {
            socket.stopping.store(true, Ordering::SeqCst);
            socket.transmit(&[NotifyState::Stopping, NotifyState::Status(status)]);
        }
    }

    fn send(&self, states: &[NotifyState]) {
        let Some(socket) = &self.socket else { return };
        if socket.stopping.load(Ordering::SeqCst) {
            return;
        }
        socket.transmit(states);
    }
}

impl NotifySocket {
    fn transmit(&self, states: &[NotifyState]) {
        // Nobody can act on a lost notification; systemd falls back on its timeouts.
        let _ = self
            .datagram
            .send_to_addr(format(states).as_bytes(), &self.addr);
    }
}

/// The longest datagram systemd reads (`NOTIFY_BUFFER_MAX`); it drops a longer one whole, and
/// with it any `READY=1` it carried, leaving the unit "reloading" (SPEC §8).
pub const NOTIFY_DATAGRAM_MAX: usize = 4096;

/// What ends a `STATUS=` cut to fit.
const ELLIPSIS: &str = "…";

/// One datagram of at most `NOTIFY_DATAGRAM_MAX` bytes, one `KEY=VALUE` per line; a value never
/// spans lines. The states come first, and `STATUS=` last, cut to the room they leave.
fn format(states: &[NotifyState]) -> String {
    let mut message = String::new();
    let mut status = None;
    for state in states {
        match state {
            NotifyState::Status(text) => status = Some(*text),
            state => push_line(&mut message, &state.to_string()),
        }
    }
    if let Some(text) = status {
        const KEY: &str = "STATUS=";
        // The states are a few short lines; should they ever fill the datagram, STATUS= goes.
        let room = NOTIFY_DATAGRAM_MAX.saturating_sub(message.len() + KEY.len() + 1);
        if room > ELLIPSIS.len() {
            let one_line = text.replace('\n', "; ");
            push_line(&mut message, &format!("{KEY}{}", cut_to(&one_line, room)));
        }
    }
    message
}

fn push_line(message: &mut String, line: &str) {
    message.push_str(&line.replace('\n', "; "));
    message.push('\n');
}

/// `text` if it fits in `room` bytes, else its longest prefix that ends on a character boundary
/// and leaves room for the ellipsis, with the ellipsis.
fn cut_to(text: &str, room: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= room {
        return text.into();
    }
    let mut end = room.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end]).into()
}

/// Pings `WATCHDOG=1` every half of `timeout` while the runtime proves it still runs new work.
///
/// A ping is sent only when this task's tick came on time and a freshly spawned task — the way
/// each new connection is served — ran within the tolerance. A wedged runtime sends nothing, and
/// systemd restarts the daemon once `WatchdogSec` passes.
pub async fn run_watchdog(notifier: Notifier, timeout: Duration, log: Logger) {
    // tokio's interval refuses a zero period; WATCHDOG_USEC=1 must not take the daemon down.
    let period = (timeout / 2).max(Duration::from_millis(1));
    let tolerance = period / 2;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let scheduled = ticks.tick().await;
        match probe_runtime(scheduled, tolerance).await {
            Ok(()) => notifier.watchdog(),
            Err(why) => records::watchdog_withheld(&log, &why),
        }
    }
}

async fn probe_runtime(scheduled: Instant, tolerance: Duration) -> Result<(), String> {
    let late = scheduled.elapsed();
    if late > tolerance {
        return Err(format!(
            "the runtime ran the watchdog tick {} ms late",
            late.as_millis()
        ));
    }
    match tokio::time::timeout(tolerance, tokio::spawn(async {})).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("a probe task failed: {err}")),
        Err(_) => Err(format!(
            "a probe task did not run within {} ms",
            tolerance.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_per_state() {
        assert_eq!(
            format(&[NotifyState::Ready, NotifyState::Status("a\nb")]),
            "READY=1\nSTATUS=a; b\n"
        );
    }

    #[test]
    fn a_long_status_is_cut_to_fit_on_a_character_boundary() {
        let fits = "é".repeat(10);
        assert_eq!(cut_to(&fits, 20), fits);
        // 7 bytes of room: two 2-byte characters and the 3-byte ellipsis.
        assert_eq!(cut_to(&fits, 7), "éé…");
        assert_eq!(cut_to(&fits, 8), "éé…", "half a character is left out");
        let message = format(&[NotifyState::Ready, NotifyState::Status(&"é".repeat(5000))]);
        assert_eq!(
            message.len(),
            NOTIFY_DATAGRAM_MAX - 1,
            "4096 bytes less half an é"
        );
        assert!(message.starts_with("READY=1\nSTATUS=éé"));
        assert!(message.ends_with("é…\n"));
        // A newline turned into "; " grows the text: the cut comes after.
        let lines = "a\n".repeat(3000);
        let message = format(&[NotifyState::Stopping, NotifyState::Status(&lines)]);
        assert_eq!(message.len(), NOTIFY_DATAGRAM_MAX);
        assert_eq!(message.lines().count(), 2);
    }

    /// The service manager's end of a real notify socket in a temp dir, and a notifier to it.
    fn manager_and_notifier() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_nonblocking(true).unwrap();
        let notifier = Notifier::connect(path.as_os_str()).unwrap();
        (dir, receiver, notifier)
    }

    #[test]
    fn ready_follows_reloading_whatever_the_status() {
        let (_dir, receiver, notifier) = manager_and_notifier();
        let error = format!(
            "map.yml:3:3: reflex `a` names workflow `{}`",
            "é".repeat(9000)
        );
        notifier.reloading();
        notifier.ready(&format!(
            "map 1 (generation 2); last reload rejected: {error}"
        ));
        // Read with room to spare, so a datagram over the limit would show its full size.
        let mut buf = vec![0u8; 65536];
        let n = receiver.recv(&mut buf).unwrap();
        let reloading = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        let n = receiver.recv(&mut buf).unwrap();
        assert!(n <= NOTIFY_DATAGRAM_MAX, "{n} bytes");
        let ready = std::str::from_utf8(&buf[..n]).expect("cut on a character boundary");
        assert!(
            ready.starts_with("READY=1\nSTATUS=map 1 (generation 2); last reload rejected: "),
            "{ready}"
        );
        assert!(ready.ends_with("é…\n"), "{ready}");
    }

    #[test]
    fn a_disabled_notifier_sends_nothing() {
        let notifier = Notifier::default();
        assert!(!notifier.is_enabled());
        notifier.ready("x");
        notifier.reloading();
        notifier.watchdog();
        notifier.stopping("x");
    }

    #[test]
    fn nothing_follows_stopping() {
        let (_dir, receiver, notifier) = manager_and_notifier();
        notifier.stopping("bye");
        notifier.ready("again");
        notifier.watchdog();
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=bye\n");
        assert!(receiver.recv(&mut buf).is_err(), "nothing after STOPPING");
    }

    #[tokio::test]
    async fn a_responsive_runtime_passes_the_probe() {
        assert!(probe_runtime(Instant::now(), Duration::from_secs(1))
            .await
            .is_ok());
        let late = Instant::now() - Duration::from_secs(2);
        assert!(probe_runtime(late, Duration::from_secs(1))
            .await
            .unwrap_err()
            .contains("late"));
    }
}
