//! Deploying a changed orchestration over instances in flight, on SQLite and on PostgreSQL: an
//! instance started on the old code keeps its old branch after a restart on code with a patch,
//! while new instances take the new one; `replay_history` catches the change made without a
//! patch, and a patch id reused for another change, before they ship.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Backend;
use kiln::{
    ActivityContext, ExportedHistory, Failure, Kiln, KilnBuilder, KilnClient, OrchestrationContext, ReplayError,
    ReplayMismatch, RuntimeStatus, replay_history,
};

async fn echo(_ctx: ActivityContext, text: String) -> Result<String, Failure> {
    Ok(text)
}

async fn prepare_twice(_ctx: ActivityContext, _: ()) -> Result<String, Failure> {
    Ok("prepared twice".to_owned())
}

/// v1: prepare, wait for `go`, ship.
async fn v1(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
    let prepared: String = ctx.call_activity("echo", "prepared").await?;
    ctx.wait_for_event::<()>("go").await?;
    let shipped: String = ctx.call_activity("echo", "shipped").await?;
    Ok(vec![prepared, shipped])
}

/// v2, done right: the new preparation behind a patch.
async fn v2_patched(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
    let prepared: String = if ctx.patched("prepare-twice") {
        ctx.call_activity("prepare_twice", &()).await?
    } else {
        ctx.call_activity("echo", "prepared").await?
    };
    ctx.wait_for_event::<()>("go").await?;
    let shipped: String = ctx.call_activity("echo", "shipped").await?;
    Ok(vec![prepared, shipped])
}

/// v2, done wrong: the new preparation for everyone, in flight or not.
async fn v2_unpatched(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
    let prepared: String = ctx.call_sub_orchestration("prepare", "twice").await?;
    ctx.wait_for_event::<()>("go").await?;
    let shipped: String = ctx.call_activity("echo", "shipped").await?;
    Ok(vec![prepared, shipped])
}

/// v3: the old branch gone, and the patch id reused for another change further on.
async fn v3_reusing_the_id(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
    let prepared: String = ctx.call_activity("prepare_twice", &()).await?;
    ctx.wait_for_event::<()>("go").await?;
    if ctx.patched("prepare-twice") {
        ctx.call_activity::<_, String>("echo", "inspected").await?;
    }
    let shipped: String = ctx.call_activity("echo", "shipped").await?;
    Ok(vec![prepared, shipped])
}

fn builder<F, Fut>(orchestration: F) -> KilnBuilder
where
    F: Fn(OrchestrationContext, ()) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<String>, Failure>> + Send + 'static,
{
    Kiln::builder().orchestration("ship", orchestration).activity("echo", echo).activity("prepare_twice", prepare_twice)
}

/// Starts `ship` and waits until it waits for `go`.
async fn start_and_wait_for_go(client: &KilnClient) -> String {
    let id = client.start("ship", &()).await.unwrap();
    let waits_for_go = |r: &kiln::InstanceRecord| {
        r.waiting_on.iter().any(|w| matches!(w, kiln::WaitingOn::Event { name } if name == "go"))
    };
    client.wait_until(&id, common::DEADLINE, waits_for_go).await.unwrap().expect("waits for go");
    id
}

async fn ship(client: &KilnClient, id: &str) -> serde_json::Value {
    client.raise_event(id, "go", &()).await.unwrap();
    common::output(&client.wait_for_completion(id, common::DEADLINE).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_keeps_instances_in_flight_on_the_old_branch_and_new_ones_take_the_new() {
    for backend in Backend::all().await {
        let on = backend.name();
        let old_code = builder(v1).store(backend.open().await).start().await.unwrap();
        let in_flight = start_and_wait_for_go(&old_code.client()).await;
        let recorded_on_v1 = old_code.client().export_history(&in_flight).await.unwrap();
        old_code.shutdown().await;

        // Before the deploy: the histories in flight replay against the patched code, not
        // against the unpatched one.
        replay_history(v2_patched, &recorded_on_v1).unwrap();
        let Err(ReplayMismatch::Replay { source: ReplayError::NonDeterminism { step, recorded, actual }, .. }) =
            replay_history(v2_unpatched, &recorded_on_v1)
        else {
            panic!("{on}: the change without a patch is caught")
        };
        assert_eq!((step, recorded.as_str()), (0, "TaskScheduled('echo')"), "{on}");
        assert_eq!(actual, "call_sub_orchestration('prepare')", "{on}");

        let new_code = builder(v2_patched).store(backend.open().await).start().await.unwrap();
        let client = new_code.client();
        assert_eq!(ship(&client, &in_flight).await, serde_json::json!(["prepared", "shipped"]), "{on}: old branch");
        let fresh = start_and_wait_for_go(&client).await;
        let recorded_on_v2 = client.export_history(&fresh).await.unwrap();
        assert_eq!(ship(&client, &fresh).await, serde_json::json!(["prepared twice", "shipped"]), "{on}: new branch");
        let completed_on_v2 = client.export_history(&fresh).await.unwrap();
        new_code.shutdown().await;

        // A finished history replays to the same end; one replayed with the id reused for
        // another change fails, naming the patch.
        replay_history(v2_patched, &completed_on_v2).unwrap();
        replay_history(v3_reusing_the_id, &recorded_on_v2).unwrap();
        let mismatch = replay_history(v3_reusing_the_id, &completed_on_v2).unwrap_err().to_string();
        assert!(mismatch.contains("patch 'prepare-twice' taken before step 0"), "{on}: {mismatch}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_history_reports_an_execution_that_now_ends_differently() {
    let test = common::TestKiln::start(builder(v1)).await;
    let id = start_and_wait_for_go(&test.client).await;
    ship(&test.client, &id).await;
    let history: ExportedHistory = test.client.export_history(&id).await.unwrap();
    assert_eq!(test.client.status(&id).await.unwrap().unwrap().status, RuntimeStatus::Completed);
    let ends_otherwise = async |ctx: OrchestrationContext, _: ()| -> Result<Vec<String>, Failure> {
        let prepared: String = ctx.call_activity("echo", "prepared").await?;
        ctx.wait_for_event::<()>("go").await?;
        let shipped: String = ctx.call_activity("echo", "shipped").await?;
        Ok(vec![shipped, prepared])
    };
    let mismatch = replay_history(ends_otherwise, &history).unwrap_err();
    assert!(
        matches!(&mismatch, ReplayMismatch::DifferentEnd { recorded, replayed, .. }
            if recorded.contains(r#"["prepared","shipped"]"#) && replayed.contains(r#"["shipped","prepared"]"#)),
        "{mismatch}"
    );
    // The export is what the CLI writes: it survives a trip through JSON.
    let text = serde_json::to_string(&history).unwrap();
    assert_eq!(serde_json::from_str::<ExportedHistory>(&text).unwrap(), history);
    test.stop().await;
}
