//! Group commit keeps requests independent: one refused part-way through its writes is undone
//! alone, and the requests sharing its transaction still commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln_core::{Payload, Timestamp};
use kiln_sqlite::{SqliteOptions, SqliteStore};
use kiln_store::{IdempotencyKey, NewInstance, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64)
}

fn instance(id: &str) -> NewInstance {
    NewInstance {
        instance_id: id.into(),
        name: "o".into(),
        version: String::new(),
        input: Payload::null(),
        parent: None,
        created_at: now(),
        execution: 0,
        labels: Default::default(),
        correlation: None,
    }
}

fn key(key: &str, fingerprint: &str, expires_at: Timestamp) -> IdempotencyKey {
    IdempotencyKey { key: key.into(), fingerprint: fingerprint.into(), expires_at }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_after_writing_does_not_undo_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path().join("kiln.db"))).unwrap());
    let later = now().plus_millis(60_000);
    store.create_instance_idempotent(instance("kept"), key("live", "f", later)).await.unwrap();
    store.create_instance_idempotent(instance("old"), key("expired", "f", now().plus_millis(1))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for round in 0..5 {
        // The refused request first deletes the expired key (a write), then finds `live` held
        // under another fingerprint; its neighbours are in flight at the same moment.
        let neighbours: Vec<_> = (0..16)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.create_instance(instance(&format!("n{round}-{i}"))).await })
            })
            .collect();
        let refused = store.create_instance_idempotent(instance(&format!("x{round}")), key("live", "g", later)).await;
        assert!(matches!(refused, Err(StoreError::IdempotencyKeyReused(_))), "{refused:?}");
        for neighbour in neighbours {
            neighbour.await.unwrap().unwrap();
        }
        for i in 0..16 {
            assert!(store.get_instance(&format!("n{round}-{i}")).await.unwrap().is_some());
        }
        assert!(store.get_instance(&format!("x{round}")).await.unwrap().is_none(), "the refused start left nothing");
        store
            .create_instance_idempotent(instance(&format!("old{round}")), key("expired", "f", now().plus_millis(1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.shutdown().await;
}
