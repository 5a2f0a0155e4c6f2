//! A quick end-to-end throughput check on the embedded store: each client starts a one-activity
//! orchestration, waits for its result, and starts the next. (The full load generator is
//! `kiln bench`; this is the quick local figure.)
//!
//! `cargo run --release -p kiln --example throughput -- [COUNT] [CLIENTS] [normal|full|postgres://…]`
//! (PostgreSQL runs in a schema of its own, `kiln_throughput_{pid}`.)

use kiln::{ActivityContext, Failure, Kiln, OrchestrationContext, SqliteOptions, Synchronous};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

async fn hello(ctx: OrchestrationContext, name: String) -> Result<String, Failure> {
    ctx.call_activity("greet", &name).await
}

async fn greet(_: ActivityContext, name: String) -> Result<String, Failure> {
    Ok(format!("Hello, {name}!"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let clients: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let store = args.next();
    let dir = tempfile::tempdir()?;
    let builder = match store.as_deref() {
        Some(url) if url.starts_with("postgres") => {
            let mut options = kiln_postgres::PostgresOptions::new(url);
            options.schema = Some(format!("kiln_throughput_{}", std::process::id()));
            Kiln::builder().store(Arc::new(kiln_postgres::PostgresStore::connect(options).await?))
        }
        other => {
            let mut options = SqliteOptions::new(dir.path().join("kiln.db"));
            options.synchronous = if other == Some("normal") { Synchronous::Normal } else { Synchronous::Full };
            Kiln::builder().sqlite_options(options)
        }
    };
    let kiln = builder.orchestration("hello", hello).activity("greet", greet).start().await?;
    let client = kiln.client();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, next) = (client.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let t0 = Instant::now();
                let id = client.start("hello", "kiln").await?;
                client.wait_for_completion(&id, Duration::from_secs(60)).await?;
                latencies.push(t0.elapsed());
            }
            Ok::<_, kiln::ClientError>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let metrics = kiln.metrics();
    println!(
        "{count} orchestrations, {clients} clients, store {}: {:.0} orchestrations/s, {:.0} turns/s, \
         p50 {:.2} ms, p99 {:.2} ms, replays {}",
        store.as_deref().map_or("sqlite, synchronous=FULL", |s| if s.starts_with("postgres") { "postgres" } else { s }),
        count as f64 / elapsed.as_secs_f64(),
        metrics.turns as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        metrics.replays,
    );
    kiln.shutdown().await;
    Ok(())
}
