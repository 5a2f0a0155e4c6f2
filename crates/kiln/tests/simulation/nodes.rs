//! Simulated nodes: each runs a [`Kiln`] runtime on its own Tokio runtime over a
//! [`FaultyStore`], so that the driver can *crash* one (drop every task at whatever await it is
//! in, with no shutdown) and start a fresh one on the same database.

use crate::common::faulty_store::{Fault, FaultyStore};
use crate::program::{fail, fail_once, flaky, held, interpret, nudge, slow_work, work};
use kiln::{ClientError, Kiln, KilnClient, RuntimeConfig, Store};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a claim lasts (simulated time: the driver expires leases by moving the clock).
pub const LEASE: Duration = Duration::from_secs(5);
/// Longest a client call is retried through injected store errors.
const CLIENT_RETRY: Duration = Duration::from_secs(10);

/// Where the simulated nodes keep their state.
#[derive(Clone, Debug)]
pub enum Backend {
    /// One SQLite file (one node: the store is single-process).
    Sqlite(PathBuf),
    /// One PostgreSQL schema shared by two nodes.
    Postgres {
        /// Connection URL.
        url: String,
        /// The schema of this run.
        schema: String,
    },
}

impl Backend {
    async fn open(&self) -> Result<Arc<dyn Store>, String> {
        match self {
            Backend::Sqlite(path) => kiln::SqliteStore::open(kiln::SqliteOptions::new(path))
                .map(|s| Arc::new(s) as Arc<dyn Store>)
                .map_err(|e| format!("open SQLite: {e}")),
            Backend::Postgres { url, schema } => {
                let mut options = kiln_postgres::PostgresOptions::new(url.clone());
                options.schema = Some(schema.clone());
                options.pool_size = 4;
                kiln_postgres::PostgresStore::connect(options)
                    .await
                    .map(|s| Arc::new(s) as Arc<dyn Store>)
                    .map_err(|e| format!("connect PostgreSQL: {e}"))
            }
        }
    }
}

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Orchestration versions of the interpreter it registers (the last is its default).
    pub versions: Vec<&'static str>,
    /// Per mille of store calls that get a fault.
    pub per_mille: u64,
    /// Seed of the fault schedule.
    pub fault_seed: u64,
    /// Per mille of waiting claims that miss their wake-up.
    pub lost_notifications: u64,
    /// Execution cache capacity (0: every turn replays).
    pub cache: usize,
}

/// One running node.
pub struct Node {
    rt: tokio::runtime::Runtime,
    kiln: Kiln,
    /// A client of this node.
    pub client: KilnClient,
    faulty: Arc<FaultyStore>,
    inner: Arc<dyn Store>,
}

impl Node {
    /// Starts a node on `backend`.
    pub fn start(backend: &Backend, spec: &NodeSpec) -> Result<Node, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio: {e}"))?;
        let (kiln, faulty, inner) = rt.block_on(async {
            let inner = backend.open().await?;
            let faulty = Arc::new(FaultyStore::new(Arc::clone(&inner), spec.per_mille, spec.fault_seed).at_random());
            faulty.lose_notifications(spec.lost_notifications);
            let config = RuntimeConfig {
                orchestration_concurrency: 4,
                activity_concurrency: 8,
                lease_duration: LEASE,
                cache_capacity: spec.cache,
                shutdown_grace: Duration::from_millis(100),
                unregistered_retry: Duration::from_millis(20),
                ..RuntimeConfig::default()
            };
            let mut builder = Kiln::builder().config(config).store(Arc::clone(&faulty) as Arc<dyn Store>);
            for version in &spec.versions {
                builder = builder.orchestration_version("interp", version, interpret);
            }
            let kiln = crate::samples::register(builder)
                .orchestration("nudge", nudge)
                .activity("work", work)
                .activity("slow_work", slow_work)
                .activity("held", held)
                .activity("fail", fail)
                .activity("flaky", flaky)
                .activity("fail_once", fail_once)
                .start()
                .await
                .map_err(|e| format!("start: {e}"))?;
            Ok::<_, String>((kiln, faulty, inner))
        })?;
        let client = kiln.client();
        Ok(Node { rt, kiln, client, faulty, inner })
    }

    /// Runs `op` on this node's runtime, retrying it through store errors (injected ones among
    /// them) for a while.
    pub fn call<T>(&self, what: &str, op: impl AsyncFn(&KilnClient) -> Result<T, ClientError>) -> Result<T, String> {
        self.rt.block_on(async {
            let deadline = Instant::now() + CLIENT_RETRY;
            loop {
                match op(&self.client).await {
                    Err(ClientError::Store(_)) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => return other.map_err(|e| format!("{what}: {e}")),
                }
            }
        })
    }

    /// Runs `op` on this node's runtime once.
    pub fn once<T>(&self, op: impl AsyncFnOnce(&KilnClient) -> T) -> T {
        self.rt.block_on(op(&self.client))
    }

    /// The faults injected into this node's store calls so far.
    pub fn injected(&self) -> BTreeMap<(&'static str, Fault), u32> {
        self.faulty.injected()
    }

    /// The node's work counters.
    pub fn metrics(&self) -> kiln::MetricsSnapshot {
        self.kiln.metrics()
    }

    /// Stops injecting faults (for the checks after a run).
    pub fn calm(&self) {
        self.faulty.enabled.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Crashes the node: every task is dropped wherever it is, nothing is released. Writes the
    /// store had already taken are finished (as if they committed just before the crash), so
    /// that a new node may open the same database.
    pub fn crash(self) {
        let Node { rt, kiln, client, faulty, inner } = self;
        drop(client);
        drop(kiln);
        rt.shutdown_background();
        drop(faulty);
        if let Ok(helper) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            helper.block_on(inner.shutdown());
        }
    }

    /// Shuts the node down in order.
    pub fn stop(self) {
        self.rt.block_on(self.kiln.shutdown());
    }
}
