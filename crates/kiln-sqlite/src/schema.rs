//! Embedded, ordered schema migrations, tracked in SQLite's `user_version`.

use rusqlite::Connection;

/// The migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE instances (
    instance_id        TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    version            TEXT NOT NULL,
    execution          INTEGER NOT NULL,
    status             INTEGER NOT NULL,
    input              TEXT NOT NULL,
    output             TEXT,
    failure            TEXT,
    custom_status      TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    waiting_on         TEXT,
    parent             TEXT,
    parent_instance_id TEXT,
    history_len        INTEGER NOT NULL DEFAULT 0,
    -- claims since the last commit that survived a restart (poison detection across crashes)
    dequeue_count      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX instances_by_created ON instances (created_at, instance_id);
CREATE INDEX instances_by_parent ON instances (parent_instance_id) WHERE parent_instance_id IS NOT NULL;
CREATE TABLE history (
    instance_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    event       TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
) WITHOUT ROWID;
CREATE TABLE inbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    execution   INTEGER,
    visible_at  INTEGER,
    event       TEXT NOT NULL
);
CREATE INDEX inbox_by_instance ON inbox (instance_id);
CREATE TABLE activities (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    execution   INTEGER NOT NULL,
    step        INTEGER NOT NULL,
    name        TEXT NOT NULL,
    input       TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    -- claims that survived a restart (poison detection across crashes)
    dequeue_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX activities_by_instance ON activities (instance_id);
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
"#,
    // Version 3 changes no table: a history row may now hold one turn's events as a JSON array.
    // The version bump keeps older Kilns, which read one event per row, off such files.
    "",
    // Version 4: an activity's timeouts and last heartbeat details.
    r#"
ALTER TABLE activities ADD COLUMN start_to_close_ms INTEGER;
ALTER TABLE activities ADD COLUMN schedule_to_close_ms INTEGER;
ALTER TABLE activities ADD COLUMN heartbeat_ms INTEGER;
ALTER TABLE activities ADD COLUMN first_scheduled_at INTEGER;
ALTER TABLE activities ADD COLUMN heartbeat TEXT;
"#,
    // Version 5: an instance's labels (the JSON object shown, and one row per label to list it
    // by, in listing order) and its correlation, and what its activities carry of them (their
    // context).
    r#"
ALTER TABLE activities ADD COLUMN context TEXT;
ALTER TABLE instances ADD COLUMN labels TEXT;
ALTER TABLE instances ADD COLUMN correlation TEXT;
CREATE TABLE instance_labels (
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    PRIMARY KEY (key, value, created_at, instance_id)
) WITHOUT ROWID;
CREATE INDEX instance_labels_by_instance ON instance_labels (instance_id);
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database was written by a newer Kiln.
    #[error(transparent)]
    TooNew(#[from] kiln_store::SchemaTooNew),
    /// SQLite refused a statement.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Applies every migration the database has not seen yet, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), MigrationError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(kiln_store::SchemaTooNew { found, supported: SCHEMA_VERSION }.into());
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
