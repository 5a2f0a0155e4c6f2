//! Migrations: idempotent, concurrent-safe, and a newer schema is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::SchemaGuard;
use kiln_postgres::PostgresStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some((_store, _guard)) = common::fresh_store().await else { return };
    let options = common::fresh_options();
    let (a, b) = tokio::join!(PostgresStore::connect(options.clone()), PostgresStore::connect(options.clone()));
    assert!(a.is_ok() && b.is_ok(), "two nodes migrating at once: {:?} {:?}", a.err(), b.err());
    let schema = options.schema.clone().unwrap_or_default();
    let _cleanup = common::SchemaGuard::new(&schema);
    let (client, connection) = tokio_postgres::connect(&common::database_url(), tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute(&format!("UPDATE \"{schema}\".kiln_schema SET version = 99")).await.unwrap();
    let err = PostgresStore::connect(options).await.err().expect("a newer schema must be refused");
    assert!(err.to_string().contains("schema is version 99, newer than this Kiln supports"), "{err}");
    drop(client);
    let _ = driver.await;
}

/// A schema made by today's migrations, then taken back by the SQL `downgrade` writes for its
/// name: the options to open it with and the guard that drops it (`None` without PostgreSQL).
async fn downgraded(downgrade: impl FnOnce(&str) -> String) -> Option<(kiln_postgres::PostgresOptions, SchemaGuard)> {
    use kiln_store::Store;
    let (_store, _guard) = common::fresh_store().await?;
    let options = common::fresh_options();
    let schema = options.schema.clone().unwrap_or_default();
    let cleanup = SchemaGuard::new(&schema);
    PostgresStore::connect(options.clone()).await.unwrap().shutdown().await;
    let (client, connection) = tokio_postgres::connect(&common::database_url(), tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute(&downgrade(&schema)).await.unwrap();
    drop(client);
    let _ = driver.await;
    Some((options, cleanup))
}

/// A schema from before version 4 (activities without timeouts or heartbeat details) is
/// upgraded in place, and its queued activities run as they were scheduled: without limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_queued_before_version_4_survive_the_upgrade() {
    use kiln_store::Store;
    let downgrade = |schema: &str| {
        let columns = ["start_to_close_ms", "schedule_to_close_ms", "heartbeat_ms", "first_scheduled_at", "heartbeat"];
        let drops: String =
            columns.iter().map(|c| format!("ALTER TABLE \"{schema}\".activities DROP COLUMN {c}; ")).collect();
        format!(
            "{drops}INSERT INTO \"{schema}\".activities (instance_id, execution, step, name, input, attempt) \
             VALUES ('a', 0, 0, 'work', 'null', 1); UPDATE \"{schema}\".kiln_schema SET version = 3"
        )
    };
    let Some((options, _cleanup)) = downgraded(downgrade).await else { return };
    let store = PostgresStore::connect(options).await.unwrap();
    let wait = std::time::Duration::from_secs(5);
    let claimed = store.fetch_activity_work(std::time::Duration::from_secs(30), wait, 1, &[]).await.unwrap();
    let [item] = claimed.as_slice() else { panic!("the queued activity is claimed: {claimed:?}") };
    assert_eq!((item.activity.name.as_str(), item.activity.timeouts), ("work", Default::default()));
    assert_eq!(item.activity.heartbeat, None);
    store.shutdown().await;
}

/// An instance stored before schema version 5 has no labels and no correlation once the schema
/// is upgraded, and a label filter does not find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_from_before_version_5_have_no_labels() {
    use kiln_store::{InstanceQuery, Store};
    let downgrade = |schema: &str| {
        format!(
            "DROP TABLE \"{schema}\".instance_labels; \
             ALTER TABLE \"{schema}\".instances DROP COLUMN labels, DROP COLUMN correlation; \
             ALTER TABLE \"{schema}\".activities DROP COLUMN context; \
             INSERT INTO \"{schema}\".instances (instance_id, name, version, execution, status, input, created_at, \
             updated_at) VALUES ('old', 'o', '', 1, 1, 'null', 1, 1); UPDATE \"{schema}\".kiln_schema SET version = 4"
        )
    };
    let Some((options, _cleanup)) = downgraded(downgrade).await else { return };
    let store = PostgresStore::connect(options).await.unwrap();
    let old = store.get_instance("old").await.unwrap().unwrap();
    assert!(old.labels.is_empty() && old.correlation.is_none(), "{old:?}");
    let query = InstanceQuery { labels: vec!["k:v".parse().unwrap()], page_size: 10, ..Default::default() };
    assert!(store.list_instances(&query).await.unwrap().instances.is_empty());
    store.shutdown().await;
}

/// Names PostgreSQL would fold (upper case) or whose channel `pg_notify` refuses (too long)
/// are refused before anything is created; a 58-character name still works end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_names_that_would_not_mean_the_same_everywhere_are_refused() {
    let Some((_store, _guard)) = common::fresh_store().await else { return };
    for bad in ["Kiln_Upper", "9lives", "with-dash", "", &"x".repeat(59)] {
        let options = kiln_postgres::PostgresOptions { schema: Some(bad.to_owned()), ..common::fresh_options() };
        let err = PostgresStore::connect(options).await.err().unwrap_or_else(|| panic!("'{bad}' was accepted"));
        assert!(err.to_string().contains("lower-case letters"), "{bad}: {err}");
    }
    let longest = format!("kiln_t{}", "x".repeat(52));
    let _cleanup = common::SchemaGuard::new(&longest);
    let options = kiln_postgres::PostgresOptions { schema: Some(longest.clone()), ..common::fresh_options() };
    assert!(PostgresStore::connect(options).await.is_ok(), "{} characters is allowed", longest.len());
}
