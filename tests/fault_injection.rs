//! Faults injected from outside the daemon (issue 13): a webhook target that takes the
//! connection and never answers. The daemon keeps serving, and every anomaly it answered gets
//! its finished record. (A command that ignores SIGTERM: `actions::timeout_kills_the_whole_
//! process_group`.)

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::util::{dispatch, finished, wait_until, Daemon, MapDir};

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
    let hung = dispatch(&daemon, "wedged.engine", json!({}));
    wait_until("the target to take the connection", || {
        target.connections() >= 1
    });

    // While the action hangs on the target (2 s per attempt), the daemon answers and acts on
    // other anomalies.
    assert_eq!(daemon.get("/healthz").status, 200);
    let other = dispatch(&daemon, "disk.full", json!({}));
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
