//! Deterministic simulation: seeded random workloads under a controlled clock and injected
//! faults, with invariants checked after every run (see "How we test: deterministic simulation"
//! in `docs/architecture.md`).
//!
//! - `program`: generated programs and the one orchestration that interprets them; `samples`:
//!   the samples, compiled in from `examples/src`;
//! - `plan`: what a seed decides (programs, client operations, faults);
//! - `nodes`: runtimes that can be crashed and restarted; `driver`: one run; `invariants`.
//!
//! `KILN_SIM_SEED=N` runs one seed; `KILN_SIM_SEEDS=N` runs N seeds from `KILN_SIM_FIRST_SEED`
//! (default 1). `KILN_SIM_LOG=warn` (any `RUST_LOG`-style filter) prints the runtime's own logs.
//! Workload switches, each `=1` for every seed and `=0` for none:
//! `KILN_SIM_REWIND` adds steps that fail once and are rewound (on by default);
//! `KILN_SIM_MIXED_VERSIONS` takes the newest version off PostgreSQL's second node (by default
//! in odd seeds); `KILN_SIM_ORPHANS` reuses ids while a child of the old instance still runs (by
//! default in even seeds). A failing seed prints the command that reruns it. The clock is
//! process-wide, so the tests here take turns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod driver;
mod invariants;
mod nodes;
mod plan;
mod program;
mod rng;
mod samples;

use nodes::Backend;
use plan::Plan;
use std::sync::Mutex;
use std::time::Instant;

/// The simulated clock is process-wide: one run at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The seeds to run: one (`KILN_SIM_SEED`), or `KILN_SIM_SEEDS` (else `default`) from
/// `KILN_SIM_FIRST_SEED`.
fn seeds(default: u64) -> Vec<u64> {
    if let Some(seed) = env_u64("KILN_SIM_SEED") {
        return vec![seed];
    }
    let first = env_u64("KILN_SIM_FIRST_SEED").unwrap_or(1);
    (first..first + env_u64("KILN_SIM_SEEDS").unwrap_or(default)).collect()
}

/// A workload switch: on with `{name}=1`, off with `{name}=0`, else `default`.
fn switch(name: &str, default: bool) -> bool {
    match std::env::var(name).as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => default,
    }
}

/// Runs every seed on a backend made by `backend`; fails listing every failing seed.
fn run_seeds(test: &str, default: u64, backend: impl Fn(u64) -> (Backend, Box<dyn FnOnce()>)) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Ok(filter) = std::env::var("KILN_SIM_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let began = Instant::now();
    let seeds = seeds(default);
    let rewind = switch("KILN_SIM_REWIND", true);
    let mut rerun_env = String::new();
    for name in ["KILN_SIM_REWIND", "KILN_SIM_MIXED_VERSIONS", "KILN_SIM_ORPHANS"] {
        if let Ok(value) = std::env::var(name) {
            rerun_env += &format!(" {name}={value}");
        }
    }
    let mut failed = Vec::new();
    for &seed in &seeds {
        let (backend, cleanup) = backend(seed);
        let orphans = switch("KILN_SIM_ORPHANS", seed % 2 == 0);
        let plan = Plan::new(seed, driver::node_count(&backend), rewind, orphans);
        let started = Instant::now();
        let result = driver::run(seed, &backend, &plan);
        cleanup();
        let errors = match result {
            Ok(observed) => {
                let errors = invariants::check(&plan, &observed);
                if errors.is_empty() || std::env::var("KILN_SIM_VERBOSE").is_ok() {
                    eprintln!("seed {seed}: {} in {:?}", observed.summary(), started.elapsed());
                }
                errors
            }
            Err(err) => vec![err],
        };
        if !errors.is_empty() {
            eprintln!("\nseed {seed} FAILED:\n  {}\nplan: {plan:#?}", errors.join("\n  "));
            eprintln!(
                "rerun: KILN_SIM_SEED={seed}{rerun_env} cargo test -p kiln --test simulation {test} -- --nocapture\n"
            );
            failed.push(seed);
        }
    }
    eprintln!("{test}: {} seeds in {:?}", seeds.len(), began.elapsed());
    assert!(failed.is_empty(), "failing seeds: {failed:?} (rerun one with KILN_SIM_SEED=<seed>)");
}

#[test]
fn sqlite() {
    run_seeds("sqlite", 200, |_| {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::Sqlite(dir.path().join("kiln.db"));
        (backend, Box::new(move || drop(dir)))
    });
}

#[test]
fn postgres() {
    let url = std::env::var("KILN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    if let Err(err) = probe(&url) {
        let required = std::env::var("KILN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        assert!(!required, "PostgreSQL is required (KILN_REQUIRE_POSTGRES=1): {err}");
        eprintln!("skipped: PostgreSQL at {url} is not available ({err}); set KILN_REQUIRE_POSTGRES=1 to fail instead");
        return;
    }
    run_seeds("postgres", 50, |seed| {
        let schema = format!("kiln_sim_{seed}_{}", uuid::Uuid::new_v4().simple());
        let backend = Backend::Postgres { url: url.clone(), schema: schema.clone() };
        let url = url.clone();
        (backend, Box::new(move || drop_schema(&url, &schema)))
    });
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// Whether PostgreSQL answers.
fn probe(url: &str) -> Result<(), String> {
    let schema = format!("kiln_sim_probe_{}", uuid::Uuid::new_v4().simple());
    let mut options = kiln_postgres::PostgresOptions::new(url.to_owned());
    options.schema = Some(schema.clone());
    let connected = block_on(kiln_postgres::PostgresStore::connect(options)).map(drop).map_err(|e| e.to_string());
    drop_schema(url, &schema);
    connected
}

fn drop_schema(url: &str, schema: &str) {
    let _ = block_on(kiln_postgres::schema::drop_schema(url, schema));
}
