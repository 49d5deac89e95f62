//! `autohealer silence add|list|expire` (SPEC §9 "Silences"): an operator's maintenance window,
//! from the shell, through the running daemon's `/silences` API and `client`'s URL and token
//! handling, as `send` uses them.
//!
//! `add` and `list` print one line per silence, its fields separated by tabs (no matcher or
//! comment holds one): id, matcher, starts_at, ends_at, comment; so `cut -f1` gives the id.
//! `expire` prints the daemon's answer. Exit status as `send`'s: 0 when the daemon did it, 1
//! when it refused (4xx/5xx) or could not be reached; `main` prints the error.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{Answer, Client, ClientArgs};

/// Options of `silence`.
#[derive(Debug, Args)]
pub struct SilenceArgs {
    #[command(subcommand)]
    pub action: SilenceAction,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What `silence` was asked to do.
#[derive(Debug, Subcommand)]
pub enum SilenceAction {
    /// Hold back every anomaly MATCHER covers (a name, or a pattern as in `reflexes:` such as
    /// nginx.**) for DURATION; prints the new silence with its id.
    Add {
        /// An anomaly name or pattern: `*` within a dot-separated segment, `**` across dots.
        matcher: String,
        /// How long it holds: 1s to 30d, e.g. 90m or 2h.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why, for whoever reads the log or the list later.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// List the silences in force, one line each.
    List,
    /// End a silence now.
    Expire {
        /// The silence's id, as `add` and `list` print it.
        id: String,
    },
}

/// Does what `args` asks of the daemon and prints its answer.
pub fn run(args: &SilenceArgs) -> anyhow::Result<()> {
    let client = Client::from_args(&args.client)?;
    match &args.action {
        SilenceAction::Add {
            matcher,
            duration,
            comment,
        } => {
            let mut body = json!({"matcher": matcher, "duration": duration});
            if let Some(comment) = comment {
                body["comment"] = json!(comment);
            }
            let answer = accepted(
                client.request(Method::POST, "silences", Some(&body))?,
                "add the silence",
            )?;
            println!("{}", line(&parse(&answer)?));
        }
        SilenceAction::List => {
            let answer = accepted(
                client.request(Method::GET, "silences", None)?,
                "list the silences",
            )?;
            let listed = parse(&answer)?;
            let silences = listed["silences"]
                .as_array()
                .with_context(|| format!("the daemon at {} sent no `silences` list", answer.url))?;
            for silence in silences {
                println!("{}", line(silence));
            }
        }
        SilenceAction::Expire { id } => {
            // The id is a path segment: anything but a UUID's characters cannot name a silence.
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                bail!("{id:?} is not a silence id: `autohealer silence list` shows them");
            }
            let answer = accepted(
                client.request(Method::DELETE, &format!("silences/{id}"), None)?,
                "expire the silence",
            )?;
            println!("{}", answer.body);
        }
    }
    Ok(())
}

/// `answer` when the daemon did what was asked, else the error saying what it refused.
fn accepted(answer: Answer, what: &str) -> anyhow::Result<Answer> {
    if answer.status.is_success() {
        return Ok(answer);
    }
    bail!(
        "the daemon at {} did not {what} ({}): {}",
        answer.url,
        answer.status,
        answer.error_message()
    );
}

fn parse(answer: &Answer) -> anyhow::Result<Value> {
    serde_json::from_str(&answer.body)
        .with_context(|| format!("the daemon at {} answered something not JSON", answer.url))
}

/// One silence as a line: id, matcher, starts_at, ends_at, comment, tab-separated.
fn line(silence: &Value) -> String {
    ["id", "matcher", "starts_at", "ends_at", "comment"]
        .map(|field| silence[field].as_str().unwrap_or(""))
        .join("\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silence_is_one_tab_separated_line() {
        let silence = json!({
            "id": "0190", "matcher": "nginx.**", "comment": "kernel upgrade",
            "starts_at": "2026-12-03T10:00:00.000Z", "ends_at": "2026-12-03T12:00:00.000Z",
        });
        assert_eq!(
            line(&silence),
            "0190\tnginx.**\t2026-12-03T10:00:00.000Z\t2026-12-03T12:00:00.000Z\tkernel upgrade"
        );
    }
}
