//! Security (SPEC §6): bearer-token auth, slow clients cut off, and a connection cap that a
//! flood of idle connections cannot turn against a fresh client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::util::{daemon_command, wait_until, Daemon, MapDir, DEADLINE};

const MAP: &str = "workflows:\n  page: {}\nreflexes:\n  disk.full: page\n";

/// A map directory with a token file `token` beside `map.yml`.
fn with_token(token: &str) -> MapDir {
    let map = MapDir::new(MAP);
    crate::util::write_private(&map.file("token"), token);
    map
}

#[test]
fn a_token_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let map = with_token("s3cret\n");
    let daemon = start_with_token(&map);
    assert!(daemon
        .records_with("token file readable by others")
        .is_empty());
    drop(daemon);
    std::fs::set_permissions(map.file("token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let daemon = start_with_token(&map);
    let warning = daemon.wait_for_record("token file readable by others", |_| true);
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["mode"], "0644");
}

fn start_with_token(map: &MapDir) -> Daemon {
    let token = map.file("token").display().to_string();
    Daemon::start(&map.path(), &["--token-file", &token])
}

fn get_with(daemon: &Daemon, path: &str, authorization: &str) -> crate::util::Response {
    daemon.request("GET", path, &[("Authorization", authorization)], b"")
}

#[test]
fn every_endpoint_but_healthz_needs_the_token() {
    let map = with_token("  s3cret-token\n");
    let daemon = start_with_token(&map);

    let missing = daemon.get("/reflexes");
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        missing.json(),
        json!({"error": "this endpoint needs an `Authorization: Bearer <token>` header"})
    );
    let wrong = get_with(&daemon, "/reflexes", "Bearer s3cret-tokem");
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.json(),
        json!({"error": "the bearer token is not valid"})
    );
    assert_eq!(
        get_with(&daemon, "/reflexes", "Basic s3cret-token").status,
        401
    );
    // Unknown paths and wrong methods say nothing before the token is checked.
    assert_eq!(daemon.get("/no-such-path").status, 401);
    assert_eq!(daemon.request("POST", "/anomaly", &[], b"{}").status, 401);

    let right = get_with(&daemon, "/reflexes", "Bearer s3cret-token");
    assert_eq!(right.status, 200, "{}", right.body);
    let anomaly = daemon.request(
        "POST",
        "/anomaly",
        &[
            ("Authorization", "bearer s3cret-token"),
            ("Content-Type", "application/json"),
        ],
        br#"{"name":"disk.full"}"#,
    );
    assert_eq!(anomaly.status, 202, "{}", anomaly.body);

    for open in ["/healthz", "/health"] {
        let response = daemon.get(open);
        assert_eq!(response.status, 200, "{open}");
        assert_eq!(response.json(), json!({"status": "ok"}));
    }
}

#[test]
fn the_token_file_is_reread_on_sighup_and_a_bad_one_is_not_taken() {
    let map = with_token("first");
    let daemon = start_with_token(&map);
    assert_eq!(get_with(&daemon, "/reflexes", "Bearer first").status, 200);

    std::fs::write(map.file("token"), "second\n").unwrap();
    daemon.signal(Signal::SIGHUP);
    wait_until("the new token to be in force", || {
        get_with(&daemon, "/reflexes", "Bearer second").status == 200
    });
    assert_eq!(get_with(&daemon, "/reflexes", "Bearer first").status, 401);
    daemon.wait_for_record("token file loaded", |_| true);

    // An emptied file is refused; the token in force stays.
    std::fs::write(map.file("token"), "\n").unwrap();
    daemon.signal(Signal::SIGHUP);
    let rejected = daemon.wait_for_record("token file rejected", |_| true);
    assert_eq!(rejected["level"], "ERRO");
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .ends_with("the token file is empty"),
        "{rejected}"
    );
    assert_eq!(get_with(&daemon, "/reflexes", "Bearer second").status, 200);
    // The token never appears in the log.
    assert!(!daemon.stderr().contains("second"), "{}", daemon.stderr());
}

#[test]
fn an_empty_or_missing_token_file_stops_startup_with_exit_78() {
    let map = with_token(" \n");
    let token = map.file("token").display().to_string();
    let failure = Daemon::try_start(&map.path(), &["--token-file", &token])
        .err()
        .expect("must not start");
    failure.assert_exit(78, &format!("{token}: the token file is empty"));

    let missing = map.file("missing").display().to_string();
    let failure = Daemon::try_start(&map.path(), &["--token-file", &missing])
        .err()
        .expect("must not start");
    failure.assert_exit(78, "cannot read the token file");
}

#[test]
fn listening_beyond_loopback_without_a_token_warns() {
    let map = with_token("t");
    let daemon = Daemon::launch(daemon_command(&map.path(), &["--listen", "0.0.0.0:0"]));
    let warning = daemon.wait_for_record("listening without a token", |_| true);
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["addr"], daemon.addr.to_string());

    let token = map.file("token").display().to_string();
    let daemon = Daemon::launch(daemon_command(
        &map.path(),
        &["--listen", "0.0.0.0:0", "--token-file", &token],
    ));
    let loopback = Daemon::start(&map.path(), &[]);
    for mut quiet in [daemon, loopback] {
        quiet.get("/healthz");
        // Everything it will ever write is read once it has exited.
        quiet.signal(Signal::SIGTERM);
        quiet.wait_exit();
        assert!(quiet.records_with("listening without a token").is_empty());
    }
}

/// Reads until the server closes the connection; returns what it sent and when it closed.
fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the server did not close the connection within {DEADLINE:?}")
            }
            Err(_) => break, // reset: closed too
        }
    }
    (received, Instant::now())
}

#[test]
fn slow_clients_are_cut_off_at_the_read_timeout() {
    let map = MapDir::new(MAP);
    let daemon = Daemon::start(&map.path(), &["--header-read-timeout", "1s"]);
    let timeout = Duration::from_secs(1);

    // A slowloris: a header trickling in, one line every 200 ms, never finished.
    let start = Instant::now();
    let mut slowloris = TcpStream::connect(daemon.addr).unwrap();
    slowloris
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let trickle = {
        let mut stream = slowloris.try_clone().unwrap();
        std::thread::spawn(move || {
            for i in 0..100 {
                std::thread::sleep(Duration::from_millis(200));
                if stream
                    .write_all(format!("X-{i}: y\r\n").as_bytes())
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    // A client that connects and says nothing.
    let mut silent = TcpStream::connect(daemon.addr).unwrap();
    let (_, silent_closed) = read_until_closed(&mut silent);
    let (_, slowloris_closed) = read_until_closed(&mut slowloris);
    trickle.join().unwrap();
    for closed in [silent_closed, slowloris_closed] {
        let after = closed - start;
        assert!(after >= timeout - Duration::from_millis(100), "{after:?}");
        assert!(after < timeout + Duration::from_secs(3), "{after:?}");
    }

    // A keep-alive connection gone idle after its request is closed the same way.
    let mut idle = TcpStream::connect(daemon.addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let served = Instant::now();
    let (received, closed) = read_until_closed(&mut idle);
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200"));
    assert!(closed - served < timeout + Duration::from_secs(3));

    // A body that trickles in gets 408 at the same deadline.
    let mut slow_body = TcpStream::connect(daemon.addr).unwrap();
    slow_body
        .write_all(
            b"POST /anomaly HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"name\":",
        )
        .unwrap();
    let (received, _) = read_until_closed(&mut slow_body);
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains(r#"{"error":"the request was not received whole within 1s"}"#),
        "{text}"
    );
}

#[test]
fn a_flood_of_idle_connections_cannot_lock_out_a_fresh_client() {
    let map = MapDir::new(MAP);
    // The header timeout is far beyond the test's deadline: only eviction can make room.
    let daemon = Daemon::start(
        &map.path(),
        &["--max-connections", "8", "--header-read-timeout", "60s"],
    );
    let flood: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(daemon.addr).unwrap())
        .collect();
    let start = Instant::now();
    let response = daemon.get("/healthz");
    assert_eq!(response.status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // The flood was admitted, then displaced: at most the cap of it is still open.
    let mut closed = 0;
    for mut stream in flood {
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = [0u8; 16];
        if !matches!(stream.read(&mut buf), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 40 - 8,
        "only {closed} of 40 idle connections were closed"
    );
    let warning = daemon.wait_for_record("connection limit reached", |_| true);
    assert_eq!(warning["max_connections"], 8);
    assert_eq!(
        daemon.records_with("connection limit reached").len(),
        1,
        "reported once per episode"
    );

    // The episode is over once the flood is gone; clients keep being served.
    for _ in 0..3 {
        assert_eq!(daemon.get("/healthz").status, 200);
    }
}
