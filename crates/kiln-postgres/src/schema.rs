//! Embedded, ordered migrations, applied under a transaction-scoped advisory lock so that nodes
//! starting at the same moment migrate once, one after the other.

use tokio_postgres::Client;

/// The migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE instances (
    instance_id        TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    version            TEXT NOT NULL,
    execution          BIGINT NOT NULL,
    status             SMALLINT NOT NULL,
    input              TEXT NOT NULL,
    output             TEXT,
    failure            TEXT,
    custom_status      TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    waiting_on         TEXT,
    parent             TEXT,
    parent_instance_id TEXT,
    history_len        BIGINT NOT NULL DEFAULT 0,
    dequeue_count      INTEGER NOT NULL DEFAULT 0,
    lock_token         BIGINT,
    locked_until       BIGINT
);
CREATE INDEX instances_by_created ON instances (created_at, instance_id);
CREATE INDEX instances_by_parent ON instances (parent_instance_id) WHERE parent_instance_id IS NOT NULL;
CREATE TABLE history (
    instance_id TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    event       TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
CREATE TABLE inbox (
    id          BIGSERIAL PRIMARY KEY,
    instance_id TEXT NOT NULL,
    execution   BIGINT,
    visible_at  BIGINT,
    control     BOOLEAN NOT NULL,
    event       TEXT NOT NULL
);
CREATE INDEX inbox_by_instance ON inbox (instance_id, id);
CREATE INDEX inbox_by_visibility ON inbox (visible_at) WHERE visible_at IS NOT NULL;
CREATE TABLE activities (
    id            BIGSERIAL PRIMARY KEY,
    instance_id   TEXT NOT NULL,
    execution     BIGINT NOT NULL,
    step          BIGINT NOT NULL,
    name          TEXT NOT NULL,
    input         TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    lock_token    BIGINT,
    locked_until  BIGINT,
    visible_at    BIGINT
);
CREATE INDEX activities_by_instance ON activities (instance_id);
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
CREATE SEQUENCE lease_tokens;
"#,
    // Version 2: rows that a write racing a purge left behind (before writes locked the
    // instance's row) would reach a later instance with the same id ahead of its start.
    r#"
DELETE FROM inbox m WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = m.instance_id);
DELETE FROM activities a WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = a.instance_id);
"#,
    // Version 3: claims and purge batches reach ready rows without walking the sleeping ones
    // (see `queries`): messages to run now (the due timers come from `inbox_by_visibility`),
    // activities nobody holds, leases by expiry, and instances by status.
    r#"
CREATE INDEX IF NOT EXISTS inbox_immediate ON inbox (id) WHERE visible_at IS NULL;
CREATE INDEX IF NOT EXISTS activities_unleased ON activities (id) WHERE lock_token IS NULL;
CREATE INDEX IF NOT EXISTS activities_by_lease_expiry ON activities (locked_until) WHERE lock_token IS NOT NULL;
CREATE INDEX IF NOT EXISTS instances_by_status ON instances (status, created_at);
"#,
    // Version 4: an activity's timeouts and last heartbeat details (nullable columns: adding
    // them rewrites no row).
    r#"
ALTER TABLE activities ADD COLUMN IF NOT EXISTS start_to_close_ms BIGINT;
ALTER TABLE activities ADD COLUMN IF NOT EXISTS schedule_to_close_ms BIGINT;
ALTER TABLE activities ADD COLUMN IF NOT EXISTS heartbeat_ms BIGINT;
ALTER TABLE activities ADD COLUMN IF NOT EXISTS first_scheduled_at BIGINT;
ALTER TABLE activities ADD COLUMN IF NOT EXISTS heartbeat TEXT;
"#,
    // Version 5: an instance's labels (the JSON object shown, and one row per label to list it
    // by, in listing order) and its correlation, and what its activities carry of them (their
    // context).
    r#"
ALTER TABLE activities ADD COLUMN IF NOT EXISTS context TEXT;
ALTER TABLE instances ADD COLUMN IF NOT EXISTS labels TEXT;
ALTER TABLE instances ADD COLUMN IF NOT EXISTS correlation TEXT;
CREATE TABLE IF NOT EXISTS instance_labels (
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    -- Byte-wise, as listings sort ids: a page then walks the primary key in order.
    instance_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (key, value, created_at, instance_id)
);
CREATE INDEX IF NOT EXISTS instance_labels_by_instance ON instance_labels (instance_id);
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Advisory lock key that serializes migrations across nodes ("kiln" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_6c6e;

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database was written by a newer Kiln.
    #[error(transparent)]
    TooNew(#[from] kiln_store::SchemaTooNew),
    /// PostgreSQL refused a statement.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// Creates `schema` if it does not exist, under the migration lock (concurrent
/// `CREATE SCHEMA IF NOT EXISTS` can fail in PostgreSQL).
pub async fn create_schema(client: &mut Client, schema: &str) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).await?;
    tx.commit().await
}

/// Drops a schema and everything in it: for throwaway schemas, such as `kiln bench`'s.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), crate::OpenError> {
    let (config, tls) = crate::tls::connect_config(url)?;
    let unreachable = crate::OpenError::unreachable;
    let (client, connection) = config.connect(tls).await.map_err(unreachable)?;
    let driver = tokio::spawn(connection);
    let dropped = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
    drop(client);
    let _ = driver.await;
    dropped.map_err(unreachable)
}

/// Applies every migration the database has not seen yet, in one transaction.
pub async fn migrate(client: &mut Client) -> Result<(), MigrationError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS kiln_schema (version BIGINT NOT NULL)").await?;
    let found: i64 = match tx.query_opt("SELECT version FROM kiln_schema", &[]).await? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO kiln_schema (version) VALUES (0)", &[]).await?;
            0
        }
    };
    if found > SCHEMA_VERSION {
        return Err(kiln_store::SchemaTooNew { found, supported: SCHEMA_VERSION }.into());
    }
    for sql in MIGRATIONS.iter().skip(found as usize) {
        tx.batch_execute(sql).await?;
    }
    tx.execute("UPDATE kiln_schema SET version = $1", &[&SCHEMA_VERSION]).await?;
    tx.commit().await?;
    Ok(())
}
