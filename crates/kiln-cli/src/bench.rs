//! `kiln bench`: an HTTP load generator against running Kiln servers.
//!
//! The `hello` workload starts one-activity orchestrations through the report-jobs starter
//! (`delay_seconds: 0`) and follows each to its result; latency is measured from the POST to the
//! final `200`. Clients follow the status URL with `Prefer: wait` (long polling), by honouring
//! `Retry-After`, or at a fixed interval. Several `--url`s spread the starts over nodes.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How a client waits for a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientMode {
    /// Long-poll with `Prefer: wait=30`.
    Wait,
    /// Sleep for each answer's `Retry-After`.
    RetryAfter,
    /// Poll every `--interval-ms`.
    Interval,
}

/// `kiln bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Public URL of a server to load (repeat for several nodes; starts go round-robin).
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    /// Orchestrations to run.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Clients running at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How clients wait for results.
    #[arg(long, value_enum, default_value_t = ClientMode::Wait)]
    pub mode: ClientMode,
    /// Poll interval for `--mode interval`.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1).min(sorted.len().saturating_sub(1));
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Runs the `hello` workload and prints a table (and JSON when asked).
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.count == 0 {
        bail!("--count and --concurrency must be at least 1");
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .max_idle_connections_per_host(args.concurrency)
        .build()
        .into();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency.min(args.count))
        .map(|_| {
            let (agent, next, args) = (agent.clone(), Arc::clone(&next), args.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.count {
                        return Ok(latencies);
                    }
                    let target = &args.targets[i % args.targets.len()];
                    let t0 = Instant::now();
                    hello(&agent, target, i, &args)?;
                    latencies.push(t0.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(args.count);
    for worker in workers {
        let result = worker.join().map_err(|_| anyhow::anyhow!("a bench client panicked"))?;
        latencies.extend(result?);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let report = json!({
        "workload": "hello",
        "targets": args.targets,
        "count": latencies.len(),
        "concurrency": args.concurrency,
        "mode": format!("{:?}", args.mode),
        "seconds": elapsed.as_secs_f64(),
        "completed_per_second": latencies.len() as f64 / elapsed.as_secs_f64(),
        "latency_ms": {"p50": percentile(&latencies, 0.50), "p90": percentile(&latencies, 0.90), "p99": percentile(&latencies, 0.99)},
    });
    println!("workload  count  clients  mode        completed/s  p50 ms  p90 ms  p99 ms");
    println!(
        "hello     {:<5}  {:<7}  {:<10}  {:>11.0}  {:>6.2}  {:>6.2}  {:>6.2}",
        latencies.len(),
        args.concurrency,
        format!("{:?}", args.mode),
        report["completed_per_second"].as_f64().unwrap_or(0.0),
        report["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        report["latency_ms"]["p90"].as_f64().unwrap_or(0.0),
        report["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Starts one report job with no delay and follows it to its result.
fn hello(agent: &ureq::Agent, target: &str, i: usize, args: &BenchArgs) -> anyhow::Result<()> {
    let body = json!({"customer_id": format!("bench-{i}"), "operation": "daily", "delay_seconds": 0}).to_string();
    let mut response = agent
        .post(format!("{}/api/jobs/reports", target.trim_end_matches('/')))
        .header("content-type", "application/json")
        .send(body)
        .with_context(|| format!("cannot reach {target}"))?;
    if response.status() != 202 {
        bail!("start answered {}: {}", response.status(), response.body_mut().read_to_string().unwrap_or_default());
    }
    let accepted: Value = serde_json::from_str(&response.body_mut().read_to_string()?)?;
    let status_url = accepted["statusQueryGetUri"].as_str().context("no status URL in the 202")?.to_owned();
    loop {
        let request = agent.get(&status_url);
        let request = if args.mode == ClientMode::Wait { request.header("prefer", "wait=30") } else { request };
        let mut response = request.call()?;
        match response.status().as_u16() {
            200 => {
                let _ = response.body_mut().read_to_string();
                return Ok(());
            }
            202 => {
                let retry =
                    response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
                let _ = response.body_mut().read_to_string();
                match args.mode {
                    ClientMode::Wait => {}
                    ClientMode::RetryAfter => std::thread::sleep(Duration::from_secs(retry.unwrap_or(1))),
                    ClientMode::Interval => std::thread::sleep(Duration::from_millis(args.interval_ms)),
                }
            }
            other => bail!("status answered {other}"),
        }
    }
}
