//! A full disk under `kiln serve`: its database on a small tmpfs, most of it taken by a filler
//! file, the rest filled by clients (small starts through the public starter, ~600 KB ones
//! through the management API). While the disk is full, starts answer `503` with `Retry-After`
//! (never `500`) and `/readyz` says not ready; once the filler is gone, the server is ready
//! again, every accepted job completes with its own output, none fails, and no refused start
//! exists — without a restart and after one. A second full disk is noticed and recovered from
//! as well.
//!
//! Mounting a tmpfs needs root: elsewhere the test says it was skipped, unless
//! `KILN_REQUIRE_ROOT=1` makes that a failure (CI runs as root and sets it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, agent, free_port};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Size of the disk the database lives on.
const DISK: &str = "32m";
/// What the first filler takes, so that freeing it gives this much room back however much the
/// clients wrote meanwhile; the clients fill the rest.
const FILLER_BYTES: usize = 14 << 20;
/// Room held back from the start and given back with the second full disk's filler. That filler
/// takes only what the database left free, possibly nothing: without this reserve, freeing it
/// could leave the jobs accepted since with no room to finish in, a disk still full for any
/// database (seen: 16 jobs waiting, `Running` and correctly not failed, on a disk holding only
/// the database and its log).
const RESERVE_BYTES: usize = 8 << 20;
const CLIENTS: usize = 12;
const BIG_INPUT_BYTES: usize = 600_000;
const DEADLINE: Duration = Duration::from_secs(90);

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Option<Tmpfs> {
        let required = std::env::var("KILN_REQUIRE_ROOT").is_ok_and(|v| v == "1");
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if !root {
            assert!(!required, "KILN_REQUIRE_ROOT=1 but not root");
            eprintln!("skipped: mounting a tmpfs needs root; set KILN_REQUIRE_ROOT=1 to fail instead");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DISK}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            assert!(!required, "KILN_REQUIRE_ROOT=1 but mount -t tmpfs failed");
            eprintln!("skipped: mount -t tmpfs failed (no CAP_SYS_ADMIN?); set KILN_REQUIRE_ROOT=1 to fail instead");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// What one start was answered.
#[derive(Debug)]
struct Start {
    customer: String,
    status: u16,
    retry_after: Option<String>,
    id: Option<String>,
}

fn start_job(public: &str, management: &str, customer: &str, big: bool) -> Start {
    let response = if big {
        let body = json!({"customer_id": customer, "delay_seconds": 0, "padding": "x".repeat(BIG_INPUT_BYTES)});
        agent().post(format!("{management}/runtime/webhooks/durabletask/orchestrators/report_job")).send_json(body)
    } else {
        let body = json!({"customer_id": customer, "delay_seconds": 0});
        agent().post(format!("{public}/api/jobs/reports")).send_json(body)
    };
    let mut response = response.expect("the server answers");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null);
    Start { customer: customer.to_owned(), status, retry_after, id: body["id"].as_str().map(str::to_owned) }
}

/// Writes zeros to `path` until the disk refuses more or `limit` bytes are written; returns
/// how many were written.
fn fill(path: &Path, limit: usize) -> usize {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    let mut written = 0;
    while written < limit && file.write_all(&block).is_ok() {
        written += block.len();
    }
    let _ = file.sync_all();
    written
}

/// How many starts got each status.
fn summary(starts: &[Start]) -> String {
    let mut counts = BTreeMap::new();
    for start in starts {
        *counts.entry(start.status).or_insert(0) += 1;
    }
    format!("{counts:?}")
}

fn readyz(public: &str) -> u16 {
    agent().get(format!("{public}/readyz")).call().map_or(0, |r| r.status().as_u16())
}

/// Frees the disk (removes `fillers`), waits until the server is ready, and starts a few jobs
/// that must be accepted.
fn recover(server: &Server, fillers: &[&Path], starts: &Mutex<Vec<Start>>, tag: &str) {
    for filler in fillers {
        std::fs::remove_file(filler).unwrap();
    }
    let deadline = Instant::now() + DEADLINE;
    while readyz(&server.public) != 200 {
        assert!(Instant::now() < deadline, "the server did not become ready again");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Small ones: how much room the first episode's database and WAL left is up to timing.
    for n in 0..10 {
        let start = start_job(&server.public, &server.management, &format!("{tag}-{n}"), false);
        assert_eq!(start.status, 202, "{start:?}");
        starts.lock().unwrap().push(start);
    }
}

#[test]
fn a_full_disk_refuses_new_work_with_503_and_loses_no_accepted_job() {
    let Some(disk) = Tmpfs::mount() else { return };
    let server = Server::start(disk.path(), (free_port(), free_port()));
    let (filler, reserve) = (disk.path().join("filler"), disk.path().join("reserve"));

    assert_eq!(fill(&reserve, RESERVE_BYTES), RESERVE_BYTES);
    assert_eq!(fill(&filler, FILLER_BYTES), FILLER_BYTES);
    let starts = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (public, management) = (server.public.clone(), server.management.clone());
            let (starts, stop) = (Arc::clone(&starts), Arc::clone(&stop));
            std::thread::spawn(move || {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let start = start_job(&public, &management, &format!("c{client}-{n}"), n % 4 == 3);
                    starts.lock().unwrap().push(start);
                }
            })
        })
        .collect();

    // The clients fill the disk: watch the server refuse work while it is full.
    std::thread::sleep(Duration::from_millis(100));
    let deadline = Instant::now() + DEADLINE;
    let mut not_ready = false;
    while !(not_ready && starts.lock().unwrap().iter().any(|s| s.status == 503)) {
        assert!(
            Instant::now() < deadline,
            "the server never noticed the full disk (ready: {}): {}",
            !not_ready,
            summary(&starts.lock().unwrap())
        );
        not_ready |= readyz(&server.public) == 503;
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    // Space returns: the server recovers without a restart and takes new work.
    recover(&server, &[&filler], &starts, "after");

    // A second full disk is noticed as well (a write that changes nothing must not pass for
    // proof that writes work again), and recovered from again.
    let _ = fill(&filler, usize::MAX);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let start = start_job(&server.public, &server.management, "while-full-again", true);
        let refused = start.status == 503;
        starts.lock().unwrap().push(start);
        if refused && readyz(&server.public) == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "the second full disk went unnoticed");
    }
    recover(&server, &[&filler, &reserve], &starts, "after-again");
    let starts = std::mem::take(&mut *starts.lock().unwrap());
    let refused: Vec<&Start> = starts.iter().filter(|s| s.status != 202).collect();
    assert!(!refused.is_empty(), "some starts were refused while the disk was full");
    for start in &refused {
        assert_eq!(start.status, 503, "{start:?}");
        assert!(start.retry_after.is_some(), "{start:?}");
    }
    let accepted: BTreeMap<String, String> =
        starts.iter().filter(|s| s.status == 202).map(|s| (s.id.clone().unwrap(), s.customer.clone())).collect();
    assert!(accepted.len() > refused.len() / 10, "work was accepted too: {} of {}", accepted.len(), starts.len());
    common::assert_report_jobs_completed(&server.management, &accepted, false);

    let server = server.restart();
    common::assert_report_jobs_completed(&server.management, &accepted, false);
    drop(server);
}
