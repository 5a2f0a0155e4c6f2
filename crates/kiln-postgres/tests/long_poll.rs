//! A status waiter whose notification never comes (a failed `NOTIFY`, a dropped LISTEN
//! connection) looks again within the fallback period instead of sleeping to its deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kiln_core::{Payload, RuntimeStatus, Timestamp};
use kiln_store::NewInstance;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_sees_a_change_whose_notification_was_lost() {
    let Some((store, guard)) = common::fresh_store().await else { return };
    let instance = NewInstance {
        instance_id: "quiet".into(),
        name: "orch".into(),
        version: String::new(),
        input: Payload::null(),
        parent: None,
        created_at: Timestamp(1),
        execution: 0,
        labels: Default::default(),
        correlation: None,
    };
    store.create_instance(instance).await.unwrap();
    let mut subscription = store.watchers().subscribe("quiet");

    // The instance finishes behind the store's back: nobody is notified.
    let (client, connection) = tokio_postgres::connect(&common::database_url(), tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    let completed = i16::try_from(RuntimeStatus::Completed.code()).unwrap();
    let sql = format!("UPDATE \"{}\".instances SET status = $1 WHERE instance_id = 'quiet'", guard.schema());
    client.execute(&sql, &[&completed]).await.unwrap();

    let started = Instant::now();
    let deadline = Duration::from_secs(60);
    loop {
        assert!(subscription.wait(deadline).await, "the waiter slept to its deadline");
        if store.get_instance("quiet").await.unwrap().unwrap().status == RuntimeStatus::Completed {
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10), "seen after {:?}", started.elapsed());
    drop(client);
    let _ = driver.await;
}
