//! Reader connections and the queries they serve. WAL mode lets them read committed state while
//! the writer thread writes.

use crate::codec::{INSTANCE_COLUMNS, backend, decode_events, instance_from_row};
use kiln_core::{HistoryEvent, RuntimeStatus, Timestamp};
use kiln_store::{
    InstancePage, InstanceQuery, InstanceRecord, InstanceSummary, PREVIEW_COUNT_LIMIT, PageCursor, PurgeFilter,
    PurgePreview, StoreError, StoreResult,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A small pool of read-only connections, used round-robin.
pub struct Readers {
    connections: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Readers {
    /// Wraps opened connections.
    pub fn new(connections: Vec<Connection>) -> Readers {
        Readers { connections: connections.into_iter().map(Mutex::new).collect(), next: AtomicUsize::new(0) }
    }

    /// Runs `f` on one of the connections.
    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len().max(1);
        let slot =
            self.connections.get(index).ok_or_else(|| StoreError::Unavailable("no reader connections".into()))?;
        // A panic while holding a reader leaves nothing half-done in the connection.
        let conn = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn)
    }
}

/// Reads one instance.
pub fn get_instance(conn: &Connection, instance_id: &str) -> StoreResult<Option<InstanceRecord>> {
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?1");
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = stmt.query([instance_id]).map_err(backend)?;
    match rows.next().map_err(backend)? {
        Some(row) => instance_from_row(row).map(Some),
        None => Ok(None),
    }
}

/// Reads the current execution's history, in order.
pub fn get_history(conn: &Connection, instance_id: &str) -> StoreResult<Vec<HistoryEvent>> {
    let mut stmt =
        conn.prepare_cached("SELECT event FROM history WHERE instance_id = ?1 ORDER BY seq").map_err(backend)?;
    let mut rows = stmt.query([instance_id]).map_err(backend)?;
    let mut history = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        decode_events(row.get_ref(0).and_then(|v| Ok(v.as_str()?)).map_err(backend)?, &mut history)?;
    }
    Ok(history)
}

/// Counts instances per status.
pub fn count_by_status(conn: &Connection) -> StoreResult<Vec<(RuntimeStatus, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT status, count(*) FROM instances GROUP BY status").map_err(backend)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))).map_err(backend)?;
    let mut counts = Vec::new();
    for row in rows {
        let (code, count) = row.map_err(backend)?;
        if let Some(status) = RuntimeStatus::from_code(code) {
            counts.push((status, count as u64));
        }
    }
    Ok(counts)
}

/// What a purge with `filter` would delete now (the selection the writer's purge uses).
pub fn preview_purge(conn: &Connection, filter: &PurgeFilter, max: usize) -> StoreResult<PurgePreview> {
    let Some((selection, args)) = crate::ops::purgeable(filter) else {
        return Ok(PurgePreview { complete: true, ..PurgePreview::default() });
    };
    let limit = PREVIEW_COUNT_LIMIT + 1;
    let matched: i64 = conn
        .prepare(&format!("SELECT count(*) FROM (SELECT 1 {selection} LIMIT {limit})"))
        .and_then(|mut s| s.query_row(rusqlite::params_from_iter(&args), |r| r.get(0)))
        .map_err(backend)?;
    let (matched, complete) = ((matched as u64).min(PREVIEW_COUNT_LIMIT), (matched as u64) <= PREVIEW_COUNT_LIMIT);
    let sql = format!(
        "SELECT instance_id, name, status, created_at, updated_at {selection} ORDER BY created_at, instance_id LIMIT {max}"
    );
    let mut stmt = conn.prepare(&sql).map_err(backend)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(&args), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(backend)?;
    let mut first = Vec::new();
    for row in rows {
        let (instance_id, name, status, created_at, updated_at) = row.map_err(backend)?;
        if let Some(status) = RuntimeStatus::from_code(status) {
            first.push(InstanceSummary {
                instance_id,
                name,
                status,
                created_at: Timestamp(created_at),
                updated_at: Timestamp(updated_at),
            });
        }
    }
    Ok(PurgePreview { matched, complete, first })
}

/// The creation time of the oldest instance per terminal status: one scan, as counting by
/// status does.
pub fn oldest_finished(conn: &Connection) -> StoreResult<Vec<(RuntimeStatus, Timestamp)>> {
    let terminal: Vec<String> =
        RuntimeStatus::ALL.iter().filter(|s| s.is_terminal()).map(|s| s.code().to_string()).collect();
    let sql = format!(
        "SELECT status, min(created_at) FROM instances WHERE status IN ({}) GROUP BY status",
        terminal.join(",")
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))).map_err(backend)?;
    let mut oldest = Vec::new();
    for row in rows {
        let (code, at) = row.map_err(backend)?;
        if let Some(status) = RuntimeStatus::from_code(code) {
            oldest.push((status, Timestamp(at)));
        }
    }
    Ok(oldest)
}

/// Reads a setting.
pub fn get_setting(conn: &Connection, key: &str) -> StoreResult<Option<String>> {
    conn.prepare_cached("SELECT value FROM settings WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .map_err(backend)
}

/// Lists instances in `(created_at, instance_id)` order with keyset paging. With label filters,
/// the first one drives the page through `instance_labels`' primary key `(key, value,
/// created_at, instance_id)`, already in the listing's order (no sort of every match per page);
/// the others are checked per instance.
pub fn list_instances(conn: &Connection, query: &InstanceQuery) -> StoreResult<InstancePage> {
    let columns: Vec<String> = INSTANCE_COLUMNS.split(", ").map(|c| format!("i.{c}")).collect();
    let mut args: Vec<Value> = Vec::new();
    // `o` is the table whose `(created_at, instance_id)` orders the page: the first label's rows
    // (`o`), or the instances themselves (`i`).
    let mut sql = match query.labels.first() {
        Some(first) => {
            args.push(Value::Text(first.key.clone()));
            args.push(Value::Text(first.value.clone()));
            format!(
                "SELECT {} FROM instance_labels o JOIN instances i ON i.instance_id = o.instance_id \
                 WHERE o.key = ?1 AND o.value = ?2",
                columns.join(", ")
            )
        }
        None => format!("SELECT {} FROM instances i WHERE 1 = 1", columns.join(", ")),
    };
    let o = if query.labels.is_empty() { "i" } else { "o" };
    for label in query.labels.iter().skip(1) {
        args.push(Value::Text(label.key.clone()));
        args.push(Value::Text(label.value.clone()));
        let n = args.len();
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM instance_labels x WHERE x.instance_id = i.instance_id AND x.key = ?{} AND x.value = ?{n})",
            n - 1
        ));
    }
    if !query.statuses.is_empty() {
        let codes = query.statuses.iter().map(|s| s.code().to_string()).collect::<Vec<_>>().join(",");
        sql.push_str(&format!(" AND i.status IN ({codes})"));
    }
    if let Some(name) = &query.name {
        args.push(Value::Text(name.clone()));
        sql.push_str(&format!(" AND i.name = ?{}", args.len()));
    }
    if let Some(from) = query.created_from {
        args.push(Value::Integer(from.0));
        sql.push_str(&format!(" AND {o}.created_at >= ?{}", args.len()));
    }
    if let Some(to) = query.created_to {
        args.push(Value::Integer(to.0));
        sql.push_str(&format!(" AND {o}.created_at <= ?{}", args.len()));
    }
    if let Some(prefix) = &query.instance_id_prefix {
        args.push(Value::Text(prefix.clone()));
        sql.push_str(&format!(" AND substr(i.instance_id, 1, length(?{n})) = ?{n}", n = args.len()));
    }
    if let Some(after) = &query.after {
        args.push(Value::Integer(after.created_at.0));
        let t = args.len();
        args.push(Value::Text(after.instance_id.clone()));
        sql.push_str(&format!(
            " AND ({o}.created_at > ?{t} OR ({o}.created_at = ?{t} AND {o}.instance_id > ?{}))",
            args.len()
        ));
    }
    let page_size = query.page_size.max(1);
    sql.push_str(&format!(" ORDER BY {o}.created_at, {o}.instance_id LIMIT {}", page_size + 1));
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(backend)?;
    let mut instances = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        instances.push(instance_from_row(row)?);
    }
    let next = if instances.len() > page_size {
        instances.truncate(page_size);
        instances.last().map(|last| PageCursor { created_at: last.created_at, instance_id: last.instance_id.clone() })
    } else {
        None
    };
    Ok(InstancePage { instances, next })
}
