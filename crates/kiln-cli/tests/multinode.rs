//! Three `kiln serve` nodes on one PostgreSQL database: 1,000 orchestrations (a mix of the
//! samples) spread over the nodes, one node killed with SIGKILL half-way. Every instance must
//! reach its terminal status exactly once with the right output; activities that ran more than
//! once (allowed: at least once) are counted and reported.
//!
//! Needs PostgreSQL (`KILN_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`);
//! skipped without it unless `KILN_REQUIRE_POSTGRES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{agent, database_url, drop_schema, free_port, postgres_available};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTANCES: usize = 1_000;
const NODES: usize = 3;

struct Node {
    child: Child,
    public: String,
    management: String,
    log: PathBuf,
}

impl Node {
    fn start(dir: &Path, schema: &str) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let (public, management) = (free_port(), free_port());
        let log = dir.join("node.log");
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["serve", "--database-url", &database_url(), "--database-schema", schema, "--lease-seconds", "3"])
            .args([
                "--listen",
                &format!("127.0.0.1:{public}"),
                "--management-listen",
                &format!("127.0.0.1:{management}"),
            ])
            .current_dir(dir)
            .env("KILN_LOG", "warn,kiln::worker=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let node = Node {
            child,
            public: format!("http://127.0.0.1:{public}"),
            management: format!("http://127.0.0.1:{management}/runtime/webhooks/durabletask"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent().get(format!("{}/readyz", node.public)).call().map_or(true, |r| r.status() != 200) {
            assert!(
                Instant::now() < deadline,
                "node did not become ready: {}",
                std::fs::read_to_string(&node.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    let mut response = agent().post(url).header("content-type", "application/json").send(body.to_string()).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(url: &str) -> Value {
    let mut response = agent().get(url).call().unwrap();
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

/// What an instance was asked to do, and so what it must end with.
enum Expect {
    Report { customer: String, operation: &'static str },
    Accepted,
    Approval { approved: bool },
}

#[test]
fn three_nodes_finish_every_instance_exactly_once_when_one_is_killed() {
    if !postgres_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("kiln_multinode_{}", std::process::id());
    let mut nodes: Vec<Option<Node>> =
        (0..NODES).map(|n| Some(Node::start(&dir.path().join(format!("node{n}")), &schema))).collect();
    let logs: Vec<PathBuf> = nodes.iter().flatten().map(|n| n.log.clone()).collect();
    let started = Instant::now();
    let mut expected = HashMap::new();
    let mut killed_at = None;
    let operations = ["daily", "weekly", "monthly", "quarterly", "yearly"];
    for i in 0..INSTANCES {
        if i == INSTANCES / 2 {
            if let Some(mut node) = nodes[1].take() {
                node.child.kill().unwrap();
                node.child.wait().unwrap();
            }
            killed_at = Some(Instant::now());
        }
        let alive: Vec<&Node> = nodes.iter().flatten().collect();
        let node = alive[i % alive.len()];
        let (path, body, expect) = match i % 10 {
            0..=4 => {
                let operation = operations[i % operations.len()];
                let customer = format!("c-{i}");
                (
                    "/api/jobs/reports",
                    json!({"customer_id": customer, "operation": operation, "delay_seconds": 0}),
                    Expect::Report { customer, operation },
                )
            }
            5..=7 => (
                "/api/submissions",
                json!({"speaker": "S", "email": "s@example.com", "title": "T", "abstract": "word ".repeat(40)}),
                Expect::Accepted,
            ),
            _ => (
                "/api/approvals",
                json!({"subject": format!("a-{i}"), "timeout_seconds": 2}),
                Expect::Approval { approved: i % 20 == 8 },
            ),
        };
        let (status, accepted) = post(&format!("{}{path}", node.public), &body);
        assert_eq!(status, 202, "{accepted}");
        let id = accepted["id"].as_str().unwrap().to_owned();
        if let Expect::Approval { approved: true } = expect {
            // Raised through another node than the one that started it.
            let other = alive[(i + 1) % alive.len()];
            let (status, _) = post(
                &format!("{}/instances/{id}/raiseEvent/Approval", other.management),
                &json!({"approved": true, "by": "other node"}),
            );
            assert_eq!(status, 202);
        }
        expected.insert(id, expect);
    }
    let survivor = nodes.iter().flatten().next().unwrap().management.clone();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let unfinished = get(&format!(
            "{survivor}/instances?runtimeStatus=Pending,Running,ContinuedAsNew,Suspended&showInput=false"
        ));
        if unfinished.as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{} instances never finished", unfinished.as_array().unwrap().len());
        std::thread::sleep(Duration::from_millis(200));
    }
    let recovered = killed_at.unwrap().elapsed();
    let elapsed = started.elapsed();
    for (id, expect) in &expected {
        let status = get(&format!("{survivor}/instances/{id}?showHistory=true&showHistoryOutput=true"));
        assert_eq!(status["runtimeStatus"], "Completed", "{id}: {status}");
        let completions = status["historyEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["EventType"] == "ExecutionCompleted")
            .count();
        assert_eq!(completions, 1, "{id} completed exactly once");
        let output = &status["output"];
        match expect {
            Expect::Report { customer, operation } => {
                assert_eq!(output["result"], json!({"customerId": customer, "operation": operation}), "{id}");
            }
            Expect::Accepted => assert_eq!(output["decision"], "accepted", "{id}"),
            Expect::Approval { approved: true } => assert_eq!(output["outcome"], "approved", "{id}"),
            Expect::Approval { approved: false } => assert_eq!(output["outcome"], "timed_out", "{id}"),
        }
    }
    let mut runs: HashMap<String, usize> = HashMap::new();
    for log in &logs {
        for line in std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains("activity started"))
        {
            if let Some(key) = line.split("key=").nth(1).and_then(|k| k.split_whitespace().next()) {
                *runs.entry(key.to_owned()).or_default() += 1;
            }
        }
    }
    let total: usize = runs.values().sum();
    let repeated = runs.values().filter(|n| **n > 1).count();
    eprintln!(
        "multi-node: {} instances on {NODES} nodes (one killed at #{}), all completed exactly once in {:.1} s; \
         {total} activity runs for {} activities, {repeated} ran more than once; all done {:.1} s after the kill",
        expected.len(),
        INSTANCES / 2,
        elapsed.as_secs_f64(),
        runs.len(),
        recovered.as_secs_f64()
    );
    drop(nodes);
    drop_schema(&schema);
}
