//! Exec actions: an argv list run directly (never through a shell), in its own process group so
//! a timeout kills everything it started, with the daemon's environment minus its secrets.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ActionReport, ActionRun, Outcome, SHUTDOWN_REASON};
use crate::anomaly::JsonObject;
use crate::map::ExecAction;

/// Bytes of combined stdout and stderr kept for the finished record (the tail).
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// After the command exits, how long to keep reading output that a leftover background child
/// may hold open.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Where systemd puts the service's credentials (`LoadCredential=`): the token's directory.
const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// The variables of the daemon's environment that no command inherits (SPEC §8).
static WITHHELD: OnceLock<Vec<OsString>> = OnceLock::new();

/// Withholds `names` — the variables the token came from — from every command, besides
/// `CREDENTIALS_DIRECTORY`, which is always withheld. Called once at startup; later calls are
/// ignored, so the set cannot change under a running action.
pub fn withhold_variables(names: impl IntoIterator<Item = OsString>) {
    let mut all = vec![OsString::from(CREDENTIALS_DIRECTORY)];
    all.extend(names);
    let _ = WITHHELD.set(all);
}

/// The variables withheld from commands: at least `CREDENTIALS_DIRECTORY`.
fn withheld() -> &'static [OsString] {
    WITHHELD.get_or_init(|| vec![OsString::from(CREDENTIALS_DIRECTORY)])
}

/// Expands the argv templates; the error is the action's failure reason. An argument that
/// would hand the program caller text as an option fails the action before anything runs (and
/// a dry run, or `autohealer explain`, reports the same failure).
pub fn expand_argv(exec: &ExecAction, run: &ActionRun) -> Result<Vec<String>, String> {
    let context = run.template_context();
    exec.command
        .iter()
        .map(|arg| arg.expand_argument(&context))
        .collect()
}

/// Reports what would run, without running it.
pub fn dry_run(exec: &ExecAction, run: &ActionRun) -> ActionReport {
    ActionReport::dry_run(
        expand_argv(exec, run).map(|argv| serde_json::to_string(&argv).unwrap_or_default()),
    )
}

/// Runs the command to completion, timeout or shutdown.
pub async fn run(exec: &ExecAction, run: &ActionRun, cancel: &CancellationToken) -> ActionReport {
    let started = Instant::now();
    let argv = match expand_argv(exec, run) {
        Ok(argv) => argv,
        Err(err) => return ActionReport::failed(started.elapsed(), err),
    };
    let (program, args) = match argv.split_first() {
        Some(split) => split,
        None => return ActionReport::failed(started.elapsed(), "the command is empty"),
    };
    // stdout and stderr share one pipe, so the captured tail keeps the order they were written in.
    let (output_fd, output) = match output_pipe() {
        Ok(pipe) => pipe,
        Err(err) => {
            return ActionReport::failed(
                started.elapsed(),
                format!("cannot create the output pipe: {err}"),
            )
        }
    };
    let mut command = tokio::process::Command::new(program);
    // The daemon's environment, minus what would let a command read the token; systemd's
    // NOTIFY_SOCKET and LISTEN_* were already taken out of it at startup (`host::systemd`).
    for name in withheld() {
        command.env_remove(name);
    }
    command
        .args(args)
        .env("AUTOHEALER_ANOMALY", &*run.anomaly)
        .env("AUTOHEALER_WORKFLOW", &*run.workflow.name)
        .env("AUTOHEALER_ACTION_ID", run.action_id.as_str())
        .env("AUTOHEALER_DETAILS", run.details.as_json())
        .env("AUTOHEALER_PARAMS", json_text(&run.params))
        .stdin(Stdio::null())
        .stdout(output_fd.stdout)
        .stderr(output_fd.stderr)
        // Its own process group, so a timeout can kill everything the command started.
        .process_group(0)
        .kill_on_drop(true);
    let spawned = command.spawn();
    // The command holds our copies of the pipe's write end; drop them so the reader sees EOF.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            return ActionReport::failed(
                started.elapsed(),
                format!("cannot start `{program}`: {err}"),
            )
        }
    };
    let group = child.id().map(|pid| Pid::from_raw(pid as i32));
    let tail = Arc::new(Mutex::new(OutputTail::default()));
    let reader = tokio::spawn(read_into(output, tail.clone()));

    enum End {
        Exited(std::io::Result<std::process::ExitStatus>),
        TimedOut,
        Cancelled,
    }
    let end = tokio::select! {
        status = child.wait() => End::Exited(status),
        () = tokio::time::sleep(exec.timeout) => End::TimedOut,
        () = cancel.cancelled() => End::Cancelled,
    };
    if !matches!(end, End::Exited(_)) {
        if let Some(group) = group {
            // ESRCH means the group is already gone, which is what we want.
            let _ = killpg(group, Signal::SIGKILL);
        }
        let _ = child.wait().await;
    }
    // Collect the rest of the output, but do not wait on a background child holding the pipe.
    let abort = reader.abort_handle();
    if tokio::time::timeout(OUTPUT_GRACE, reader).await.is_err() {
        abort.abort();
    }
    let output = tail.lock().map(|t| t.text()).unwrap_or_default();

    let exit_code = match &end {
        End::Exited(Ok(status)) => status.code(),
        _ => None,
    };
    let mut report = match end {
        End::Exited(Ok(status)) => match (status.code(), status.signal()) {
            (Some(0), _) => ActionReport::new(Outcome::Ok, started.elapsed(), None),
            (Some(code), _) => {
                ActionReport::failed(started.elapsed(), format!("exited with code {code}"))
            }
            (None, Some(signal)) => {
                ActionReport::failed(started.elapsed(), format!("killed by signal {signal}"))
            }
            (None, None) => ActionReport::failed(started.elapsed(), "ended without an exit code"),
        },
        End::Exited(Err(err)) => ActionReport::failed(
            started.elapsed(),
            format!("cannot wait for `{program}`: {err}"),
        ),
        End::TimedOut => ActionReport::new(
            Outcome::Timeout,
            started.elapsed(),
            Some(format!(
                "timed out after {}; killed its process group",
                humantime::format_duration(exec.timeout)
            )),
        ),
        End::Cancelled => ActionReport::failed(
            started.elapsed(),
            format!("{SHUTDOWN_REASON}; killed its process group"),
        ),
    };
    report.exit_code = exit_code;
    report.output = Some(output);
    report
}

/// The write end of the output pipe, once for stdout and once for stderr.
struct OutputFds {
    stdout: OwnedFd,
    stderr: OwnedFd,
}

fn output_pipe() -> std::io::Result<(OutputFds, pipe::Receiver)> {
    let (sender, receiver) = pipe::pipe()?;
    let stdout = sender.into_blocking_fd()?;
    let stderr = stdout.try_clone()?;
    Ok((OutputFds { stdout, stderr }, receiver))
}

fn json_text(object: &JsonObject) -> String {
    serde_json::to_string(object).unwrap_or_default()
}

/// Reads a pipe to its end, keeping only the tail.
async fn read_into(mut pipe: impl AsyncRead + Unpin, tail: Arc<Mutex<OutputTail>>) {
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut tail) = tail.lock() {
                    tail.push(&buf[..n]);
                }
            }
        }
    }
}

/// The last `OUTPUT_TAIL_BYTES` of a stream, so a command that floods stdout costs bounded memory.
#[derive(Default)]
struct OutputTail {
    bytes: Vec<u8>,
    truncated: bool,
}

impl OutputTail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > 2 * OUTPUT_TAIL_BYTES {
            let cut = self.bytes.len() - OUTPUT_TAIL_BYTES;
            self.bytes.drain(..cut);
            self.truncated = true;
        }
    }

    fn text(&self) -> String {
        let start = self.bytes.len().saturating_sub(OUTPUT_TAIL_BYTES);
        let text = String::from_utf8_lossy(&self.bytes[start..]);
        if self.truncated || start > 0 {
            format!("…{}", text.trim_end())
        } else {
            text.trim_end().to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_tail_keeps_the_last_bytes() {
        let mut tail = OutputTail::default();
        tail.push(b"hello\n");
        assert_eq!(tail.text(), "hello");
        for _ in 0..10_000 {
            tail.push(b"0123456789");
        }
        tail.push(b"END");
        let text = tail.text();
        assert!(text.starts_with('…'));
        assert!(text.ends_with("789END"));
        assert_eq!(text.len(), '…'.len_utf8() + OUTPUT_TAIL_BYTES);
    }
}
