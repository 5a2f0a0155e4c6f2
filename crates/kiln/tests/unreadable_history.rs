//! An instance whose stored history cannot be read is retried when its lease lapses, each retry
//! counted, and ends as `PoisonMessage` — never given back uncounted and retried forever.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln::{Failure, Kiln, OrchestrationContext, RuntimeConfig, RuntimeStatus, error_types};
use std::time::Duration;

async fn waits(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    ctx.wait_for_event("go").await
}

async fn start(path: &std::path::Path) -> Kiln {
    let config = RuntimeConfig { lease_duration: Duration::from_secs(1), max_dequeue_count: 2, ..Default::default() };
    Kiln::builder().sqlite(path).config(config).orchestration("waits", waits).start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_history_cannot_be_read_ends_as_poison() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let kiln = start(&path).await;
    let id = kiln.client().start("waits", &()).await.unwrap();
    kiln.client().wait_until(&id, Duration::from_secs(10), |r| !r.waiting_on.is_empty()).await.unwrap().unwrap();
    kiln.shutdown().await;

    let db = rusqlite::Connection::open(&path).unwrap();
    assert!(db.execute("UPDATE history SET event = 'not an event'", []).unwrap() > 0);
    drop(db);

    let kiln = start(&path).await;
    kiln.client().raise_event(&id, "go", &"now").await.unwrap();
    let done = kiln.client().wait_for_completion(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.status, RuntimeStatus::Failed);
    assert_eq!(done.failure.unwrap().error_type, error_types::POISON);
    kiln.shutdown().await;
}
