//! `kiln bench` end to end: every workload, tiny, against a server the bench starts itself,
//! with its JSON report checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> Value {
    bench_with_env(args, &[])
}

fn bench_with_env(args: &[&str], env: &[(&str, &str)]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.arg("bench").args(args).arg("--json").arg(&json).envs(env.iter().copied());
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "kiln bench {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn every_workload_runs_and_reports() {
    for (workload, count) in [("hello", 40), ("seq5", 10), ("fanout", 50), ("long", 20), ("poll", 200), ("idle", 30)] {
        let count = count.to_string();
        let report = bench(&["--workload", workload, "--count", &count, "--concurrency", "4", "--runs", "2"]);
        assert_eq!(report["workload"], workload);
        assert_eq!(report["runs"].as_array().unwrap().len(), 2);
        let median = &report["median"];
        assert_eq!(median["count"].as_u64().unwrap().to_string(), count, "{workload}");
        assert!(median["per_second"].as_f64().unwrap() > 0.0, "{workload}");
        assert!(median["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{workload}");
        assert!(median["server_peak_rss_mib"].as_f64().unwrap() > 1.0, "{workload}: the server's memory is read");
        assert!(median["server_cpu_cores"].as_f64().is_some(), "{workload}");
    }
}

/// The servers the bench starts take every setting from the bench: a `KILN_*` variable of the
/// caller's (here a database and links that lead nowhere) never reaches them.
#[test]
fn the_callers_kiln_settings_do_not_reach_the_benched_servers() {
    let env = [
        ("KILN_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
        ("KILN_PUBLIC_BASE_URL", "http://127.0.0.1:1"),
        ("KILN_LISTEN", "127.0.0.1:1"),
    ];
    let report = bench_with_env(&["--workload", "hello", "--count", "5", "--concurrency", "1"], &env);
    assert_eq!(report["median"]["count"], 5);
}

#[test]
fn a_server_without_the_workloads_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    // Ready means answering `/readyz` (an open port may still be another test's server).
    let server = common::Server::start(dir.path(), (common::free_port(), common::free_port()));
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["bench", "--target", &server.public, "--count", "1"])
        .output()
        .unwrap();
    drop(server);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--bench-workloads"), "{stderr}");
}
