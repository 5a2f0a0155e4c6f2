//! PostgreSQL faults: an unreachable database at start is a clear error; a database lost while
//! running gives 503 problems, and work resumes when it returns, with nothing accepted lost.
//! The loss is simulated with a TCP proxy the test cuts, so the shared server is untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{agent, drop_schema, free_port, kiln_serve, postgres_args, postgres_available};
use serde_json::Value;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const UPSTREAM: &str = "127.0.0.1:5432";

/// Forwards connections to PostgreSQL until cut.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cut_flag, connections) = (Arc::clone(&cut), Arc::clone(&open));
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if cut_flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(UPSTREAM) else { continue };
                connections.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status_of(url: &str) -> u16 {
    agent().get(url).call().map_or(0, |r| r.status().as_u16())
}

#[test]
fn an_unreachable_database_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--database-url", "postgres://postgres@127.0.0.1:1/test"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach PostgreSQL"), "{stderr}");
}

#[test]
fn losing_the_database_gives_503_and_work_resumes_when_it_returns() {
    if !postgres_available() {
        return;
    }
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("kiln_loss_{}", std::process::id());
    let url = format!("postgres://postgres@127.0.0.1:{}/test", proxy.port);
    let public = free_port();
    let base = format!("http://127.0.0.1:{public}");
    let mut node = kiln_serve(dir.path(), (public, free_port()), &postgres_args(&url, &schema, 3));
    wait_for("readiness", || status_of(&format!("{base}/readyz")) == 200);

    let mut accepted = agent()
        .post(format!("{base}/api/approvals"))
        .header("content-type", "application/json")
        .send(r#"{"subject":"outage","timeout_seconds":2}"#)
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let accepted: Value = serde_json::from_str(&accepted.body_mut().read_to_string().unwrap()).unwrap();
    let location = accepted["statusQueryGetUri"].as_str().unwrap().to_owned();

    proxy.cut();
    let mut refused = agent()
        .post(format!("{base}/api/jobs/reports"))
        .header("content-type", "application/json")
        .send(r#"{"customer_id":"c","operation":"daily","delay_seconds":0}"#)
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers().get("content-type").unwrap(), "application/problem+json");
    let _ = refused.body_mut().read_to_string();
    assert_eq!(status_of(&location), 503);
    assert_eq!(status_of(&format!("{base}/readyz")), 503);

    proxy.restore();
    wait_for("recovery", || status_of(&format!("{base}/readyz")) == 200);
    wait_for("the accepted instance to finish", || status_of(&location) == 200);
    let mut done = agent().get(&location).call().unwrap();
    let done: Value = serde_json::from_str(&done.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(done["output"]["outcome"], "timed_out", "{done}");

    node.kill().unwrap();
    node.wait().unwrap();
    let _ = std::fs::remove_file(common::log_path(public));
    drop_schema(&schema);
}
