//! The reload section (SPEC §11): save → first request that sees the new map, for each way a
//! map is saved — in place, temp + rename, and a Kubernetes ConfigMap's symlink swap — against a
//! bare notify watcher's save → the event that ends the save, in the same run; in-place saves
//! that pause mid-file, none of whose halves may be loaded; then the map replaced every 10 ms
//! under load.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::Client;
use crate::load::{self, median};
use crate::report::{ms, ratio, Report, Verdict};
use crate::{expect_answer, mapgen, write_private, Bench};

/// How long one save may take to be seen before it counts as missed.
const SEEN_DEADLINE: Duration = Duration::from_secs(2);

/// Pause between two timed saves, so that each is measured on its own.
const GAP: Duration = Duration::from_millis(25);

/// How often the probe asks whether the new map is in force.
const PROBE_EVERY: Duration = Duration::from_micros(200);

/// In-place saves that hold the file open half-written for `PAUSE` before finishing it.
const PAUSED_SAVES: u64 = 10;

/// Long against a reload (a few ms), well short of the daemon's quiet period (2 s) after which a
/// file held open is loaded anyway.
const PAUSE: Duration = Duration::from_millis(200);

/// How often the map is replaced under load (SPEC §7).
const REPLACE_EVERY: Duration = Duration::from_millis(10);

/// The goals of SPEC §11, in milliseconds.
const MEDIAN_GOAL_MS: f64 = 3.0;
const MAX_GOAL_MS: f64 = 20.0;

/// How a map is saved.
#[derive(Debug, Clone, Copy)]
enum Style {
    /// Truncate and write the file itself, as `echo > map.yml` and many editors do.
    InPlace,
    /// Write a temp file beside it and rename it over the map, as vim, `sed -i` and editors do.
    Rename,
    /// The kubelet's ConfigMap update: `map.yml -> ..data/map.yml`, `..data -> ..vN`; a new
    /// version directory, a `..data_tmp` link renamed over `..data`, the old version removed
    /// (`MapSaver::tidy`).
    SymlinkSwap,
}

impl Style {
    const ALL: [Style; 3] = [Style::InPlace, Style::Rename, Style::SymlinkSwap];

    fn label(self) -> &'static str {
        match self {
            Style::InPlace => "in place",
            Style::Rename => "temp + rename",
            Style::SymlinkSwap => "symlink swap",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Style::InPlace => "in-place",
            Style::Rename => "rename",
            Style::SymlinkSwap => "symlink-swap",
        }
    }
}

/// A map in a directory of its own, saved again and again in one style.
struct MapSaver {
    style: Style,
    dir: PathBuf,
    /// The ConfigMap layout's current version directory number.
    version: u64,
}

impl MapSaver {
    /// Lays out `dir` for `style` with `content` as the first version.
    fn create(style: Style, dir: &Path, content: &str) -> Result<MapSaver> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut saver = MapSaver {
            style,
            dir: dir.to_path_buf(),
            version: 0,
        };
        match style {
            Style::InPlace | Style::Rename => write_private(&saver.path(), content)?,
            Style::SymlinkSwap => {
                let first = saver.new_version(content)?;
                std::os::unix::fs::symlink(first, dir.join("..data"))?;
                std::os::unix::fs::symlink("..data/map.yml", saver.path())?;
            }
        }
        Ok(saver)
    }

    /// The path the daemon is given.
    fn path(&self) -> PathBuf {
        self.dir.join("map.yml")
    }

    /// Saves `content`; returns when the save's last step began (the open of an in-place
    /// write, the rename otherwise), the instant latencies are measured from.
    fn save(&mut self, content: &str) -> Result<Instant> {
        match self.style {
            Style::InPlace => {
                let started = Instant::now();
                let mut file = self.open_in_place()?;
                file.write_all(content.as_bytes())?;
                Ok(started)
            }
            Style::Rename => replace_by_rename(&self.path(), content),
            Style::SymlinkSwap => {
                let new = self.new_version(content)?;
                let tmp = self.dir.join("..data_tmp");
                std::os::unix::fs::symlink(new, &tmp)?;
                let started = Instant::now();
                std::fs::rename(&tmp, self.dir.join("..data"))?;
                Ok(started)
            }
        }
    }

    /// After a save was seen: removes the version a symlink swap replaced, as the kubelet does.
    /// (Done once the save is measured, so that the harness's own work does not delay the
    /// probe; the daemon sees the removal all the same.)
    fn tidy(&self) -> Result<()> {
        if let Style::SymlinkSwap = self.style {
            let old = self.dir.join(format!("..v{}", self.version - 1));
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove {}", old.display()))?;
        }
        Ok(())
    }

    /// The map opened for an in-place save: truncated, and written through the returned file.
    fn open_in_place(&self) -> Result<std::fs::File> {
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.path())
            .with_context(|| format!("cannot open {}", self.path().display()))
    }

    /// A new version directory holding `content`; returns its name.
    fn new_version(&mut self, content: &str) -> Result<String> {
        self.version += 1;
        let name = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&name))?;
        write_private(&self.dir.join(&name).join("map.yml"), content)?;
        Ok(name)
    }
}

/// Writes a temp file beside `path` and renames it over `path`, as editors save; returns when
/// the rename began.
pub(crate) fn replace_by_rename(path: &Path, content: &str) -> Result<Instant> {
    let tmp = path.with_extension("yml.tmp");
    write_private(&tmp, content)?;
    let renamed_at = Instant::now();
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename over {}", path.display()))?;
    Ok(renamed_at)
}

/// True for the event that ends a save: the close after an in-place write, or the rename that
/// puts the file (or the ConfigMap's `..data` link) in place.
fn ends_a_save(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
    let ends = matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To))
    );
    ends && event
        .paths
        .iter()
        .any(|p| p.ends_with("map.yml") || p.ends_with("..data"))
}

/// Save → the event that ends it, seen by a bare notify watcher in this process: the floor
/// under the daemon's figure, for any watcher that loads on that event.
fn notify_floor(style: Style, dir: &Path, count: u64) -> Result<Vec<f64>> {
    use notify::{RecursiveMode, Watcher};
    let mut saver = MapSaver::create(style, dir, &mapgen::reload_map("wf_a", 0))?;
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| ends_a_save(&event)) {
            let _ = tx.send(Instant::now());
        }
    })
    .context("cannot create a notify watcher")?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .context("cannot watch the scratch directory")?;
    let mut latencies = Vec::new();
    for serial in 1..=count {
        while rx.try_recv().is_ok() {}
        let started = saver.save(&mapgen::reload_map("wf_b", serial))?;
        let seen = rx
            .recv_timeout(SEEN_DEADLINE)
            .with_context(|| format!("notify reported no event for a save {}", style.label()))?;
        latencies.push(seen.saturating_duration_since(started).as_secs_f64() * 1e3);
        saver.tidy()?;
        std::thread::sleep(GAP);
    }
    Ok(latencies)
}

/// Probes until `PROBE_NAME` dispatches to `workflow`; how long after `since` it did, or `None`
/// if not within `SEEN_DEADLINE`.
fn seen_after(client: &mut Client, workflow: &str, since: Instant) -> Result<Option<Duration>> {
    let probe = mapgen::anomaly_body(mapgen::PROBE_NAME);
    loop {
        let answer = client.post_json("/anomaly", &probe)?.json()?;
        if answer["workflow"] == workflow {
            return Ok(Some(since.elapsed()));
        }
        if since.elapsed() > SEEN_DEADLINE {
            return Ok(None);
        }
        std::thread::sleep(PROBE_EVERY);
    }
}

/// The workflow serial `serial` sends the probe to: every save changes it.
fn workflow_for(serial: u64) -> &'static str {
    if serial % 2 == 1 {
        "wf_b"
    } else {
        "wf_a"
    }
}

/// What one save style measured on the daemon.
struct StyleRun {
    latencies: Vec<f64>,
    missed: u64,
    /// In-place only: paused saves whose first half the daemon put in force.
    half_loads: u64,
}

/// Save → first request that sees the new map, `count` times in `style`; then, in place, the
/// paused saves.
fn daemon_latency(bench: &Bench, style: Style, dir: &Path, count: u64) -> Result<StyleRun> {
    let mut saver = MapSaver::create(style, dir, &mapgen::reload_map("wf_a", 0))?;
    let daemon = bench.daemon(&saver.path(), &format!("reload-{}", style.slug()))?;
    let mut client = Client::new(daemon.addr);
    let mut run = StyleRun {
        latencies: Vec::new(),
        missed: 0,
        half_loads: 0,
    };
    for serial in 1..=count {
        let workflow = workflow_for(serial);
        let started = saver.save(&mapgen::reload_map(workflow, serial))?;
        match seen_after(&mut client, workflow, started)? {
            Some(latency) => run.latencies.push(latency.as_secs_f64() * 1e3),
            None => {
                run.missed += 1;
                // Put the daemon back in step before the next one.
                let answer = client.post_json("/-/reload", "")?;
                if answer.status != 200 {
                    bail!("POST /-/reload failed: {} {}", answer.status, answer.body);
                }
            }
        }
        saver.tidy()?;
        std::thread::sleep(GAP);
    }
    if let Style::InPlace = style {
        for serial in count + 1..=count + PAUSED_SAVES {
            let workflow = workflow_for(serial);
            let whole = mapgen::reload_map(workflow, serial);
            // The half ends with the probe's line: a valid map that already sends the probe to
            // the new workflow, so a half loaded shows in the probe's answer.
            let probe_line = format!("{}: {workflow}\n", mapgen::PROBE_NAME);
            let cut = whole
                .find(&probe_line)
                .map(|at| at + probe_line.len())
                .context("the reload map has no probe line")?;
            let mut file = saver.open_in_place()?;
            file.write_all(&whole.as_bytes()[..cut])?;
            let until = Instant::now() + PAUSE;
            let probe = mapgen::anomaly_body(mapgen::PROBE_NAME);
            while Instant::now() < until {
                if client.post_json("/anomaly", &probe)?.json()?["workflow"] == workflow {
                    run.half_loads += 1;
                    break;
                }
                std::thread::sleep(PROBE_EVERY);
            }
            file.write_all(&whole.as_bytes()[cut..])?;
            drop(file);
            if seen_after(&mut client, workflow, Instant::now())?.is_none() {
                run.missed += 1;
            }
            std::thread::sleep(GAP);
        }
    }
    Ok(run)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// The reload latency rows: for each save style, the daemon against the notify floor.
pub fn latency(bench: &Bench, report: &mut Report) -> Result<()> {
    let count = bench.settings.reloads as u64;
    let section = "reload";
    let mut missed = 0;
    let mut half_loads = 0;
    let mut floors = Vec::new();
    for style in Style::ALL {
        let floor_dir = bench.scratch.join(format!("notify-floor-{}", style.slug()));
        let mut floor = notify_floor(style, &floor_dir, count)?;
        let map_dir = bench.scratch.join(format!("reload-{}", style.slug()));
        let mut run = daemon_latency(bench, style, &map_dir, count)?;
        missed += run.missed;
        half_loads += run.half_loads;
        let (d_med, d_max) = (median(&mut run.latencies), max(&run.latencies));
        let (f_med, f_max) = (median(&mut floor), max(&floor));
        report.row(
            section,
            format!(
                "{}: save → request sees it, median of {}",
                style.label(),
                run.latencies.len()
            ),
            ms(d_med),
            ms(f_med),
            ratio(d_med, f_med),
            format!("≤ {MEDIAN_GOAL_MS} ms"),
            Verdict::of(d_med <= MEDIAN_GOAL_MS && !run.latencies.is_empty()),
        );
        report.row(
            section,
            format!("{}: save → request sees it, max", style.label()),
            ms(d_max),
            ms(f_max),
            ratio(d_max, f_max),
            format!("≤ {MAX_GOAL_MS} ms"),
            Verdict::of(d_max <= MAX_GOAL_MS && run.missed == 0),
        );
        floors.push(format!("{} {}", style.label(), ms(f_med)));
    }
    let saves = count * Style::ALL.len() as u64 + PAUSED_SAVES;
    report.row(
        section,
        format!("saves not seen within {SEEN_DEADLINE:?}"),
        format!("{missed} of {saves}"),
        "",
        "",
        "0",
        Verdict::of(missed == 0),
    );
    report.row(
        section,
        format!("in-place saves paused {PAUSE:?} mid-file: half loaded"),
        format!("{half_loads} of {PAUSED_SAVES}"),
        "",
        "",
        "0",
        Verdict::of(half_loads == 0),
    );
    report.note(format!(
        "reload: the reference is a bare notify watcher in the benchmark process seeing the \
         event that ends each save (the close after an in-place write, the rename otherwise; \
         medians {}), the floor under any watcher that loads on that event; the daemon adds \
         waking its reload thread, the read, the compile, the swap and the probe request (one \
         every {PROBE_EVERY:?} on a keep-alive connection). Each paused save writes a half that \
         is a valid map of its own, holds the file open {PAUSE:?} while the probe watches for \
         it, then finishes the file",
        floors.join(", ")
    ));
    Ok(())
}

/// The map replaced by rename every `REPLACE_EVERY` under wrk load: no request may fail.
pub fn under_load(bench: &Bench, report: &mut Report) -> Result<()> {
    let secs = bench.settings.reload_load_secs;
    let map_dir = bench.scratch.join("reload-load");
    std::fs::create_dir_all(&map_dir)?;
    let map = map_dir.join("map.yml");
    write_private(&map, &mapgen::reload_map("wf_a", 0))?;
    let daemon = bench.daemon(&map, "reload-under-load")?;
    let probe = mapgen::anomaly_body(mapgen::PROBE_NAME);
    expect_answer(&daemon, &probe, 202, "the daemon")?;

    // The reference: the same daemon under the same load, with the map left alone.
    let steady = bench
        .wrk
        .run(&daemon, "/anomaly", secs, "post.lua", &[probe.as_str()])?;

    let mut wrk = bench
        .wrk
        .spawn(&daemon.url("/anomaly"), secs, "post.lua", &[probe.as_str()])?;
    let mut renames = 0u64;
    let mut next = Instant::now();
    let deadline = Instant::now() + Duration::from_secs_f64(secs) + Duration::from_secs(30);
    while wrk.child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("wrk did not finish while the map was being replaced");
        }
        renames += 1;
        replace_by_rename(&map, &mapgen::reload_map(workflow_for(renames), renames))?;
        next += REPLACE_EVERY;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let under = load::finish(wrk)?;
    let generation = Client::new(daemon.addr).get("/reflexes")?.json()?["generation"]
        .as_u64()
        .context("no generation in GET /reflexes")?;
    let log = daemon.log.clone().context("no daemon log")?;
    let log_text = std::fs::read_to_string(&log)?;
    let rejected = log_text
        .lines()
        .filter(|l| l.contains("\"reflex map rejected\"") || l.contains("\"reflex map missing\""))
        .count();

    let section = "reload under load";
    let failed = under.socket_errors() + under.status;
    report.row(
        section,
        format!("failed requests, map replaced every {REPLACE_EVERY:?}"),
        format!("{failed} of {}", under.requests),
        format!(
            "{} of {}",
            steady.wrk.socket_errors() + steady.wrk.status,
            steady.wrk.requests
        ),
        "",
        "0",
        Verdict::of(failed == 0),
    );
    report.row(
        section,
        "requests/s while the map is replaced",
        format!("{:.0}", under.rps()),
        format!("{:.0}", steady.wrk.rps()),
        ratio(under.rps(), steady.wrk.rps()),
        "",
        Verdict::Info,
    );
    report.row(
        section,
        "replacements written / swaps done (generation)",
        format!("{renames} / {}", generation.saturating_sub(1)),
        "",
        "",
        "",
        Verdict::Info,
    );
    report.row(
        section,
        "maps rejected or missing during replacement",
        rejected.to_string(),
        "",
        "",
        "0",
        Verdict::of(rejected == 0),
    );
    report.note(
        "reload under load: the reference is the same daemon under the same wrk load for the \
         same time with the map left alone; each rename is loaded on its own event, so swaps \
         fall short of writes only when renames queue up while the reload thread is busy",
    );
    Ok(())
}
