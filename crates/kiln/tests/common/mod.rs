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
