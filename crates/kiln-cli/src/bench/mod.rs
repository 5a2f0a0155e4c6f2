//! `kiln bench`: load Kiln over its public HTTP API and report what it sustains.
//!
//! Every workload goes through the front door a real client uses: `POST` a starter, get `202`
//! with a status URL, follow it to the final `200` (with `Prefer: wait` long polling, by
//! honouring `Retry-After`, or at a fixed interval). Latency runs from the `POST` to the final
//! answer. Without `--target`, the bench starts its own servers (`kiln serve
//! --bench-workloads`) on a throwaway SQLite file, or with `--store postgres` on a fresh
//! PostgreSQL schema (dropped at the end), and reports their CPU and memory from `/proc`; it
//! also reports its own CPU, so a saturated load generator shows.

mod http;
mod server;
pub(crate) mod workloads;

use anyhow::{Context, bail, ensure};
use http::Client;
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use server::{ProcessSample, Servers, StoreKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// `count` orchestrations of one activity each.
    Hello,
    /// `count` orchestrations of five sequential activities each.
    Seq5,
    /// One orchestration calling `count` activities in parallel.
    Fanout,
    /// One orchestration of `count` sequential activities, beside one of 100 (per-step cost).
    Long,
    /// `count` status reads of finished instances.
    Poll,
    /// `count` instances left waiting for an event; reports the server's memory.
    Idle,
}

impl Workload {
    fn default_count(self) -> usize {
        match self {
            Workload::Hello => 10_000,
            Workload::Seq5 => 5_000,
            Workload::Fanout => 1_000,
            Workload::Long => 10_000,
            Workload::Poll => 200_000,
            Workload::Idle => 100_000,
        }
    }
}

/// How a client waits for a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
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
    /// The workload.
    #[arg(long, value_enum, default_value_t = Workload::Hello)]
    pub workload: Workload,
    /// Public URL of a running server started with `--bench-workloads` (repeat for several
    /// nodes; starts go round-robin). Without it, the bench starts its own servers.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Store of self-started servers.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// PostgreSQL URL for `--store postgres`.
    #[arg(long, env = "KILN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Self-started servers (more than one needs `--store postgres`).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Orchestrations (hello, seq5), activities (fanout), steps (long), GETs (poll) or
    /// instances (idle); each workload has its own default.
    #[arg(long)]
    pub count: Option<usize>,
    /// Clients running at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How clients wait for results.
    #[arg(long, value_enum, default_value_t = ClientMode::Wait)]
    pub mode: ClientMode,
    /// Poll interval for `--mode interval`.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Threads of the load generator.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Times to run the workload; the summary is the median run.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
struct RunReport {
    /// Units done (orchestrations, activities, steps or GETs).
    count: usize,
    /// Clients that ran at once.
    clients: usize,
    seconds: f64,
    /// Units per second.
    per_second: f64,
    /// Latency of one unit (POST to final answer; one GET for poll), in milliseconds.
    latency_ms: Percentiles,
    /// Workload-specific figures.
    extra: Value,
    /// Server CPU cores used on average (self-started servers only).
    server_cpu_cores: Option<f64>,
    /// Server resident memory at the end, and its peak, in MiB (self-started servers only).
    server_rss_mib: Option<f64>,
    server_peak_rss_mib: Option<f64>,
    /// The load generator's CPU cores used on average.
    client_cpu_cores: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
}

impl Percentiles {
    fn of(mut latencies: Vec<Duration>) -> Percentiles {
        latencies.sort_unstable();
        let at = |p: f64| {
            let index = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
            latencies.get(index.min(latencies.len().saturating_sub(1))).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        Percentiles { p50: at(0.50), p90: at(0.90), p99: at(0.99) }
    }
}

/// Runs the workload `--runs` times and prints a table (and JSON when asked).
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    ensure!(
        args.concurrency >= 1 && args.runs >= 1 && args.client_threads >= 1 && args.nodes >= 1,
        "--concurrency, --runs, --client-threads and --nodes must be at least 1"
    );
    ensure!(args.count != Some(0), "--count must be at least 1");
    let servers = if args.targets.is_empty() {
        Servers::start(args.store, args.nodes, args.database_url.as_deref())?
    } else {
        Servers::external(args.targets.clone())
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.client_threads).enable_all().build()?;
    let pids = servers.pids();
    let mut runs = Vec::with_capacity(args.runs);
    println!(
        "{:<8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>11} {:>11} {:>11}",
        "workload",
        "count",
        "clients",
        "per sec",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "server cpu",
        "server MiB",
        "client cpu"
    );
    for _ in 0..args.runs {
        let server_before = server::sample_all(&pids).filter(|_| !pids.is_empty());
        let client_before = server::sample(None);
        let started = Instant::now();
        let Measured { count, clients, latencies, extra } = runtime.block_on(run_workload(args, &servers.urls))?;
        let seconds = started.elapsed().as_secs_f64();
        let server_after = server::sample_all(&pids).filter(|_| !pids.is_empty());
        let cores = |before: Option<ProcessSample>, after: Option<ProcessSample>| {
            Some((after?.cpu_seconds - before?.cpu_seconds) / seconds)
        };
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        let report = RunReport {
            count,
            clients,
            seconds,
            per_second: count as f64 / seconds,
            latency_ms: Percentiles::of(latencies),
            extra,
            server_cpu_cores: cores(server_before, server_after),
            server_rss_mib: server_after.map(|s| mib(s.rss_bytes)),
            server_peak_rss_mib: server_after.map(|s| mib(s.peak_rss_bytes)),
            client_cpu_cores: cores(client_before, server::sample(None)),
        };
        print_row(args, &report);
        runs.push(report);
    }
    let median = median_run(&runs);
    if args.runs > 1 {
        print!("median   ");
        print_row_figures(median);
    }
    if let Some(extra) = median.extra.as_object().filter(|e| !e.is_empty()) {
        println!("  {}", serde_json::to_string(extra)?);
    }
    if let Some(cores) = median.client_cpu_cores
        && cores > 0.8 * args.client_threads as f64
    {
        println!(
            "  note: the load generator used {cores:.2} of its {} threads' cores: it may be the bottleneck",
            args.client_threads
        );
    }
    if let Some(path) = &args.json {
        let document = json!({
            "workload": args.workload,
            "targets": if args.targets.is_empty() { Value::Null } else { json!(args.targets) },
            "store": if args.targets.is_empty() { json!(args.store) } else { Value::Null },
            "nodes": servers.urls.len(),
            "concurrency": args.concurrency,
            "mode": args.mode,
            "client_threads": args.client_threads,
            "machine_cores": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
            "median": median,
            "runs": runs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&document)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let schema = servers.schema.clone();
    drop(servers);
    if let (Some(schema), Some(url)) = (schema, &args.database_url) {
        runtime
            .block_on(kiln_postgres::schema::drop_schema(url, &schema))
            .with_context(|| format!("cannot drop the bench's PostgreSQL schema {schema}"))?;
    }
    Ok(())
}

/// The run with the median rate.
fn median_run(runs: &[RunReport]) -> &RunReport {
    let mut order: Vec<&RunReport> = runs.iter().collect();
    order.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    order[order.len() / 2]
}

fn print_row(args: &BenchArgs, report: &RunReport) {
    print!("{:<8} ", format!("{:?}", args.workload).to_lowercase());
    print_row_figures(report);
}

fn print_row_figures(report: &RunReport) {
    let optional =
        |value: Option<f64>, precision: usize| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.precision$}"));
    println!(
        "{:>8} {:>8} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>11} {:>11} {:>11}",
        report.count,
        report.clients,
        report.per_second,
        report.latency_ms.p50,
        report.latency_ms.p90,
        report.latency_ms.p99,
        optional(report.server_cpu_cores, 2),
        optional(report.server_peak_rss_mib, 0),
        optional(report.client_cpu_cores, 2),
    )
}

/// What a workload did.
struct Measured {
    count: usize,
    clients: usize,
    latencies: Vec<Duration>,
    /// Workload-specific figures.
    extra: Value,
}

/// Runs one workload.
async fn run_workload(args: &BenchArgs, urls: &[String]) -> anyhow::Result<Measured> {
    let count = args.count.unwrap_or_else(|| args.workload.default_count());
    let clients = args.concurrency.min(count);
    let steps = |n: usize| Starter::new(workloads::STEPS_PATH, json!({"steps": n}));
    match args.workload {
        Workload::Hello | Workload::Seq5 => {
            let starter = steps(if args.workload == Workload::Hello { 1 } else { 5 });
            let latencies = run_instances(args, urls, &starter, count, clients).await?;
            Ok(Measured { count, clients, latencies, extra: json!({}) })
        }
        Workload::Fanout => {
            let starter = Starter::new(workloads::FANOUT_PATH, json!({"activities": count}));
            let latencies = run_instances(args, urls, &starter, 1, 1).await?;
            let seconds = latencies.first().map_or(0.0, Duration::as_secs_f64);
            Ok(Measured { count, clients: 1, latencies, extra: json!({"orchestration_seconds": seconds}) })
        }
        Workload::Long => {
            let reference_steps = 100;
            let reference = run_instances(args, urls, &steps(reference_steps), 1, 1).await?;
            let long = run_instances(args, urls, &steps(count), 1, 1).await?;
            let per_step =
                |latencies: &[Duration], n: usize| latencies.first().map_or(0.0, |d| d.as_secs_f64() * 1e3 / n as f64);
            let (short_ms, long_ms) = (per_step(&reference, reference_steps), per_step(&long, count));
            let extra = json!({
                "per_step_ms": {"100": short_ms, count.to_string(): long_ms},
                "per_step_ratio": long_ms / short_ms.max(f64::MIN_POSITIVE),
            });
            Ok(Measured { count, clients: 1, latencies: long, extra })
        }
        Workload::Poll => poll(args, urls, count, clients).await,
        Workload::Idle => idle(urls, count, clients).await,
    }
}

/// A starter route and the body it is sent.
#[derive(Clone)]
struct Starter {
    path: &'static str,
    body: String,
}

impl Starter {
    fn new(path: &'static str, body: Value) -> Starter {
        Starter { path, body: body.to_string() }
    }

    /// Starts one instance on `base`; returns its status URL.
    async fn start(&self, client: &mut Client, base: &str) -> anyhow::Result<String> {
        let url = format!("{}{}", base.trim_end_matches('/'), self.path);
        let answer = client.send(Method::POST, &url, &[], Some(&self.body)).await?;
        if answer.status != StatusCode::ACCEPTED {
            bail!(
                "POST {url} answered {}: {} (was the server started with --bench-workloads?)",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        let accepted = answer.json()?;
        accepted["statusQueryGetUri"].as_str().map(str::to_owned).context("the 202 carries no statusQueryGetUri")
    }
}

/// Follows a status URL until the instance is done; fails unless it completed.
async fn follow(client: &mut Client, status_url: &str, args: &BenchArgs) -> anyhow::Result<()> {
    let prefer: &[(&str, &str)] = if args.mode == ClientMode::Wait { &[("prefer", "wait=30")] } else { &[] };
    loop {
        let answer = client.send(Method::GET, status_url, prefer, None).await?;
        match answer.status {
            StatusCode::OK => {
                let status = answer.json()?;
                ensure!(status["runtimeStatus"] == "Completed", "an instance did not complete: {status}");
                return Ok(());
            }
            StatusCode::ACCEPTED => match args.mode {
                ClientMode::Wait => {}
                ClientMode::RetryAfter => {
                    tokio::time::sleep(Duration::from_secs(answer.retry_after.unwrap_or(1))).await;
                }
                ClientMode::Interval => tokio::time::sleep(Duration::from_millis(args.interval_ms)).await,
            },
            other => bail!("GET {status_url} answered {other}: {}", String::from_utf8_lossy(&answer.body)),
        }
    }
}

/// Runs `count` units of work over `clients` concurrent clients, each with its own connections:
/// unit `i` is `unit(client, i)`, which hands the client back with its output. Returns every
/// unit's output, in no particular order.
async fn run_units<T, F, Fut>(count: usize, clients: usize, unit: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(Client, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<(Client, T)>> + Send,
{
    let unit = Arc::new(unit);
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (unit, next) = (Arc::clone(&unit), Arc::clone(&next));
            tokio::spawn(async move {
                let mut client = Client::default();
                let mut outputs = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return anyhow::Ok(outputs);
                    }
                    let (returned, output) = unit(client, i).await?;
                    client = returned;
                    outputs.push(output);
                }
            })
        })
        .collect();
    let mut outputs = Vec::with_capacity(count);
    for task in tasks {
        outputs.extend(task.await.context("a bench client panicked")??);
    }
    Ok(outputs)
}

/// Runs `count` instances through `clients` concurrent clients; returns each one's latency.
async fn run_instances(
    args: &BenchArgs,
    urls: &[String],
    starter: &Starter,
    count: usize,
    clients: usize,
) -> anyhow::Result<Vec<Duration>> {
    let shared = Arc::new((args.clone(), urls.to_vec(), starter.clone()));
    run_units(count, clients, move |mut client, i| {
        let shared = Arc::clone(&shared);
        async move {
            let (args, urls, starter) = &*shared;
            let t0 = Instant::now();
            let status_url = starter.start(&mut client, &urls[i % urls.len()]).await?;
            follow(&mut client, &status_url, args).await?;
            Ok((client, t0.elapsed()))
        }
    })
    .await
}

/// Finishes a set of instances, then reads their statuses `count` times as fast as it can.
async fn poll(args: &BenchArgs, urls: &[String], count: usize, clients: usize) -> anyhow::Result<Measured> {
    let instances = 1000.min(count);
    let starter = Starter::new(workloads::STEPS_PATH, json!({"steps": 1}));
    let mut client = Client::default();
    let mut status_urls = Vec::with_capacity(instances);
    for i in 0..instances {
        let status_url = starter.start(&mut client, &urls[i % urls.len()]).await?;
        status_urls.push(status_url);
    }
    for status_url in &status_urls {
        follow(&mut client, status_url, args).await?;
    }
    let status_urls = Arc::new(status_urls);
    let latencies = run_units(count, clients, move |mut client, i| {
        let status_urls = Arc::clone(&status_urls);
        async move {
            let t0 = Instant::now();
            let answer = client.send(Method::GET, &status_urls[i % status_urls.len()], &[], None).await?;
            ensure!(answer.status == StatusCode::OK, "a status read answered {}", answer.status);
            Ok((client, t0.elapsed()))
        }
    })
    .await?;
    Ok(Measured { count, clients, latencies, extra: json!({"instances_read": instances}) })
}

/// Starts `count` instances that wait for an event, and checks that each one reached its wait.
async fn idle(urls: &[String], count: usize, clients: usize) -> anyhow::Result<Measured> {
    let shared = Arc::new((Starter::new(workloads::IDLE_PATH, Value::Null), urls.to_vec()));
    let started = Instant::now();
    let starts = run_units(count, clients, move |mut client, i| {
        let shared = Arc::clone(&shared);
        async move {
            let (starter, urls) = &*shared;
            let t0 = Instant::now();
            let status_url = starter.start(&mut client, &urls[i % urls.len()]).await?;
            Ok((client, (t0.elapsed(), status_url)))
        }
    })
    .await?;
    let (latencies, status_urls): (Vec<Duration>, Vec<String>) = starts.into_iter().unzip();
    let start_seconds = started.elapsed().as_secs_f64();
    // Every instance must have run its first turn and be waiting: read each status until it is.
    let mut client = Client::default();
    let mut waiting = 0usize;
    for status_url in &status_urls {
        loop {
            let answer = client.send(Method::GET, status_url, &[], None).await?;
            let status = answer.json()?;
            if status["runtimeStatus"] == "Running" {
                waiting += 1;
                break;
            }
            ensure!(status["runtimeStatus"] == "Pending", "an idle instance is {}", status["runtimeStatus"]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let extra = json!({"waiting": waiting, "start_seconds": start_seconds});
    Ok(Measured { count, clients, latencies, extra })
}
