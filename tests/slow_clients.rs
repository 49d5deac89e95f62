//! Slow clients (SPEC §8): a request arrives whole — header and body — within the read timeout,
//! and clients that trickle their bodies cannot keep a monitor out.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{Daemon, MapDir, DEADLINE};

const MAP: &str = "workflows: {page: {}}\nreflexes: {disk.full: page}\n";

/// Opens a connection and sends a POST head promising a body of 1000 bytes, plus its first byte.
fn start_trickling(daemon: &Daemon) -> TcpStream {
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .write_all(
            b"POST /anomaly HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{",
        )
        .unwrap();
    stream
}

/// True once the server has closed `stream` (end of stream, a reset, or a response sent before
/// closing); false while it is still open after `wait`.
fn is_closed(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer before the close
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn clients_trickling_their_bodies_cannot_keep_a_monitor_out() {
    let map = MapDir::new(MAP);
    // The read timeout is far beyond the test's deadline: only closing the slowest connection
    // can make room in time.
    let timeout = Duration::from_secs(60);
    let daemon = Daemon::start(
        &map.path(),
        &["--max-connections", "4", "--header-read-timeout", "60s"],
    );
    let mut tricklers: Vec<TcpStream> = Vec::new();
    for _ in 0..4 {
        tricklers.push(start_trickling(&daemon));
        // Each is admitted and has its head read before the next arrives, so their order is
        // the order their requests began in.
        std::thread::sleep(Duration::from_millis(50));
    }
    // A byte of body each, now and then: every slot is held by a request making progress.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let mut streams: Vec<TcpStream> =
            tricklers.iter().map(|s| s.try_clone().unwrap()).collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for stream in &mut streams {
                    let _ = stream.write_all(b" ");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let asked = Instant::now();
    let response = daemon.post_anomaly(&json!({"name": "disk.full"}));
    let waited = asked.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().unwrap();
    assert_eq!(response.status, 202, "{}", response.body);
    // Served long before any trickler's read timeout could have freed a slot.
    assert!(waited < timeout / 2, "the monitor waited {waited:?}");

    // The request that began first made room; the others are still being read.
    assert!(
        is_closed(&mut tricklers[0], DEADLINE),
        "the oldest trickler is closed"
    );
    for stream in &mut tricklers[1..] {
        assert!(!is_closed(stream, Duration::from_millis(100)));
    }
    let warning = daemon.wait_for_record("connection limit reached", |_| true);
    assert_eq!(warning["max_connections"], 4);
}

#[test]
fn header_and_body_share_one_read_timeout() {
    let map = MapDir::new(MAP);
    let timeout = Duration::from_secs(3);
    let daemon = Daemon::start(&map.path(), &["--header-read-timeout", "3s"]);
    let start = Instant::now();
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    // The header trickles in over 2.5 s, within its timeout...
    let head = b"POST /anomaly HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\n\r\n{\"name\":";
    for chunk in head.chunks(head.len().div_ceil(5)) {
        stream.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    // ...and the body never completes: the answer comes when the request's 3 s are up, not 3 s
    // after the header.
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    let after = start.elapsed();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains(r#"{"error":"the request was not received whole within 3s"}"#),
        "{text}"
    );
    assert!(after >= timeout - Duration::from_millis(100), "{after:?}");
    // A fresh timeout for the body would answer at 5.5 s at the earliest.
    assert!(after < Duration::from_millis(5000), "{after:?}");
}
