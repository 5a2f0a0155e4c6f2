//! `kill -9` of `kiln serve` in the middle of a burst of starts through the public starter —
//! the path every client takes: a generated id, whose first turn runs before the instance is
//! written and is committed together with it. After each restart, every start that was
//! answered `202` completes with its own report; a start whose answer the crash swallowed may
//! exist too, and then completes as well. Nothing is left pending.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, agent, free_port};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLIENTS: usize = 8;
const ROUNDS: usize = 3;

/// Starts report jobs until the server stops answering; records each accepted id → customer.
fn burst(public: &str, round: usize, client: usize, accepted: &Mutex<BTreeMap<String, String>>) {
    for n in 0.. {
        let customer = format!("r{round}-c{client}-{n}");
        // Some jobs finish at once, some are still in their activity when the kill comes.
        let body = json!({"customer_id": customer, "delay_seconds": n % 2});
        let Ok(mut response) = agent().post(format!("{public}/api/jobs/reports")).send_json(body) else {
            return;
        };
        if response.status() != 202 {
            return;
        }
        let Ok(text) = response.body_mut().read_to_string() else { return };
        let body: Value = serde_json::from_str(&text).unwrap();
        accepted.lock().unwrap().insert(body["instanceId"].as_str().unwrap().to_owned(), customer);
    }
}

#[test]
fn starts_through_the_starter_survive_kill_9_mid_burst() {
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{}", ports.0);
    let management = format!("http://127.0.0.1:{}", ports.1);
    let accepted = Arc::new(Mutex::new(BTreeMap::new()));
    for round in 0..ROUNDS {
        let server = Server::start(dir.path(), ports);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (public, accepted) = (public.clone(), Arc::clone(&accepted));
                std::thread::spawn(move || burst(&public, round, client, &accepted))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400 + 150 * round as u64));
        server.kill_9();
        for client in clients {
            client.join().unwrap();
        }
    }
    let server = Server::start(dir.path(), ports);
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() > 50, "too few starts to mean anything: {}", accepted.len());
    eprintln!("accepted {} of {} instances", accepted.len(), common::report_jobs(&management).len());
    common::assert_report_jobs_completed(&management, &accepted, true);
    drop(server);
}
