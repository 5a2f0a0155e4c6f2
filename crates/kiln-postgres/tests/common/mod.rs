//! A fresh PostgreSQL store per test, in its own schema, dropped afterwards.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use kiln_core::{Payload, RuntimeStatus, Timestamp};
use kiln_postgres::{PostgresOptions, PostgresStore};
use kiln_store::{HistoryUpdate, NewActivity, OrchestrationWorkItem, Store, TurnCommit};
use std::sync::Arc;

/// The test database.
pub fn database_url() -> String {
    std::env::var("KILN_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn required() -> bool {
    std::env::var("KILN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// Drops the test's schema when the test ends.
pub struct SchemaGuard {
    schema: String,
}

impl SchemaGuard {
    /// Drops `schema` when the guard goes.
    pub fn new(schema: &str) -> SchemaGuard {
        SchemaGuard { schema: schema.to_owned() }
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                if let Ok((client, connection)) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await
                {
                    let driver = tokio::spawn(connection);
                    let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
                    drop(client);
                    let _ = driver.await;
                }
            });
        })
        .join();
    }
}

/// Options for a new, uniquely named schema.
pub fn fresh_options() -> PostgresOptions {
    let mut options = PostgresOptions::new(database_url());
    options.schema = Some(format!("kiln_test_{}", uuid::Uuid::new_v4().simple()));
    options.pool_size = 4;
    options
}

/// A store in a fresh schema, or `None` (after saying why) when PostgreSQL is not there and not
/// required.
pub async fn fresh_store() -> Option<(Arc<dyn Store>, SchemaGuard)> {
    let options = fresh_options();
    let schema = options.schema.clone().unwrap_or_default();
    match PostgresStore::connect(options).await {
        Ok(store) => Some((Arc::new(store) as Arc<dyn Store>, SchemaGuard::new(&schema))),
        Err(err) if !required() => {
            eprintln!(
                "skipped: PostgreSQL at {} is not available ({err}); set KILN_REQUIRE_POSTGRES=1 to fail instead",
                database_url()
            );
            None
        }
        Err(err) => panic!("PostgreSQL is required (KILN_REQUIRE_POSTGRES=1) but not available: {err}"),
    }
}

/// A turn of execution 0 that consumes `item`'s messages into history, ends in `status` and
/// schedules the activities `steps` (named "work").
pub fn turn_with_activities(
    item: &OrchestrationWorkItem,
    status: RuntimeStatus,
    steps: impl IntoIterator<Item = u64>,
    now: Timestamp,
) -> TurnCommit {
    let id = &item.instance.instance_id;
    TurnCommit {
        instance_id: id.clone(),
        lease: item.lease,
        consumed: item.messages.iter().map(|m| m.id).collect(),
        history: HistoryUpdate::Append(item.messages.iter().map(|m| m.event.clone()).collect()),
        execution: 0,
        version: item.instance.version.clone(),
        input: Payload::null(),
        status,
        output: None,
        failure: None,
        custom_status: None,
        waiting_on: Vec::new(),
        activities: steps
            .into_iter()
            .map(|step| NewActivity {
                instance_id: id.clone(),
                execution: 0,
                step,
                name: "work".to_owned(),
                input: Payload::null(),
                attempt: 1,
                timeouts: Default::default(),
                heartbeat: None,
                context: None,
            })
            .collect(),
        messages: Vec::new(),
        sub_orchestrations: Vec::new(),
        finished_activities: Vec::new(),
        now,
    }
}
