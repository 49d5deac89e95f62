//! The figures: one row per measured figure with its same-run reference, the ratio and the
//! goal, printed as a table and written as Markdown with the machine it ran on.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::load::{command_output, first_line_of};

/// Whether a figure reaches its goal. Never an error: the benchmark only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// No goal: shown for context.
    Info,
    /// The reference did not use the CPU it had, so the client, not the server, set the pace
    /// (a busy machine); the ratio says little. The per-CPU-second ratio still holds.
    ClientBound,
}

impl Verdict {
    pub fn of(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::Info => "",
            Verdict::ClientBound => "UNRELIABLE (client-bound)",
        }
    }
}

/// One figure.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: &'static str,
    pub figure: String,
    pub daemon: String,
    pub reference: String,
    pub ratio: String,
    pub goal: String,
    pub verdict: Verdict,
}

/// The rows of a run, plus free-form notes per section.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub micro: Vec<MicroRow>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn row(
        &mut self,
        section: &'static str,
        figure: impl Into<String>,
        daemon: impl Into<String>,
        reference: impl Into<String>,
        ratio: impl Into<String>,
        goal: impl Into<String>,
        verdict: Verdict,
    ) {
        let row = Row {
            section,
            figure: figure.into(),
            daemon: daemon.into(),
            reference: reference.into(),
            ratio: ratio.into(),
            goal: goal.into(),
            verdict,
        };
        println!(
            "  {:<44} {:>14} {:>14} {:>8}  {:<12} {}",
            row.figure,
            row.daemon,
            row.reference,
            row.ratio,
            row.goal,
            row.verdict.as_str()
        );
        let client_bound = row.verdict == Verdict::ClientBound;
        self.rows.push(row);
        if client_bound && !self.notes.iter().any(|n| n.starts_with("UNRELIABLE")) {
            self.note(
                "UNRELIABLE (client-bound): the reference server did not keep its CPU busy, so \
                 wrk, starved by other load on the machine, set the pace of both servers and \
                 the requests/s ratio flatters the slower one; read the requests-per-CPU-second \
                 ratio instead, or re-run on a quiet machine",
            );
        }
    }

    /// A row of resident memory, daemon against reference, both in KiB.
    pub fn memory_row(
        &mut self,
        section: &'static str,
        figure: &str,
        daemon_kib: u64,
        reference_kib: u64,
        goal: &str,
        verdict: Verdict,
    ) {
        self.row(
            section,
            figure,
            mib(daemon_kib),
            mib(reference_kib),
            ratio(daemon_kib as f64, reference_kib as f64),
            goal,
            verdict,
        );
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("  note: {note}");
        self.notes.push(note);
    }

    /// The whole report as Markdown.
    pub fn markdown(&self, machine: &Machine, settings: &str, user_note: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# AutoHealer benchmark results, {}\n", machine.date);
        if let Some(note) = user_note {
            let _ = writeln!(out, "> **{note}**\n");
        }
        let _ = writeln!(
            out,
            "Produced by `bench/run.sh` (`cargo bench --bench system`, release profile). Every \
             figure is given beside a reference measured in the same run and their ratio; \
             `MISSED` marks a goal of SPEC §7 or §11 that this run did not reach (the benchmark never \
             fails on it). See docs/performance.md for what each figure means.\n"
        );
        out.push_str("## Machine\n\n");
        for (name, value) in &machine.facts {
            let _ = writeln!(out, "- {name}: {value}");
        }
        let _ = writeln!(out, "- settings: {settings}\n");
        out.push_str("## Figures\n\n");
        out.push_str("| section | figure | daemon | reference | ratio | goal | verdict |\n");
        out.push_str("|---|---|---:|---:|---:|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.section,
                r.figure,
                r.daemon,
                r.reference,
                r.ratio,
                r.goal,
                r.verdict.as_str()
            );
        }
        if !self.micro.is_empty() {
            out.push_str("\n## Micro-benchmarks (criterion, `cargo bench --bench micro`)\n\n");
            out.push_str(
                "Median time per call; the ratio is against the group's `reference` entry.\n\n",
            );
            out.push_str("| benchmark | median | ratio to reference |\n|---|---:|---:|\n");
            for m in &self.micro {
                let _ = writeln!(out, "| {} | {} | {} |", m.id, ns(m.median_ns), m.ratio);
            }
        }
        if !self.notes.is_empty() {
            out.push_str("\n## Notes\n\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }
}

/// Facts about the machine and the build, for the results file.
pub struct Machine {
    pub date: String,
    pub facts: Vec<(&'static str, String)>,
}

impl Machine {
    /// `nproc` is read before the benchmark pins itself to one CPU.
    pub fn describe(nproc: usize, load_at_start: &str) -> Machine {
        let now = SystemTime::now();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let commit = first_line_of("git", &["rev-parse", "--short", "HEAD"]);
        let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|status| !status.trim().is_empty());
        Machine {
            date: humantime::format_rfc3339_seconds(now).to_string(),
            facts: vec![
                (
                    "date (UTC)",
                    humantime::format_rfc3339_seconds(now).to_string(),
                ),
                ("nproc", nproc.to_string()),
                ("CPU", cpu_model),
                ("kernel", kernel),
                (
                    "commit",
                    format!(
                        "{commit}{}",
                        if dirty {
                            " (with uncommitted changes)"
                        } else {
                            ""
                        }
                    ),
                ),
                ("rustc", first_line_of("rustc", &["--version"])),
                ("wrk", first_line_of("wrk", &["--version"])),
                (
                    "load average at start (1, 5, 15 min)",
                    load_at_start.to_string(),
                ),
                ("load average at end", load_average()),
            ],
        }
    }

    pub fn day(&self) -> &str {
        self.date.get(..10).unwrap_or("undated")
    }
}

/// `/proc/loadavg`'s first three fields.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// One criterion result.
#[derive(Debug, Clone)]
pub struct MicroRow {
    pub id: String,
    pub median_ns: f64,
    pub ratio: String,
}

/// Criterion's results under `dir` written at or after `since`, with each group's ratio to
/// its `reference…` entry.
pub fn criterion_results(dir: &Path, since: Option<SystemTime>) -> Result<Vec<MicroRow>> {
    let mut found = Vec::new();
    collect_benchmarks(dir, since, &mut found)?;
    found.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut rows = Vec::new();
    for (group, function, median_ns) in &found {
        let reference = found
            .iter()
            .find(|(g, f, _)| g == group && f.starts_with("reference"))
            .map(|(_, _, ns)| *ns);
        let ratio = match reference {
            Some(r) if !function.starts_with("reference") => format!("{:.2}", median_ns / r),
            Some(_) => "1.00".to_string(),
            None => "-".to_string(),
        };
        rows.push(MicroRow {
            id: format!("{group}/{function}"),
            median_ns: *median_ns,
            ratio,
        });
    }
    Ok(rows)
}

fn collect_benchmarks(
    dir: &Path,
    since: Option<SystemTime>,
    found: &mut Vec<(String, String, f64)>,
) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let new: PathBuf = path.join("new");
        let benchmark = new.join("benchmark.json");
        if benchmark.is_file() {
            let modified = std::fs::metadata(&benchmark)?.modified()?;
            if since.is_some_and(|since| modified < since) {
                continue;
            }
            let meta: serde_json::Value = read_json(&benchmark)?;
            let estimates: serde_json::Value = read_json(&new.join("estimates.json"))?;
            let median = estimates["median"]["point_estimate"]
                .as_f64()
                .context("no median in criterion's estimates.json")?;
            let group = meta["group_id"].as_str().unwrap_or("?").to_string();
            let function = meta["function_id"].as_str().unwrap_or("").to_string();
            found.push((group, function, median));
        } else if path.file_name().is_some_and(|n| n != "report") {
            collect_benchmarks(&path, since, found)?;
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Nanoseconds, in the unit that suits them.
pub fn ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

/// Milliseconds with two decimals.
pub fn ms(ms: f64) -> String {
    format!("{ms:.2} ms")
}

/// KiB as MiB.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A ratio with two decimals.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 || !a.is_finite() || !b.is_finite() {
        return "-".into();
    }
    format!("{:.2}", a / b)
}

/// Writes `text` to `path`, creating its directory.
pub fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
