//! Opening bad, locked or too-new database files fails at once with a clear message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln_sqlite::{OpenError, SqliteOptions, SqliteStore};

fn open(path: &std::path::Path) -> Result<SqliteStore, OpenError> {
    SqliteStore::open(SqliteOptions::new(path))
}

#[test]
fn a_second_process_cannot_open_a_database_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let _first = open(&path).unwrap();
    let err = open(&path).err().expect("second open must fail");
    assert!(matches!(err, OpenError::Locked(_)));
    assert!(err.to_string().contains("is in use by another Kiln process"), "{err}");
}

#[test]
fn a_file_that_is_not_a_database_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "this is not a database, just some text that is long enough to be a header").unwrap();
    let err = open(&path).err().expect("must fail");
    assert!(matches!(err, OpenError::NotADatabase { .. }), "{err:?}");
    assert!(err.to_string().contains("notes.txt is not a Kiln database"), "{err}");
}

#[test]
fn a_schema_from_a_newer_kiln_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    drop(open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = open(&path).err().expect("must fail");
    assert!(err.to_string().contains("schema is version 99, newer than this Kiln supports"), "{err}");
}

#[test]
fn a_missing_directory_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = open(&dir.path().join("missing").join("kiln.db")).err().expect("must fail");
    assert!(matches!(err, OpenError::Io { .. }), "{err:?}");
}

#[test]
fn reopening_after_close_keeps_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    drop(open(&path).unwrap());
    drop(open(&path).unwrap());
}

#[cfg(unix)]
#[test]
fn database_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let store = open(&path).unwrap();
    for file in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
        assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
    }
    drop(store);
    // A database an earlier version left readable by others is tightened.
    for file in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
        let file = dir.path().join(file);
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let _store = open(&path).unwrap();
    for file in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
        assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
    }
}

/// A database from before schema version 4 (activities without timeouts or heartbeat details)
/// opens, and its queued activities run as they were scheduled: without limits.
#[tokio::test]
async fn activities_queued_before_version_4_survive_the_upgrade() {
    use kiln_store::Store;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    drop(open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    undo_version_5(&conn);
    for column in ["start_to_close_ms", "schedule_to_close_ms", "heartbeat_ms", "first_scheduled_at", "heartbeat"] {
        conn.execute_batch(&format!("ALTER TABLE activities DROP COLUMN {column}")).unwrap();
    }
    conn.execute_batch(
        "INSERT INTO activities (instance_id, execution, step, name, input, attempt) VALUES ('a', 0, 0, 'work', 'null', 1)",
    )
    .unwrap();
    conn.pragma_update(None, "user_version", 3).unwrap();
    drop(conn);
    let store = open(&path).unwrap();
    let wait = std::time::Duration::from_secs(2);
    let claimed = store.fetch_activity_work(std::time::Duration::from_secs(30), wait, 1, &[]).await.unwrap();
    let [item] = claimed.as_slice() else { panic!("the queued activity is claimed: {claimed:?}") };
    assert_eq!((item.activity.name.as_str(), item.activity.timeouts), ("work", Default::default()));
    assert_eq!(item.activity.heartbeat, None);
    store.shutdown().await;
}

/// Takes a database back to schema version 4 (before labels and correlation).
fn undo_version_5(conn: &rusqlite::Connection) {
    conn.execute_batch(
        "DROP TABLE instance_labels; ALTER TABLE instances DROP COLUMN labels; \
         ALTER TABLE instances DROP COLUMN correlation; ALTER TABLE activities DROP COLUMN context; \
         PRAGMA user_version = 4;",
    )
    .unwrap();
}

/// An instance stored before schema version 5 has no labels and no correlation, and a label
/// filter does not find it.
#[tokio::test]
async fn instances_from_before_version_5_have_no_labels() {
    use kiln_store::{InstanceQuery, Store};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    drop(open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    undo_version_5(&conn);
    conn.execute_batch(
        "INSERT INTO instances (instance_id, name, version, execution, status, input, created_at, updated_at) \
         VALUES ('old', 'o', '', 1, 1, 'null', 1, 1)",
    )
    .unwrap();
    drop(conn);
    let store = open(&path).unwrap();
    let old = store.get_instance("old").await.unwrap().unwrap();
    assert!(old.labels.is_empty() && old.correlation.is_none(), "{old:?}");
    let query = InstanceQuery { labels: vec!["k:v".parse().unwrap()], page_size: 10, ..Default::default() };
    assert!(store.list_instances(&query).await.unwrap().instances.is_empty());
    assert_eq!(
        store.list_instances(&InstanceQuery { page_size: 10, ..Default::default() }).await.unwrap().instances.len(),
        1
    );
    store.shutdown().await;
}
