//! The store conformance suite against the embedded SQLite backend.

use kiln_sqlite::{SqliteOptions, SqliteStore};
use kiln_store::Store;
use std::sync::Arc;

kiln_store::conformance_tests!(|| async {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("kiln.db"))).expect("open store");
    Some((Arc::new(store) as Arc<dyn Store>, dir))
});
