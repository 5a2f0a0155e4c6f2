//! Bulk operations, on SQLite and on PostgreSQL: terminate, rewind and purge act on exactly what
//! their query selects (name, statuses, creation range; nothing created after they start), show
//! their progress, survive a restart in the middle, and refuse what cannot apply. Counted by the
//! instances' own states, not by the operation's totals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, DEADLINE};
use kiln::{
    ActivityContext, BulkAction, BulkOperation, BulkProgress, ClientError, Failure, Kiln, KilnBuilder, KilnClient,
    OrchestrationContext, RuntimeConfig, RuntimeStatus,
};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

async fn waits(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
    ctx.wait_for_event::<()>("go").await
}

/// Instances whose activity has failed once (it succeeds from the second time on).
static FAILED_ONCE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

async fn fails_once(ctx: ActivityContext, _: ()) -> Result<(), Failure> {
    let mut failed = FAILED_ONCE.lock().unwrap();
    if failed.get_or_insert_with(HashSet::new).insert(ctx.instance_id().to_owned()) {
        return Err(Failure::new("first time"));
    }
    Ok(())
}

async fn flaky(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
    ctx.call_activity("fails_once", &()).await
}

fn builder() -> KilnBuilder {
    let config = RuntimeConfig { shutdown_grace: Duration::from_millis(200), ..RuntimeConfig::default() };
    Kiln::builder()
        .config(config)
        .orchestration("waits", waits)
        .orchestration("other", waits)
        .orchestration("flaky", flaky)
        .activity("fails_once", fails_once)
}

async fn start_waiting(client: &KilnClient, name: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(client.start(name, &()).await.unwrap());
    }
    for id in &ids {
        client.wait_until(id, DEADLINE, |r| !r.waiting_on.is_empty()).await.unwrap().unwrap();
    }
    ids
}

async fn status(client: &KilnClient, id: &str) -> Option<RuntimeStatus> {
    client.status(id).await.unwrap().map(|r| r.status)
}

/// Runs `operation` to its end; returns its totals.
async fn run(client: &KilnClient, operation: BulkOperation) -> BulkProgress {
    let id = client.start_bulk(operation).await.unwrap();
    let done = client.wait_for_completion(&id, DEADLINE).await.unwrap();
    assert_eq!(done.status, RuntimeStatus::Completed, "{:?}", done.failure);
    serde_json::from_str(done.output.unwrap().as_str()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_rewind_and_purge_act_on_what_the_query_selects() {
    for backend in Backend::all().await {
        let kiln = builder().store(backend.open().await).start().await.unwrap();
        let client = kiln.client();
        let selected = start_waiting(&client, "waits", 230).await;
        let others = start_waiting(&client, "other", 3).await;
        let mut terminate = BulkOperation::new(BulkAction::Terminate);
        terminate.name = Some("waits".into());
        terminate.reason = Some("clean-up".into());

        let preview = client.preview_bulk(&terminate, 10).await.unwrap();
        assert_eq!((preview.matched, preview.complete, preview.first.len()), (230, true, 10), "{}", backend.name());
        for id in &selected {
            assert_eq!(status(&client, id).await, Some(RuntimeStatus::Running), "a dry run changes nothing");
        }
        let op = client.start_bulk(terminate).await.unwrap();
        let late = start_waiting(&client, "waits", 1).await;
        let done = client.wait_for_completion(&op, DEADLINE).await.unwrap();
        let progress: BulkProgress = serde_json::from_str(done.output.unwrap().as_str()).unwrap();
        assert_eq!(progress, BulkProgress { done: 230, skipped: 0, pages: 3 }, "{}", backend.name());
        assert_eq!(done.custom_status.map(|c| c.as_str().to_owned()), Some(serde_json::to_string(&progress).unwrap()));
        for id in &selected {
            let record = client.wait_until(id, DEADLINE, |r| r.status.is_terminal()).await.unwrap().unwrap();
            assert_eq!(record.status, RuntimeStatus::Terminated, "{}: {id}", backend.name());
        }
        for id in others.iter().chain(&late) {
            assert_eq!(
                status(&client, id).await,
                Some(RuntimeStatus::Running),
                "{}: {id} not selected",
                backend.name()
            );
        }

        let failing: Vec<String> = {
            let mut ids = Vec::new();
            for _ in 0..3 {
                ids.push(client.start("flaky", &()).await.unwrap());
            }
            ids
        };
        for id in &failing {
            assert_eq!(client.wait_for_completion(id, DEADLINE).await.unwrap().status, RuntimeStatus::Failed);
        }
        let mut rewind = BulkOperation::new(BulkAction::Rewind);
        rewind.name = Some("flaky".into());
        assert_eq!(run(&client, rewind).await.done, 3);
        for id in &failing {
            let record = client.wait_until(id, DEADLINE, |r| r.status == RuntimeStatus::Completed).await.unwrap();
            assert!(record.is_some(), "{}: {id} rewound and completed", backend.name());
        }

        let mut purge = BulkOperation::new(BulkAction::Purge);
        purge.name = Some("waits".into());
        purge.statuses = vec![RuntimeStatus::Terminated];
        assert_eq!(run(&client, purge).await.done, 230);
        for id in &selected {
            assert_eq!(status(&client, id).await, None, "{}: {id} purged", backend.name());
        }
        assert_eq!(status(&client, &late[0]).await, Some(RuntimeStatus::Running));
        assert_eq!(status(&client, &failing[0]).await, Some(RuntimeStatus::Completed), "another name");
        kiln.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_cut_by_a_restart_finishes_every_instance_it_selected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let kiln = builder().sqlite(&path).start().await.unwrap();
    let client = kiln.client();
    // More than one execution's worth of pages: the operation continues as new on its way.
    let selected = start_waiting(&client, "waits", 5_150).await;
    let op = client.start_bulk(BulkOperation::new(BulkAction::Terminate)).await.unwrap();
    let progressed = |r: &kiln::InstanceRecord| {
        r.custom_status
            .as_ref()
            .and_then(|c| serde_json::from_str::<BulkProgress>(c.as_str()).ok())
            .is_some_and(|p| p.pages >= 3)
    };
    let cut = client.wait_until(&op, DEADLINE, progressed).await.unwrap().expect("three pages done");
    assert!(!cut.status.is_terminal(), "the restart comes in the middle: {:?}", cut.custom_status);
    kiln.shutdown().await;

    let kiln = builder().sqlite(&path).start().await.unwrap();
    let client = kiln.client();
    let done = client.wait_until(&op, Duration::from_secs(120), |r| r.status.is_terminal()).await.unwrap().unwrap();
    assert_eq!(done.status, RuntimeStatus::Completed, "{:?}", done.failure);
    let progress: BulkProgress = serde_json::from_str(done.output.unwrap().as_str()).unwrap();
    // A page redone after the restart may count an instance twice (its termination was on
    // its way); none is missed.
    assert!(progress.done + progress.skipped >= 5_150 && progress.pages >= 52, "{progress:?}");
    for id in &selected {
        let record = client.wait_until(id, DEADLINE, |r| r.status.is_terminal()).await.unwrap().unwrap();
        assert_eq!(record.status, RuntimeStatus::Terminated, "{id}");
    }
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_that_cannot_apply_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kiln = builder().sqlite(dir.path().join("kiln.db")).start().await.unwrap();
    let client = kiln.client();
    let mut rewind_running = BulkOperation::new(BulkAction::Rewind);
    rewind_running.statuses = vec![RuntimeStatus::Running];
    let err = client.start_bulk(rewind_running.clone()).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidBulkOperation(_)), "{err}");
    assert_eq!(err.to_string(), "rewind does not apply to Running instances (only to Failed)");
    assert!(client.preview_bulk(&rewind_running, 1).await.is_err());
    let mut purge_running = BulkOperation::new(BulkAction::Purge);
    purge_running.statuses = vec![RuntimeStatus::Running];
    assert!(client.start_bulk(purge_running).await.is_err());
    // The built-in orchestration starts only through start_bulk, which checks what it runs.
    assert!(matches!(client.start("kiln.bulk", &()).await, Err(ClientError::UnknownOrchestration { .. })));
    assert!(!client.orchestration_names().iter().any(|n| n.starts_with("kiln.")));
    kiln.shutdown().await;
    let reserved = Kiln::builder().orchestration("kiln.mine", waits).sqlite(dir.path().join("other.db")).start().await;
    assert!(matches!(reserved.err(), Some(kiln::StartError::ReservedName(name)) if name == "kiln.mine"));
}
