//! Claims cost O(ready work), not O(table size): with thousands of instances asleep on future
//! timers and thousands of activities leased, the claim statements and purge's batch selection
//! must reach the ready rows through the partial indexes kept for them, never by walking or
//! scanning a whole table. Checked on the plans PostgreSQL chooses, custom and generic (the
//! store's statements are prepared and cached, so after a few runs it may use the generic plan,
//! which does not know `now`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kiln_postgres::queries;
use tokio_postgres::Client;

/// Sleeping instances (one future timer each) and leased activities.
const ROWS: i64 = 20_000;
/// A day in milliseconds: how far in the future the timers and leases lie.
const DAY: i64 = 86_400_000;

async fn connect(schema: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(&common::database_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("SET search_path = \"{schema}\"")).await.unwrap();
    client
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Fills the store's tables with work that is not ready, and a little that is.
async fn fill(client: &Client, now: i64) {
    let later = now + DAY;
    client
        .batch_execute(&format!(
            "INSERT INTO instances (instance_id, name, version, execution, status, input, created_at, updated_at) \
               SELECT 'sleeper-' || g, 'orch', '', 0, 0, 'null', {now}, {now} FROM generate_series(1, {ROWS}) g; \
             INSERT INTO inbox (instance_id, execution, visible_at, control, event) \
               SELECT 'sleeper-' || g, 0, {later}, false, '{{}}' FROM generate_series(1, {ROWS}) g; \
             INSERT INTO activities (instance_id, execution, step, name, input, attempt, lock_token, locked_until) \
               SELECT 'sleeper-' || g, 0, 0, 'work', 'null', 1, g, {later} FROM generate_series(1, {ROWS}) g; \
             INSERT INTO instances (instance_id, name, version, execution, status, input, created_at, updated_at) \
               SELECT 'ready-' || g, 'orch', '', 0, 6, 'null', {now}, {now} FROM generate_series(1, 5) g; \
             INSERT INTO inbox (instance_id, execution, visible_at, control, event) \
               SELECT 'ready-' || g, 0, NULL, false, '{{}}' FROM generate_series(1, 5) g; \
             INSERT INTO activities (instance_id, execution, step, name, input, attempt) \
               SELECT 'ready-' || g, 0, 0, 'work', 'null', 1 FROM generate_series(1, 5) g; \
             ANALYZE"
        ))
        .await
        .unwrap();
}

/// The plan of prepared statement `name` executed with `args`, under `plan_cache_mode = mode`.
async fn plan(client: &Client, mode: &str, name: &str, args: &str) -> String {
    client.batch_execute(&format!("SET plan_cache_mode = {mode}")).await.unwrap();
    let rows = client.query(&format!("EXPLAIN EXECUTE {name}({args})"), &[]).await.unwrap();
    rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
}

/// Checks both plans of a statement: no table scanned whole, the expected indexes used, and the
/// forbidden ones (whose walk would filter every sleeping row) not.
async fn check(client: &Client, name: &str, args: &str, uses: &[&str], never: &[&str]) {
    for mode in ["force_custom_plan", "force_generic_plan"] {
        let plan = plan(client, mode, name, args).await;
        assert!(!plan.contains("Seq Scan"), "{name} ({mode}) scans a table:\n{plan}");
        for index in uses {
            assert!(plan.contains(index), "{name} ({mode}) does not use {index}:\n{plan}");
        }
        for index in never {
            assert!(!plan.contains(index), "{name} ({mode}) walks {index}:\n{plan}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_purge_batches_use_the_indexes_of_ready_rows() {
    let Some((store, guard)) = common::fresh_store().await else { return };
    let client = connect(guard.schema()).await;
    let at = now();
    fill(&client, at).await;
    let lease = at + 30_000;
    client.batch_execute(&format!("PREPARE claim_instance AS {}", *queries::CLAIM_INSTANCE)).await.unwrap();
    client.batch_execute(&format!("PREPARE claim_activities AS {}", *queries::CLAIM_ACTIVITIES)).await.unwrap();
    let skipping = queries::CLAIM_INSTANCE_SKIPPING.as_str();
    client.batch_execute(&format!("PREPARE claim_instance_skipping AS {skipping}")).await.unwrap();
    let skipping = queries::CLAIM_ACTIVITIES_SKIPPING.as_str();
    client.batch_execute(&format!("PREPARE claim_activities_skipping AS {skipping}")).await.unwrap();
    let terminal: Vec<i16> =
        kiln_core::RuntimeStatus::ALL.iter().filter(|s| s.is_terminal()).map(|s| s.code() as i16).collect();
    let terminal = queries::purge_batch_roots(&terminal);
    client.batch_execute(&format!("PREPARE purge_batch AS {terminal}")).await.unwrap();
    // Retention's shape: one status at a time.
    let completed = queries::purge_batch_roots(&[kiln_core::RuntimeStatus::Completed.code() as i16]);
    client.batch_execute(&format!("PREPARE retention_batch AS {completed}")).await.unwrap();
    // EXPLAIN EXECUTE plans without running: nothing is claimed or locked.
    check(
        &client,
        "claim_instance",
        &format!("{at}, {lease}"),
        &["inbox_immediate", "inbox_by_visibility"],
        &["inbox_pkey"],
    )
    .await;
    check(
        &client,
        "claim_activities",
        &format!("{at}, {lease}, 16"),
        &["activities_unleased", "activities_by_lease_expiry"],
        &[],
    )
    .await;
    // A node in a rolling deploy, skipping what it cannot run: the same indexes.
    check(
        &client,
        "claim_instance_skipping",
        &format!("{at}, {lease}, ARRAY['orch'], ARRAY['2']"),
        &["inbox_immediate", "inbox_by_visibility"],
        &["inbox_pkey"],
    )
    .await;
    check(
        &client,
        "claim_activities_skipping",
        &format!("{at}, {lease}, 16, ARRAY['work']"),
        &["activities_unleased", "activities_by_lease_expiry"],
        &[],
    )
    .await;
    // A bulk purge: every terminal status, a finish time and the creation range it bounds.
    let purge_args = format!("{}, {at}, {at}, NULL, ARRAY[]::text[], {at}, {}, '', 500", i64::MIN, i64::MIN);
    check(&client, "purge_batch", &purge_args, &["instances_by_status"], &[]).await;
    // Retention's batches: one status, either a name or the names with a policy of their own.
    let named = format!("{}, {at}, {at}, 'orch', ARRAY[]::text[], {at}, {}, '', 100", i64::MIN, i64::MIN);
    check(&client, "retention_batch", &named, &["instances_by_status"], &[]).await;
    let others = format!("{at}, {at}, {at}, NULL, ARRAY['audit', 'report']::text[], {at}, {at}, 'x', 100");
    check(&client, "retention_batch", &others, &["instances_by_status"], &[]).await;
    store.shutdown().await;
}

/// Not a check: creates (with the store's own migrations) the schema named by
/// `KILN_SCRATCH_SCHEMA` and leaves it, for `scripts/pg-claim-cost.sh` to fill and measure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a tool for scripts/pg-claim-cost.sh"]
async fn scratch_schema() {
    let schema = std::env::var("KILN_SCRATCH_SCHEMA").expect("KILN_SCRATCH_SCHEMA names the schema to create");
    let options = kiln_postgres::PostgresOptions { schema: Some(schema), ..common::fresh_options() };
    let store = kiln_postgres::PostgresStore::connect(options).await.unwrap();
    kiln_store::Store::shutdown(&store).await;
}
