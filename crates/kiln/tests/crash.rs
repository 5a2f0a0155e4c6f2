//! Crash test: a real child process runs Kiln on a database file and is killed with SIGKILL at
//! several points — during a burst of starts, in the middle of an activity, while durable timers
//! are pending, and at an arbitrary moment between turns. It is restarted on the same file each
//! time. In the end every instance whose start was acknowledged must have completed exactly once
//! with the right output.
//!
//! The child is this same test binary, re-run with `--exact crash_child --ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln::{ActivityContext, Either, Failure, Kiln, OrchestrationContext, RuntimeConfig, RuntimeStatus, select2};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const INSTANCES: u32 = 240;
const ROUND_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- the child's workload

async fn step(ctx: ActivityContext, n: u32) -> Result<u32, Failure> {
    log_activity(&ctx);
    Ok(n + 1)
}

async fn slow_step(ctx: ActivityContext, n: u32) -> Result<u32, Failure> {
    println!("ACTIVITY {}", ctx.instance_id());
    tokio::time::sleep(Duration::from_millis(150)).await;
    log_activity(&ctx);
    Ok(n + 1)
}

/// Appends the activity's idempotency key to a log, to count how many ran more than once.
fn log_activity(ctx: &ActivityContext) {
    if let Ok(path) = std::env::var("KILN_CRASH_LOG") {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(file, "{}", ctx.idempotency_key()).unwrap();
    }
}

async fn crash_flow(ctx: OrchestrationContext, n: u32) -> Result<u32, Failure> {
    let a: u32 = ctx.call_activity("step", &n).await?;
    let b: u32 = ctx.call_activity("slow_step", &a).await?;
    if !ctx.is_replaying() {
        println!("TIMER {}", ctx.instance_id());
    }
    ctx.sleep(Duration::from_millis(300)).await?;
    ctx.call_activity("step", &b).await
}

async fn crash_approval(ctx: OrchestrationContext, _: u32) -> Result<String, Failure> {
    let event = ctx.wait_for_event::<String>("Approval");
    let timer = ctx.sleep(Duration::from_millis(400));
    match select2(event, timer).await {
        Either::Left(value) => value,
        Either::Right(fired) => fired.map(|_| "timeout".to_owned()),
    }
}

async fn abort_process(_: ActivityContext, _: ()) -> Result<(), Failure> {
    std::process::abort()
}

/// Survives its activity only if the runtime gives up on it as poison.
async fn poison_flow(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    match ctx.call_activity::<_, ()>("abort_process", &()).await {
        Ok(()) => Ok("ran".to_owned()),
        Err(failure) => Ok(format!("{}: {}", failure.error_type(), failure.message())),
    }
}

/// Claims after which the poison test's child gives up on a work item.
const POISON_AFTER: u32 = 3;

fn expected_output(i: u32) -> serde_json::Value {
    if i.is_multiple_of(10) { serde_json::json!("timeout") } else { serde_json::json!(i + 3) }
}

/// Runs in the child process: `start` starts the instances, `run` just processes, `finish`
/// processes until nothing is left and says `DONE`.
#[test]
#[ignore = "runs only as the crash test's child process"]
fn crash_child() {
    let Ok(db) = std::env::var("KILN_CRASH_DB") else {
        return;
    };
    let mode = std::env::var("KILN_CRASH_MODE").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let config = RuntimeConfig {
            lease_duration: Duration::from_secs(5),
            max_dequeue_count: POISON_AFTER,
            ..RuntimeConfig::default()
        };
        let kiln = Kiln::builder()
            .config(config)
            .sqlite(&db)
            .orchestration("crash_flow", crash_flow)
            .orchestration("crash_approval", crash_approval)
            .activity("step", step)
            .activity("slow_step", slow_step)
            .orchestration("poison_flow", poison_flow)
            .activity("abort_process", abort_process)
            .start()
            .await
            .unwrap();
        let client = kiln.client();
        println!("READY");
        if mode == "start" {
            for i in 0..INSTANCES {
                let name = if i % 10 == 0 { "crash_approval" } else { "crash_flow" };
                let options = kiln::StartOptions { instance_id: Some(format!("job-{i}")), ..Default::default() };
                client.start_with(name, kiln::Payload::encode(&i).unwrap(), options).await.unwrap();
                println!("STARTED {i}");
            }
        }
        if mode == "poison" {
            let options = kiln::StartOptions { instance_id: Some("poison".into()), ..Default::default() };
            let _ = client.start_with("poison_flow", kiln::Payload::null(), options).await;
            let done = client.wait_for_completion("poison", Duration::from_secs(30)).await.unwrap();
            println!("DONE {}", done.output.unwrap());
            kiln.shutdown().await;
            return;
        }
        if mode == "finish" {
            let unfinished = vec![RuntimeStatus::Pending, RuntimeStatus::Running, RuntimeStatus::ContinuedAsNew];
            loop {
                let query = kiln::InstanceQuery { statuses: unfinished.clone(), page_size: 1, ..Default::default() };
                if client.list(&query).await.unwrap().instances.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            kiln.shutdown().await;
            println!("DONE");
            return;
        }
        std::future::pending::<()>().await;
    });
}

// ---------------------------------------------------------------- the parent

struct Round {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn spawn(db: &Path, log: &Path, mode: &str) -> Round {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("KILN_CRASH_DB", db)
        .env("KILN_CRASH_LOG", log)
        .env("KILN_CRASH_MODE", mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Round { child, lines }
}

impl Round {
    /// Reads lines until one satisfies `until`; returns every line read.
    fn read_until(&mut self, mut until: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + ROUND_LIMIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let stop = until(&line);
                    seen.push(line);
                    if stop {
                        return seen;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "child did not reach the expected point; last lines: {:?}",
                        seen.iter().rev().take(5).collect::<Vec<_>>()
                    );
                }
            }
        }
    }

    /// SIGKILL, as `kill -9` would.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.lines.try_iter().collect()
    }
}

fn started_ids(lines: &[String]) -> impl Iterator<Item = u32> + '_ {
    lines.iter().filter_map(|l| l.strip_prefix("STARTED ")).filter_map(|n| n.parse().ok())
}

#[test]
fn every_acknowledged_instance_completes_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db: PathBuf = dir.path().join("kiln.db");
    let log = dir.path().join("activities.log");
    let mut acknowledged: HashSet<u32> = HashSet::new();

    // 1. During a burst of starts.
    let mut round = spawn(&db, &log, "start");
    let mut count = 0;
    let lines = round.read_until(|l| {
        count += usize::from(l.starts_with("STARTED "));
        count >= 80
    });
    acknowledged.extend(started_ids(&lines));
    acknowledged.extend(started_ids(&round.kill()));

    // 2. In the middle of an activity.
    let mut round = spawn(&db, &log, "run");
    round.read_until(|l| l.starts_with("ACTIVITY "));
    std::thread::sleep(Duration::from_millis(20));
    round.kill();

    // 3. While durable timers are pending (the timer's turn has committed).
    let mut round = spawn(&db, &log, "run");
    round.read_until(|l| l.starts_with("TIMER "));
    std::thread::sleep(Duration::from_millis(60));
    round.kill();

    // 4. At an arbitrary moment between turns.
    let mut round = spawn(&db, &log, "run");
    round.read_until(|l| l.ends_with("READY"));
    std::thread::sleep(Duration::from_millis(250));
    round.kill();

    // 5. Finish everything.
    let mut round = spawn(&db, &log, "finish");
    round.read_until(|l| l.ends_with("DONE"));
    round.child.wait().unwrap();

    assert!(acknowledged.len() >= 80, "the burst was interrupted after at least 80 acknowledged starts");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (checked, completions) = rt.block_on(async {
        let kiln = Kiln::builder().sqlite(&db).start().await.unwrap();
        let client = kiln.client();
        let mut completions = 0;
        for i in &acknowledged {
            let id = format!("job-{i}");
            let record =
                client.status(&id).await.unwrap().unwrap_or_else(|| panic!("{id} was acknowledged but is lost"));
            assert_eq!(record.status, RuntimeStatus::Completed, "{id}: {:?}", record.failure);
            let output: serde_json::Value = serde_json::from_str(record.output.unwrap().as_str()).unwrap();
            assert_eq!(output, expected_output(*i), "{id}");
            let history = client.history(&id).await.unwrap();
            let completed = history.iter().filter(|e| e.kind.name() == "ExecutionCompleted").count();
            assert_eq!(completed, 1, "{id} completed exactly once");
            assert_eq!(
                history.last().map(|e| e.kind.name()),
                Some("ExecutionCompleted"),
                "{id}: nothing after completion"
            );
            completions += completed;
        }
        kiln.shutdown().await;
        (acknowledged.len(), completions)
    });
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let runs: Vec<&str> = log.lines().collect();
    let unique: HashSet<&str> = runs.iter().copied().collect();
    eprintln!(
        "crash test: {checked} acknowledged instances, {completions} completions, {} activity runs, {} ran more than once (at-least-once)",
        runs.len(),
        runs.len() - unique.len()
    );
}

#[test]
fn an_activity_that_kills_its_process_is_failed_as_poison() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiln.db");
    let log = dir.path().join("activities.log");
    let mut crashes = 0;
    let output = loop {
        let mut round = spawn(&db, &log, "poison");
        let status = round.child.wait().unwrap();
        let lines: Vec<String> = round.lines.try_iter().collect();
        if let Some(done) = lines.iter().find_map(|l| l.split_once("DONE ").map(|(_, out)| out.to_owned())) {
            break done;
        }
        assert!(!status.success(), "the child either aborts or finishes: {lines:?}");
        crashes += 1;
        assert!(crashes <= POISON_AFTER + 2, "still crashing after {crashes} restarts");
    };
    assert!(output.starts_with("\"PoisonMessage: activity 'abort_process' was claimed"), "{output}");
    eprintln!("poison test: the process crashed {crashes} times before the activity was failed as poison");
}
