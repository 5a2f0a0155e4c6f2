//! Keyset paging on a database whose default collation is not `C` (here ICU `en-US`, where
//! `a-b`, `a_b`, `aB` and `ab` sort differently than byte-wise): pages follow one another
//! without skipping or repeating ids created in the same millisecond (bulk starts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kiln_core::{Payload, Timestamp};
use kiln_postgres::{PostgresOptions, PostgresStore};
use kiln_store::{InstanceQuery, NewInstance, Store};

/// A database created for the test with an ICU collation, dropped afterwards.
struct IcuDatabase {
    name: String,
}

impl IcuDatabase {
    async fn create() -> IcuDatabase {
        let name = format!("kiln_icu_{}", uuid::Uuid::new_v4().simple());
        admin(&format!(
            "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        ))
        .await;
        IcuDatabase { name }
    }

    fn url(&self) -> String {
        let url = common::database_url();
        let base = url.split('?').next().unwrap_or(&url);
        format!("{}/{}", base.rsplit_once('/').map_or(base, |(server, _)| server), self.name)
    }
}

impl Drop for IcuDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(admin(&sql));
        })
        .join();
    }
}

async fn admin(sql: &str) {
    let (client, connection) = tokio_postgres::connect(&common::database_url(), tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = driver.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_neither_skip_nor_repeat_under_a_non_c_collation() {
    // Only to skip (or fail) as every PostgreSQL test does when there is no server.
    let Some((_store, _guard)) = common::fresh_store().await else { return };
    let database = IcuDatabase::create().await;
    let store = PostgresStore::connect(PostgresOptions::new(database.url())).await.unwrap();
    let mut ids = ["a-b", "a_b", "aB", "ab", "AB", "b", "B-a", "a1", "a10", "a2", "_x", "x_", "A-1", "a 1"]
        .map(str::to_owned)
        .to_vec();
    let created_at = Timestamp(1_700_000_000_000);
    for id in &ids {
        let instance = NewInstance {
            instance_id: id.clone(),
            name: "orch".into(),
            version: String::new(),
            input: Payload::null(),
            parent: None,
            created_at,
            execution: 0,
            labels: Default::default(),
            correlation: None,
        };
        store.create_instance(instance).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut query = InstanceQuery { page_size: 2, ..Default::default() };
    loop {
        let page = store.list_instances(&query).await.unwrap();
        seen.extend(page.instances.into_iter().map(|i| i.instance_id));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    ids.sort();
    assert_eq!(seen, ids, "every id once, in byte order");
    store.shutdown().await;
}
