//! Helpers shared by the runtime's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod faulty_store;

use kiln::{InstanceRecord, Kiln, KilnBuilder, KilnClient, RuntimeConfig, RuntimeStatus};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Generous bound for waits in tests: they end as soon as the condition holds.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A runtime on a temporary database.
pub struct TestKiln {
    pub kiln: Kiln,
    pub client: KilnClient,
    pub path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl TestKiln {
    /// Starts `builder` on a fresh temporary database.
    pub async fn start(builder: KilnBuilder) -> TestKiln {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let mut test = TestKiln::start_at(builder, &path).await;
        test._dir = Some(dir);
        test
    }

    /// Starts `builder` on an existing database path.
    pub async fn start_at(builder: KilnBuilder, path: &Path) -> TestKiln {
        let config = RuntimeConfig { shutdown_grace: Duration::from_millis(200), ..RuntimeConfig::default() };
        let kiln = builder.config(config).sqlite(path).start().await.unwrap();
        let client = kiln.client();
        TestKiln { kiln, client, path: path.to_owned(), _dir: None }
    }

    /// Waits for a terminal status.
    pub async fn finish(&self, id: &str) -> InstanceRecord {
        self.client.wait_for_completion(id, DEADLINE).await.unwrap()
    }

    /// Waits until the instance has `status`.
    pub async fn reach(&self, id: &str, status: RuntimeStatus) -> InstanceRecord {
        self.client.wait_until(id, DEADLINE, |r| r.status == status).await.unwrap().expect("status reached in time")
    }

    /// Waits until the instance waits on something (its first turn has committed).
    pub async fn waiting(&self, id: &str) -> InstanceRecord {
        self.client
            .wait_until(id, DEADLINE, |r| !r.waiting_on.is_empty())
            .await
            .unwrap()
            .expect("instance waits in time")
    }

    /// Stops the runtime and takes the temporary directory along.
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        self.kiln.shutdown().await;
        self._dir
    }
}

/// Waits until `condition` holds (polling every 20 ms), failing with `what` after [`DEADLINE`].
pub async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The output of a completed instance as JSON.
pub fn output(record: &InstanceRecord) -> serde_json::Value {
    assert_eq!(record.status, RuntimeStatus::Completed, "failure: {:?}", record.failure);
    serde_json::from_str(record.output.as_ref().expect("output").as_str()).unwrap()
}

/// The failure message of a failed instance.
pub fn failure_message(record: &InstanceRecord) -> String {
    assert_eq!(record.status, RuntimeStatus::Failed, "output: {:?}", record.output);
    record.failure.as_ref().expect("failure").error_message.clone()
}

/// A store backend for tests that run on both: a SQLite file in a temporary directory, or a
/// fresh schema on the test PostgreSQL (dropped when this is dropped). Each [`Backend::open`]
/// is another process's (or node's) view of the same data.
pub enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres { url: String, schema: String },
}

impl Backend {
    /// Both backends, PostgreSQL only when it is reachable (or required: `KILN_REQUIRE_POSTGRES=1`).
    pub async fn all() -> Vec<Backend> {
        let mut backends = vec![Backend::Sqlite(tempfile::tempdir().unwrap())];
        let url = std::env::var("KILN_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let postgres = Backend::Postgres { url, schema: format!("kiln_test_{}", uuid::Uuid::new_v4().simple()) };
        match postgres.try_open().await {
            Ok(_) => backends.push(postgres),
            Err(err) => {
                let required = std::env::var("KILN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
                assert!(!required, "PostgreSQL is required (KILN_REQUIRE_POSTGRES=1): {err}");
                eprintln!("PostgreSQL part skipped: not available ({err})");
            }
        }
        backends
    }

    /// `sqlite` or `postgres`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// A store on this backend's data.
    pub async fn open(&self) -> std::sync::Arc<dyn kiln::Store> {
        self.try_open().await.unwrap()
    }

    async fn try_open(&self) -> Result<std::sync::Arc<dyn kiln::Store>, String> {
        match self {
            Backend::Sqlite(dir) => kiln::SqliteStore::open(kiln::SqliteOptions::new(dir.path().join("kiln.db")))
                .map(|store| std::sync::Arc::new(store) as std::sync::Arc<dyn kiln::Store>)
                .map_err(|e| e.to_string()),
            Backend::Postgres { url, schema } => {
                let mut options = kiln_postgres::PostgresOptions::new(url.clone());
                options.schema = Some(schema.clone());
                options.pool_size = 4;
                kiln_postgres::PostgresStore::connect(options)
                    .await
                    .map(|store| std::sync::Arc::new(store) as std::sync::Arc<dyn kiln::Store>)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Postgres { url, schema } = self {
            let (url, schema) = (url.clone(), schema.clone());
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(kiln_postgres::schema::drop_schema(&url, &schema))
            })
            .join();
        }
    }
}
