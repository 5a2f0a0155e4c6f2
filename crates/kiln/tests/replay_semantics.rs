//! Replay semantics on paths real applications hit (issue 12): each test is a minimal
//! orchestration and message sequence that lost data or hung before its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DEADLINE, TestKiln, output};
use kiln::{Either, Failure, Kiln, OrchestrationContext, WaitingOn, select2};
use serde_json::{Value, json};
use std::time::Duration;

/// A reminder loop: wait for an approval, send a reminder (count one) each time the wait times
/// out, and wait again.
async fn reminder_loop(ctx: OrchestrationContext, _: ()) -> Result<Value, Failure> {
    let mut reminders = 0u32;
    loop {
        match select2(ctx.wait_for_event::<String>("Approval"), ctx.sleep(Duration::from_millis(100))).await {
            Either::Left(approval) => return Ok(json!({"approval": approval?, "reminders": reminders})),
            Either::Right(fired) => {
                fired?;
                reminders += 1;
                ctx.set_custom_status(&reminders);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_lost_a_race_gives_its_place_back() {
    let t = TestKiln::start(Kiln::builder().orchestration("reminder_loop", reminder_loop)).await;
    let id = t.client.start("reminder_loop", &()).await.unwrap();
    // Three waits have timed out: the one approval goes to the live wait, not a dead one.
    t.client
        .wait_until(&id, DEADLINE, |r| r.custom_status.as_ref().is_some_and(|s| s.as_str() >= "3"))
        .await
        .unwrap()
        .expect("three reminders");
    let record = t.client.status(&id).await.unwrap().unwrap();
    let events = record.waiting_on.iter().filter(|w| matches!(w, WaitingOn::Event { .. })).count();
    assert_eq!(events, 1, "only the live wait is listed: {:?}", record.waiting_on);
    t.client.raise_event(&id, "Approval", &"yes").await.unwrap();
    let done = t.client.wait_for_completion(&id, Duration::from_secs(5)).await.unwrap();
    let output = output(&done);
    assert_eq!(output["approval"], "yes", "{output}");
    assert!(output["reminders"].as_u64().unwrap() >= 3, "{output}");
    t.stop().await;
}
