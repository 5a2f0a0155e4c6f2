//! Kiln: durable orchestrations in Rust.
//!
//! Orchestrations are ordinary `async fn`s that call activities, wait on durable timers and
//! external events, and start sub-orchestrations. Every step is recorded in a history; after a
//! crash or restart, the code is replayed against that history and continues where it stopped.
//!
//! ```no_run
//! use kiln::{ActivityContext, Failure, Kiln, OrchestrationContext};
//!
//! async fn greet(_ctx: ActivityContext, name: String) -> Result<String, Failure> {
//!     Ok(format!("Hello, {name}!"))
//! }
//!
//! async fn hello(ctx: OrchestrationContext, name: String) -> Result<String, Failure> {
//!     ctx.set_custom_status(&serde_json::json!({"stage": "greeting"}));
//!     ctx.call_activity("greet", &name).await
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let kiln = Kiln::builder()
//!     .sqlite("kiln.db")
//!     .orchestration("hello", hello)
//!     .activity("greet", greet)
//!     .start()
//!     .await?;
//! let client = kiln.client();
//! let id = client.start("hello", "world").await?;
//! let done = client.wait_for_completion(&id, std::time::Duration::from_secs(10)).await?;
//! println!("{:?}", done.output);
//! kiln.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`context`]: the orchestration context and durable futures; [`combinators`]: history-ordered
//!   `select`/`join`; [`retry`]: retry policies; [`activity`]: the activity context.
//! - `executor` (drives one execution through replay), `cache` (live executions between turns),
//!   `turn` (one turn → one atomic commit), `worker` (dispatch loops).
//! - [`client`]: the in-process client. [`config`]: runtime configuration.

pub mod activity;
mod attempt;
pub mod bulk;
mod cache;
pub mod client;
pub mod combinators;
pub mod config;
pub mod context;
mod executor;
mod failure;
mod history_check;
mod log_fields;
mod panic;
mod registry;
pub mod retention;
pub mod retry;
mod runtime;
mod turn;
mod worker;

pub use activity::{ActivityContext, ActivityOptions, MAX_HEARTBEAT_DETAILS_BYTES, Timeouts};
pub use bulk::{BulkAction, BulkOperation, BulkPreview, BulkProgress};
pub use client::{ClientError, KilnClient, StartOptions, Started};
pub use combinators::{DurableStep, Either, join_all, join2, select_all, select2};
pub use config::RuntimeConfig;
pub use context::{DurableFuture, OrchestrationContext};
pub use failure::Failure;
pub use history_check::{ExportedHistory, ReplayMismatch, replay_history};
pub use retention::{InvalidRetention, Keep, Retention, RetentionPass, RetentionPolicy};
pub use retry::{RetryCall, RetryPolicy};
pub use runtime::{MetricsSnapshot, correlate};

pub use kiln_core::{
    Correlation, EventKind, FailureDetails, HistoryEvent, InvalidLabel, InvalidTimeout, LabelFilter, Labels,
    MAX_ACTIVITY_TIMEOUT, MAX_CORRELATION_ID_LEN, MAX_LABELS, Payload, PayloadLimits, ReplayError, RuntimeStatus,
    Timestamp, TraceContext, WaitingOn, error_types, is_layout_control, validate_correlation_id, validate_event_name,
};
pub use kiln_sqlite::{OpenError, SqliteOptions, SqliteStore, Synchronous};
pub use kiln_store::{
    InstancePage, InstanceQuery, InstanceRecord, InstanceSummary, PageCursor, PurgeFilter, PurgePreview, Store,
    StoreError,
};

use registry::Registry;
use runtime::Runtime;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Neither a store nor a SQLite path was given.
    #[error("no store configured: call .store(...) or .sqlite(path)")]
    NoStore,
    /// The SQLite database could not be opened.
    #[error(transparent)]
    Sqlite(#[from] OpenError),
    /// An orchestration was registered under the version reserved for children not pinned yet.
    #[error("orchestration '{0}' is registered under version '*', which is reserved")]
    ReservedVersion(String),
    /// An activity was registered with a timeout out of bounds.
    #[error("activity '{activity}': {reason}")]
    InvalidTimeout {
        /// The activity.
        activity: String,
        /// What is wrong.
        reason: kiln_core::InvalidTimeout,
    },
    /// An application registered a name the runtime keeps for its own (`kiln.…`).
    #[error("'{0}' is reserved for Kiln's built-in orchestrations and activities")]
    ReservedName(String),
    /// The retention settings cannot work.
    #[error(transparent)]
    InvalidRetention(#[from] InvalidRetention),
}

/// Configures and starts a [`Kiln`] runtime.
#[must_use]
pub struct KilnBuilder {
    store: Option<Arc<dyn Store>>,
    sqlite: Option<SqliteOptions>,
    registry: Registry,
    config: RuntimeConfig,
}

impl KilnBuilder {
    /// Uses this store.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses the embedded SQLite store at `path` (durable on commit).
    pub fn sqlite(self, path: impl Into<PathBuf>) -> Self {
        self.sqlite_options(SqliteOptions::new(path))
    }

    /// Uses the embedded SQLite store with explicit options.
    pub fn sqlite_options(mut self, options: SqliteOptions) -> Self {
        self.sqlite = Some(options);
        self
    }

    /// Sets the runtime configuration.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers an orchestration under `name` (version "").
    pub fn orchestration<I, O, F, Fut>(self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        self.orchestration_version(name, "", f)
    }

    /// Registers one version of an orchestration. The last version registered for a name is the
    /// one new instances start on; instances keep the version they started with.
    pub fn orchestration_version<I, O, F, Fut>(mut self, name: &str, version: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        self.registry.add_orchestration(name, version, f);
        self
    }

    /// Registers an activity.
    pub fn activity<I, O, F, Fut>(self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        self.activity_with_timeouts(name, Timeouts::new(), f)
    }

    /// Registers an activity with the [`Timeouts`] its calls get when they set none of their
    /// own (per limit: a call's start-to-close replaces this one's, and so on). Timeouts out of
    /// bounds make [`KilnBuilder::start`] fail.
    pub fn activity_with_timeouts<I, O, F, Fut>(mut self, name: &str, timeouts: Timeouts, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        self.registry.add_activity(name, timeouts, f);
        self
    }

    /// Opens the store and starts the workers. Must be called inside a Tokio runtime.
    pub async fn start(self) -> Result<Kiln, StartError> {
        if let Some(name) = self.registry.name_with_version(kiln_store::UNPINNED_VERSION) {
            return Err(StartError::ReservedVersion(name.to_owned()));
        }
        if let Some((activity, reason)) = self.registry.invalid_timeouts() {
            return Err(StartError::InvalidTimeout { activity, reason });
        }
        if let Some(name) = self.registry.name_with_prefix(bulk::RESERVED_PREFIX) {
            return Err(StartError::ReservedName(name));
        }
        let mut registry = self.registry;
        let runtime_slot = Arc::new(std::sync::OnceLock::new());
        bulk::register(&mut registry, Arc::clone(&runtime_slot));
        self.config.retention.validate(|name| registry.default_version(name).is_some())?;
        let store: Arc<dyn Store> = match (self.store, self.sqlite) {
            (Some(store), _) => store,
            (None, Some(options)) => Arc::new(SqliteStore::open(options)?),
            (None, None) => return Err(StartError::NoStore),
        };
        let rt = Arc::new(Runtime::new(store, registry, self.config));
        let _ = runtime_slot.set(Arc::downgrade(&rt));
        let (shutdown, signal) = watch::channel(false);
        let mut workers = Vec::new();
        for _ in 0..rt.config.orchestration_concurrency.max(1) {
            workers.push(tokio::spawn(worker::orchestration_worker(Arc::clone(&rt), signal.clone())));
        }
        workers.push(tokio::spawn(retention::purger(Arc::clone(&rt), signal.clone())));
        workers.push(tokio::spawn(worker::activity_dispatcher(Arc::clone(&rt), signal)));
        Ok(Kiln { rt, shutdown, workers: Mutex::new(workers) })
    }
}

/// A running Kiln runtime: workers processing orchestrations and activities from a store.
pub struct Kiln {
    rt: Arc<Runtime>,
    shutdown: watch::Sender<bool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Kiln {
    /// Starts configuring a runtime.
    pub fn builder() -> KilnBuilder {
        KilnBuilder { store: None, sqlite: None, registry: Registry::default(), config: RuntimeConfig::default() }
    }

    /// A client for this runtime.
    pub fn client(&self) -> KilnClient {
        KilnClient::new(Arc::clone(&self.rt))
    }

    /// The store the runtime uses.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.rt.store)
    }

    /// How long [`Kiln::shutdown`] lets running activities finish.
    pub fn shutdown_grace(&self) -> std::time::Duration {
        self.rt.config.shutdown_grace
    }

    /// Counters of the work done since start.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.rt.metrics.snapshot()
    }

    /// Purges now what the retention policies let go as of `at` (the background purger does
    /// this with the clock, on one node at a time): for a one-off catch-up, or a test that
    /// cannot wait days. Instances still running are never purged.
    pub async fn apply_retention(&self, at: Timestamp) -> Result<RetentionPass, StoreError> {
        let (_never, stop) = watch::channel(false);
        retention::pass(&self.rt, at, &stop, None).await
    }

    /// Stops taking work: from now on no turn or activity is claimed, and running activities
    /// get the grace period ([`Kiln::shutdown_grace`]) before they are handed back. Returns at
    /// once; [`Kiln::shutdown`] waits for it and closes the store. Lets an application drain its
    /// own requests (which may still use the client) during the same grace period.
    pub fn stop_taking_work(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops taking work, lets running activities finish (within the grace period), releases
    /// the rest, and closes the store after its pending writes.
    pub async fn shutdown(&self) {
        self.stop_taking_work();
        let workers: Vec<JoinHandle<()>> = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for worker in workers {
            let _ = worker.await;
        }
        self.rt.store.shutdown().await;
    }
}
