//! The bound on per-key rail state (SPEC §8 "Bounded state"): a flood of distinct names under
//! one pattern fills that reflex's table to its bound and no further; new keys then share one
//! cooldown, the overflow is reported once, the keys that fit are not forgotten, and the
//! daemon's memory stays flat.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use serde_json::{json, Value};

use super::suppressed;
use crate::util::{Daemon, MapDir, DEADLINE};

/// Keys one reflex's table holds (`rails::MAX_KEYS_PER_REFLEX`, as the README states it).
const MAX_KEYS_PER_REFLEX: usize = 10_000;

/// One keep-alive connection posting anomalies one after another: a flood without a new
/// connection per request.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(daemon: &Daemon) -> Client {
        let stream = TcpStream::connect(daemon.addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    /// Posts `name` and returns the answer's status and body.
    fn post(&mut self, name: &str) -> (u16, Value) {
        let body = json!({"name": name}).to_string();
        let request = format!(
            "POST /anomaly HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }
}

/// The daemon's resident memory, in KiB.
fn rss_kib(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_flood_of_names_fills_one_reflexs_table_to_its_bound_and_no_further() {
    let map = MapDir::new(
        "workflows: {page: {}}\nreflexes:\n  'flood.*': {workflow: page, cooldown: 1h}\n",
    );
    let daemon = Daemon::start(&map.path(), &[]);
    let mut client = Client::connect(&daemon);
    for i in 0..MAX_KEYS_PER_REFLEX {
        let (status, body) = client.post(&format!("flood.{i}"));
        assert_eq!(status, 202, "flood.{i}: {body}");
    }
    // Full: the first new key runs and starts the one cooldown every new key then shares.
    let (status, _) = client.post("flood.new1");
    assert_eq!(status, 202);
    let warned = daemon.wait_for_record("rail state overflow", |_| true);
    assert_eq!(warned["level"], "WARN");
    assert_eq!(warned["reflex"], "flood.*");
    assert_eq!(warned["max_keys"], MAX_KEYS_PER_REFLEX);
    suppressed(&daemon, "flood.new2", json!({}), "cooldown");
    // The keys that fit are remembered: more suppression, never less.
    suppressed(&daemon, "flood.0", json!({}), "cooldown");
    suppressed(&daemon, "flood.9999", json!({}), "cooldown");

    // Memory stays flat while the flood goes on.
    let before = rss_kib(&daemon);
    for i in 0..MAX_KEYS_PER_REFLEX {
        let (status, body) = client.post(&format!("flood.more{i}"));
        assert_eq!(
            (status, &body["reason"]),
            (200, &json!("cooldown")),
            "{body}"
        );
    }
    let after = rss_kib(&daemon);
    assert!(
        after < before + 1024,
        "RSS grew from {before} KiB to {after} KiB under a flood of new names"
    );
    // Reported at most once a minute, however many keys overflowed.
    assert_eq!(daemon.records_with("rail state overflow").len(), 1);
}
