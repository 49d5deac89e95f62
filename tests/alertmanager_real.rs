//! Against a real Prometheus Alertmanager (Debian's `prometheus-alertmanager`, 0.25): its webhook
//! receiver points at the daemon; alerts posted to its v2 API reach the daemon, each is acted on
//! once though Alertmanager re-sends it, and its resolution is logged.
//!
//! Skipped, with a line on stderr, when Alertmanager is not installed; `.ci/run` installs it and
//! sets `AUTOHEALER_REQUIRE_ALERTMANAGER=1`, which turns the skip into a failure.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::util::{request_bytes, send_raw, wait_until, Daemon, MapDir, Response};

/// Set to make a missing Alertmanager fail the test instead of skipping it.
const REQUIRE_ENV: &str = "AUTOHEALER_REQUIRE_ALERTMANAGER";

/// Debian names the binary `prometheus-alertmanager`; upstream's tarball `alertmanager`.
fn find_alertmanager() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["prometheus-alertmanager", "alertmanager"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A running Alertmanager with its config and storage in a temp dir, killed on drop.
struct Alertmanager {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts `binary` with one webhook receiver that posts to `webhook`, grouping by alertname
    /// with short waits so notifications come within the test's deadline.
    fn start(binary: &PathBuf, webhook: &str) -> Alertmanager {
        let dir = tempfile::tempdir().expect("create temp dir");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:
  receiver: autohealer
  group_by: [alertname]
  group_wait: 50ms
  group_interval: 300ms
  repeat_interval: 1h
receivers:
  - name: autohealer
    webhook_configs:
      - url: {webhook}
        send_resolved: true
        max_alerts: 0
"
            ),
        )
        .expect("write alertmanager.yml");
        // Alertmanager takes an address, not a socket: a port free a moment ago is the best we can
        // hand it (a clash fails the start loudly, it cannot pass silently).
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
            probe.local_addr().expect("local addr")
        };
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("create log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // An empty address disables clustering: no gossip port, no peers to wait for.
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn alertmanager");
        let alertmanager = Alertmanager { child, addr, dir };
        wait_until("Alertmanager to be ready", || {
            alertmanager.get("/-/ready").is_ok_and(|r| r.status == 200)
        });
        alertmanager
    }

    fn get(&self, path: &str) -> std::io::Result<Response> {
        send_raw(self.addr, &request_bytes("GET", path, &[], b""))
    }

    /// Posts alerts to the v2 API, as Prometheus does.
    fn post_alerts(&self, alerts: &Value) {
        let body = alerts.to_string();
        let response = send_raw(
            self.addr,
            &request_bytes(
                "POST",
                "/api/v2/alerts",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            ),
        )
        .expect("post alerts to Alertmanager");
        assert_eq!(response.status, 200, "{}", response.body);
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("alertmanager.log"));
            eprintln!("Alertmanager's log:\n{}", log.unwrap_or_default());
        }
    }
}

fn nginx_alert(instance: &str) -> Value {
    json!({
        "labels": {"alertname": "NginxDown", "anomaly": format!("nginx.{instance}.down"), "instance": instance},
        "annotations": {"summary": format!("nginx on {instance} is down")},
        "generatorURL": "http://prometheus.test/graph?g0.expr=up",
    })
}

#[test]
fn alerts_from_a_real_alertmanager_are_acted_on_once() {
    let Some(binary) = find_alertmanager() else {
        assert!(
            std::env::var_os(REQUIRE_ENV).is_none(),
            "{REQUIRE_ENV} is set but prometheus-alertmanager is not on PATH"
        );
        // Straight to stderr: the test harness captures eprintln! of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED alertmanager_real: prometheus-alertmanager is not installed \
             (apt-get install prometheus-alertmanager)"
        );
        return;
    };
    let map = MapDir::new("workflows:\n  restart: {}\nreflexes:\n  'nginx.*.down': restart\n");
    // Debug level shows the `duplicate alert` record of each re-send.
    let daemon = Daemon::start(&map.path(), &["--log-level", "debug"]);
    let alertmanager =
        Alertmanager::start(&binary, &format!("http://{}/alertmanager", daemon.addr));
    let is = |anomaly: &'static str| move |r: &Value| r["anomaly"] == anomaly;

    alertmanager.post_alerts(&json!([nginx_alert("web1")]));
    let triggered = daemon.wait_for_record("healing action triggered", is("nginx.web1.down"));
    assert_eq!(triggered["source"], "alertmanager");
    assert_eq!(triggered["workflow"], "restart");
    let details = &triggered["details"];
    assert_eq!(details["labels"]["instance"], "web1");
    assert_eq!(details["annotations"]["summary"], "nginx on web1 is down");
    assert_eq!(
        details["generatorURL"],
        "http://prometheus.test/graph?g0.expr=up"
    );
    assert!(details["fingerprint"]
        .as_str()
        .is_some_and(|f| !f.is_empty()));
    assert!(details["startsAt"].as_str().is_some_and(|s| !s.is_empty()));

    // A second alert in the group: Alertmanager re-sends web1 beside it.
    alertmanager.post_alerts(&json!([nginx_alert("web2")]));
    daemon.wait_for_record("healing action triggered", is("nginx.web2.down"));
    let duplicate = daemon.wait_for_record("duplicate alert", is("nginx.web1.down"));
    assert_eq!(duplicate["fingerprint"], details["fingerprint"]);
    let web1_actions = || {
        daemon
            .records_with("healing action triggered")
            .into_iter()
            .filter(is("nginx.web1.down"))
            .count()
    };
    assert_eq!(web1_actions(), 1, "web1 was acted on once");

    // Resolve web1: Alertmanager sends it as resolved, which is logged and not acted on.
    let mut resolved = nginx_alert("web1");
    let now = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(1));
    resolved["endsAt"] = json!(now.to_string());
    alertmanager.post_alerts(&json!([resolved]));
    let record = daemon.wait_for_record("alert resolved", is("nginx.web1.down"));
    assert_eq!(record["source"], "alertmanager");
    assert_eq!(record["fingerprint"], details["fingerprint"]);
    assert_eq!(web1_actions(), 1, "a resolved alert runs nothing");
}
