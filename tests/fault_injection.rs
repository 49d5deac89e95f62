//! Faults injected from outside the daemon (issue 13): a webhook target that takes the
//! connection and never answers, a command that ignores SIGTERM. For each, the daemon keeps
//! serving and every anomaly it answered gets its finished record.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::util::{wait_until, Daemon, MapDir};

fn yaml_str(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap()
}

fn dispatch(daemon: &Daemon, name: &str) -> String {
    let response = daemon.post_anomaly(&json!({"name": name}));
    assert_eq!(response.status, 202, "{}", response.body);
    response.json()["action_id"].as_str().unwrap().to_string()
}

fn finished(daemon: &Daemon, action_id: &str) -> Value {
    daemon.wait_for_record("healing action finished", |r| r["action_id"] == action_id)
}

/// A TCP server that accepts every connection and then neither reads nor writes: a workflow
/// engine wedged after `accept`. It holds what it accepted until it is dropped.
struct SilentServer {
    url: String,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let held = accepted.clone();
        // The thread ends with the test process; the listener is never closed before that.
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                held.lock().unwrap().push(stream);
            }
        });
        SilentServer { url, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

#[test]
fn a_webhook_target_that_never_answers_times_out_while_the_daemon_serves_on() {
    let target = SilentServer::start();
    let map = MapDir::new(&format!(
        "workflows:
  hook: {{webhook: {{url: '{}', timeout: 2s, retries: 1}}}}
  page: {{}}
reflexes: {{wedged.engine: hook, disk.full: page}}
",
        target.url
    ));
    let daemon = Daemon::start(&map.path(), &[]);
    let hung = dispatch(&daemon, "wedged.engine");
    wait_until("the target to take the connection", || {
        target.connections() >= 1
    });

    // While the action hangs on the target (2 s per attempt), the daemon answers and acts on
    // other anomalies.
    assert_eq!(daemon.get("/healthz").status, 200);
    let other = dispatch(&daemon, "disk.full");
    assert_eq!(finished(&daemon, &other)["outcome"], "ok");
    let running = daemon.get("/actions").json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action_id"] == hung)
        .cloned()
        .expect("the hung action is listed");
    assert_eq!(running["outcome"], "running");

    let record = finished(&daemon, &hung);
    assert_eq!(record["outcome"], "timeout", "{record}");
    assert_eq!(record["attempts"], 2, "{record}");
    assert!(record.get("http_status").is_none(), "{record}");
    assert_eq!(target.connections(), 2, "one connection per attempt");
    assert_eq!(daemon.get("/healthz").status, 200);
}

#[test]
fn a_command_that_ignores_sigterm_is_killed_at_its_timeout() {
    let map = MapDir::new("reflexes: {}\n");
    let (main_pid, child_pid) = (map.file("main.pid"), map.file("child.pid"));
    // Both the command and the child it starts ignore SIGTERM (an ignored signal stays ignored
    // across fork and exec).
    let script = map.script(
        "stubborn.sh",
        &format!(
            "trap '' TERM\nsleep 300 &\necho $! > {child}\necho $$ > {main}\nwhile :; do wait; done",
            child = child_pid.display(),
            main = main_pid.display()
        ),
    );
    map.write_in_place(&format!(
        "workflows:\n  stubborn:\n    exec: {{command: [sh, {}], timeout: 1s}}\nreflexes:\n  probe: stubborn\n",
        yaml_str(&script)
    ));
    let daemon = Daemon::start(&map.path(), &[]);
    let id = dispatch(&daemon, "probe");
    let record = finished(&daemon, &id);
    assert_eq!(record["outcome"], "timeout", "{record}");
    assert_eq!(
        record["error"],
        "timed out after 1s; killed its process group"
    );
    for pidfile in [&main_pid, &child_pid] {
        let pid = std::fs::read_to_string(pidfile).unwrap();
        let pid = pid.trim();
        wait_until(&format!("process {pid} to be gone"), || {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                // A killed child of init may linger as a zombie until it is reaped.
                Ok(stat) => stat.split_whitespace().nth(2) == Some("Z"),
            }
        });
    }
    assert_eq!(daemon.get("/healthz").status, 200);
}
