//! Migrations: idempotent, concurrent-safe, and a newer schema is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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
