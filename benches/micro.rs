//! Criterion micro-benchmarks of the functions every `POST /anomaly` runs: matching, request
//! parsing, record formatting, and the whole dispatch; and of the state file (`--state-dir`)
//! with 100,000 cooldown keys, written and read back. Each group has a `reference…` entry
//! (plain std / serde_json work of the same shape) that the system benchmark's report divides
//! by. Run with `cargo bench --bench micro` (bench/run.sh does, with short timings);
//! `BENCH_MICRO_WARMUP_SECS` and `BENCH_MICRO_SECS` set criterion's times.

#[path = "support/mapgen.rs"]
mod mapgen;

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use serde::Serialize;
use slog::{o, Drain, Logger};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use autohealer::actions::ActionRun;
use autohealer::anomaly::{Anomaly, Details, Source};
use autohealer::dispatch::Dispatcher;
use autohealer::log::json::JsonLines;
use autohealer::log::records;
use autohealer::map::{self, ReflexMap};
use autohealer::rails::state::StateFile;
use autohealer::rails::{NewSilence, Rails};

/// The scale map's size, as in the system benchmark and SPEC §7.
const SCALE_EXACT: usize = 100_000;
const SCALE_PATTERNS: usize = 1_000;

fn compile(text: &str) -> ReflexMap {
    map::compile(Path::new("bench.yml"), text)
        .unwrap_or_else(|err| panic!("the generated map does not compile: {err}"))
}

fn small_map() -> &'static ReflexMap {
    static MAP: OnceLock<ReflexMap> = OnceLock::new();
    MAP.get_or_init(|| compile(&mapgen::throughput_map()))
}

fn scale_map() -> &'static ReflexMap {
    static MAP: OnceLock<ReflexMap> = OnceLock::new();
    MAP.get_or_init(|| compile(&mapgen::scale_map(SCALE_EXACT, SCALE_PATTERNS)))
}

/// A logger that formats JSON records synchronously, as the daemon's request threads do, into a
/// writer that throws the bytes away.
fn json_sink_logger() -> Logger {
    Logger::root(Mutex::new(JsonLines::new(io::sink())).fuse(), o!())
}

/// The same through slog-json, which formatted the daemon's records until issue 5, into a
/// buffer as the daemon did (a sink would skip copying the bytes that `json_log` must copy);
/// the buffer is emptied once the record's closing newline arrives.
fn slog_json_buffer_logger() -> Logger {
    struct LineBuffer(Vec<u8>);
    impl Write for LineBuffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.extend_from_slice(bytes);
            if bytes.ends_with(b"\n") {
                self.0.clear();
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let json = slog_json::Json::new(LineBuffer(Vec::with_capacity(1024)))
        .add_default_keys()
        .build();
    Logger::root(Mutex::new(json).fuse(), o!())
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    let small = small_map();
    let scale = scale_map();
    let cases: [(&str, &ReflexMap, String); 6] = [
        (
            "small map, exact",
            small,
            mapgen::THROUGHPUT_NAME.to_string(),
        ),
        ("small map, pattern", small, "nginx.web1.down".to_string()),
        ("small map, miss", small, "miss.m1.latency.high".to_string()),
        ("100k map, exact", scale, mapgen::exact_name(54_321)),
        ("100k map, pattern", scale, mapgen::pattern_hit(777, 3)),
        ("100k map, miss", scale, mapgen::miss_name(4242)),
    ];
    // No details: the maps have no conditions, so none are read.
    let none = Details::empty();
    for (label, map, name) in &cases {
        group.bench_function(*label, |b| {
            b.iter(|| map.select(black_box(name), &none).is_some())
        });
    }
    // The system benchmark's request mix (exact names, pattern hits, misses), one name per
    // call, against the scale map and its one-reflex baseline.
    let mix = mapgen::mixed_names(SCALE_EXACT, SCALE_PATTERNS, 3000);
    let baseline = compile(&mapgen::one_reflex_map());
    for (label, map) in [
        ("100k map, 3000-name mix", scale),
        ("one-reflex map, 3000-name mix", &baseline),
    ] {
        let mut next = 0;
        group.bench_function(label, |b| {
            b.iter(|| {
                next = (next + 1) % mix.len();
                map.select(black_box(&mix[next]), &none).is_some()
            })
        });
    }
    // The floor for an exact name: one std HashMap lookup in a table of the same size.
    let table: HashMap<String, usize> = (0..SCALE_EXACT)
        .map(|i| (mapgen::exact_name(i), i))
        .collect();
    let name = mapgen::exact_name(54_321);
    group.bench_function("reference: std HashMap get, 100k", |b| {
        b.iter(|| table.get(black_box(name.as_str())).copied())
    });
    group.finish();
}

fn parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let body = mapgen::anomaly_body("api_latency.coinbase.high");
    group.bench_function("Anomaly::from_json", |b| {
        b.iter(|| Anomaly::from_json(black_box(body.as_bytes())).map(|a| a.name.len()))
    });
    group.bench_function("reference: serde_json Value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body.as_bytes())).is_ok())
    });
    group.finish();
}

fn sample_run(map: &ReflexMap) -> ActionRun {
    let anomaly = Anomaly::from_json(mapgen::anomaly_body(mapgen::THROUGHPUT_NAME).as_bytes())
        .unwrap_or_else(|err| panic!("sample body: {err}"));
    let selected = map
        .select(&anomaly.name, &anomaly.details)
        .unwrap_or_else(|| panic!("the small map has no reflex for {}", anomaly.name));
    let (params, workflow) = (selected.case.params.clone(), selected.workflow.clone());
    ActionRun {
        action_id: autohealer::actions::ActionId::new(uuid::Uuid::now_v7()),
        anomaly: anomaly.name,
        workflow,
        details: Arc::new(anomaly.details),
        params,
        source: Source::Http,
        map_version: Arc::from("0123456789ab"),
        dry_run: false,
        received_at: SystemTime::now(),
        escalated_from: None,
    }
}

/// The triggered record's keys as a plain struct: what serde_json alone costs for them.
#[derive(Serialize)]
struct TriggeredLine<'a> {
    msg: &'static str,
    level: &'static str,
    ts: String,
    action_id: uuid::Uuid,
    anomaly: &'a str,
    workflow: &'a str,
    action: &'static str,
    source: &'static str,
    map_version: &'a str,
    details: &'a serde_json::Map<String, serde_json::Value>,
    params: &'a serde_json::Map<String, serde_json::Value>,
    dry_run: bool,
}

fn record_formatting(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    let run = sample_run(small_map());
    let sync_log = json_sink_logger();
    group.bench_function("healing action triggered, json_log", |b| {
        b.iter(|| records::action_triggered(&sync_log, black_box(&run)))
    });
    let slog_json_log = slog_json_buffer_logger();
    group.bench_function(
        "healing action triggered, slog-json (before issue 5)",
        |b| b.iter(|| records::action_triggered(&slog_json_log, black_box(&run))),
    );
    let mut out = Vec::with_capacity(1024);
    group.bench_function("reference: serde_json of the same keys", |b| {
        b.iter(|| {
            out.clear();
            let line = TriggeredLine {
                msg: "healing action triggered",
                level: "CRIT",
                ts: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
                action_id: run.action_id.uuid(),
                anomaly: &run.anomaly,
                workflow: &run.workflow.name,
                action: run.workflow.action.kind(),
                source: run.source.as_str(),
                map_version: &run.map_version,
                details: run.details.object(),
                params: &run.params,
                dry_run: run.dry_run,
            };
            serde_json::to_writer(&mut out, black_box(&line)).map_err(io::Error::from)?;
            out.push(b'\n');
            io::sink().write_all(&out)
        })
    });
    group.finish();
}

/// A dispatcher on `text` (written to a temp file and loaded as the daemon loads it), logging
/// synchronously to a sink.
fn dispatcher(dir: &Path, name: &str, text: &str) -> Dispatcher {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    let loaded = map::load(&path, 1).unwrap_or_else(|err| panic!("load: {err}"));
    Dispatcher::new(
        Arc::new(ArcSwap::from_pointee(loaded)),
        json_sink_logger(),
        TaskTracker::new(),
        CancellationToken::new(),
        false,
    )
}

/// `dispatcher` with ten silences in force, none covering the benchmark's names: what every
/// anomaly pays to be checked against them (SPEC §11).
fn silenced(dispatcher: Dispatcher) -> Dispatcher {
    for i in 0..10 {
        let silence = NewSilence::new(&format!("maint.{i}.**"), "1h", "")
            .unwrap_or_else(|err| panic!("silence: {err}"));
        dispatcher
            .add_silence(silence)
            .unwrap_or_else(|err| panic!("silence: {err}"));
    }
    dispatcher
}

fn dispatching(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("temp dir: {err}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("runtime: {err}"));
    let cases = [
        (
            "reference: parse + dispatch, small map",
            dispatcher(dir.path(), "small.yml", &mapgen::throughput_map()),
            mapgen::anomaly_body(mapgen::THROUGHPUT_NAME),
        ),
        (
            "parse + dispatch, 100k map, exact",
            dispatcher(
                dir.path(),
                "scale.yml",
                &mapgen::scale_map(SCALE_EXACT, SCALE_PATTERNS),
            ),
            mapgen::anomaly_body(&mapgen::exact_name(54_321)),
        ),
        (
            "parse + dispatch, small map, 10 silences covering other names",
            silenced(dispatcher(
                dir.path(),
                "silenced.yml",
                &mapgen::throughput_map(),
            )),
            mapgen::anomaly_body(mapgen::THROUGHPUT_NAME),
        ),
    ];
    for (label, dispatcher, body) in &cases {
        group.bench_function(*label, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let anomaly = Anomaly::from_json(body.as_bytes())
                        .unwrap_or_else(|err| panic!("body: {err}"));
                    let outcome = dispatcher.dispatch(anomaly, Source::Http);
                    // Let the spawned log-only action run and write its finished record.
                    tokio::task::yield_now().await;
                    outcome
                })
            })
        });
    }
    group.finish();
}

/// Cooldown keys in the state-file benchmark: ten reflexes' tables full (SPEC §8 bounds each at
/// 10,000), the most a flood of distinct names can make the daemon remember in ten patterns.
const STATE_KEYS: usize = 100_000;

/// Rails holding `STATE_KEYS` cooldown keys, as a flood across ten pattern reflexes leaves them.
fn rails_with_cooldown_keys() -> Rails {
    let tables = STATE_KEYS / autohealer::rails::MAX_KEYS_PER_REFLEX;
    let mut text = String::from("workflows: {page: {}}\nreflexes:\n");
    for t in 0..tables {
        text.push_str(&format!(
            "  'flood{t}.**': {{workflow: page, cooldown: 1h}}\n"
        ));
    }
    let map = compile(&text);
    let rails = Rails::default();
    let now = tokio::time::Instant::now();
    let details = Details::empty();
    for i in 0..STATE_KEYS {
        let name = format!("flood{}.host-{i:06}.disk.full", i % tables);
        let selected = map.select(&name, &details).expect("a flood reflex matches");
        let admitted = rails.admit(&map, selected, &Arc::from(name.as_str()), &name, now);
        assert!(admitted.result.is_ok(), "{name} was held back");
    }
    rails
}

/// The state file (SPEC §9, §11): writing and reading back 100,000 cooldown keys, against
/// writing the same bytes with the same fsync, the floor under any format.
fn state_file(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rails = rails_with_cooldown_keys();
    let file = StateFile::new(dir.path().to_path_buf(), vec![Arc::new(rails)]);
    let bytes = file.save().expect("the state file is written");
    let written = std::fs::read(file.path()).expect("the state file is read");
    println!(
        "state file with {STATE_KEYS} cooldown keys: {bytes} bytes ({:.1} MiB, {:.0} bytes a key)",
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / STATE_KEYS as f64
    );
    let mut group = c.benchmark_group("state");
    // Each run writes megabytes and waits for the disk: ten samples say enough.
    group.sample_size(10);
    group.bench_function(
        "save 100k cooldown keys: copy, JSON, write, fsync, rename",
        |b| b.iter(|| file.save().expect("the state file is written")),
    );
    group.bench_function("restore 100k cooldown keys", |b| {
        b.iter(|| {
            let restored = Rails::default();
            let again = StateFile::new(dir.path().to_path_buf(), vec![Arc::new(restored)]);
            black_box(again.restore())
        })
    });
    let floor = dir.path().join("floor");
    group.bench_function("reference: write and fsync the same bytes", |b| {
        b.iter(|| {
            let mut out = std::fs::File::create(&floor).expect("create");
            out.write_all(&written).expect("write");
            out.sync_all().expect("fsync");
        })
    });
    group.finish();
}

fn config() -> Criterion {
    let secs = |name: &str, default: f64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(Duration::from_secs_f64(default), Duration::from_secs_f64)
    };
    Criterion::default()
        .warm_up_time(secs("BENCH_MICRO_WARMUP_SECS", 1.0))
        .measurement_time(secs("BENCH_MICRO_SECS", 3.0))
}

criterion_group! {
    name = micro;
    config = config();
    targets = matching, parsing, record_formatting, dispatching, state_file
}
criterion_main!(micro);
