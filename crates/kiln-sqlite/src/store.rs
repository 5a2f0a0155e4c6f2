//! [`SqliteStore`]: opening the database, recovering in-memory state, and the [`Store`] methods.

use crate::checkpoint;
use crate::codec::{backend, decode_event};
use crate::ops::{ClaimTarget, WriteOp, WriteOutcome};
use crate::queue::{ActivityEntry, Queues};
use crate::reads::{self, Readers};
use crate::schema::{MigrationError, migrate};
use crate::shared::{Shared, now};
use crate::writer::{self, WriteRequest};
use async_trait::async_trait;
use kiln_core::{ActivityTimeouts, HistoryEvent, Payload, RuntimeStatus, Timestamp};
use kiln_store::{
    ActivityWorkItem, IdempotencyKey, IdempotentStart, InboxMessage, InstancePage, InstanceQuery, InstanceRecord,
    Lease, NewActivity, NewInstance, OrchestrationWorkItem, PurgeFilter, PurgePreview, PurgedBatch, StatusWatchers,
    Store, StoreError, StoreResult, TurnCommit, UNSTORED_MESSAGE_ID,
};
use rusqlite::{Connection, OpenFlags};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// When recovered work whose claim could not be recorded (the store failed) is offered again.
const UNRECORDED_CLAIM_RETRY: Duration = Duration::from_secs(1);

/// How hard SQLite syncs on commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: a commit that returned survives power loss (the default).
    #[default]
    Full,
    /// fsync at checkpoints only: survives a process crash, may lose recent commits on power loss.
    Normal,
}

/// Options for [`SqliteStore::open`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The database file.
    pub path: PathBuf,
    /// Commit durability.
    pub synchronous: Synchronous,
    /// Number of reader connections.
    pub readers: usize,
}

impl SqliteOptions {
    /// Defaults for a database file: `synchronous=FULL`, four readers.
    pub fn new(path: impl Into<PathBuf>) -> SqliteOptions {
        SqliteOptions { path: path.into(), synchronous: Synchronous::Full, readers: 4 }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process has the database open.
    #[error("database {0} is in use by another Kiln process (lock file {0}.lock is held)")]
    Locked(PathBuf),
    /// The file exists but is not a SQLite database.
    #[error("{path} is not a Kiln database: {source}")]
    NotADatabase {
        /// The file.
        path: PathBuf,
        /// SQLite's complaint.
        source: rusqlite::Error,
    },
    /// The schema could not be brought up to date.
    #[error("cannot prepare the schema of {path}: {source}")]
    Migration {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: MigrationError,
    },
    /// The file or its lock could not be opened.
    #[error("cannot open {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Stored data could not be loaded.
    #[error("cannot load {path}: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: StoreError,
    },
}

/// The embedded SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    shared: Arc<Shared>,
    readers: Readers,
    sender: Mutex<Option<Sender<WriteRequest>>>,
    /// The writer and checkpointer threads (empty once shut down); both end once the sender is
    /// dropped.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Held until shutdown: keeps other processes off the file.
    lock: Mutex<Option<File>>,
}

impl SqliteStore {
    /// Opens (creating if needed) a database file, migrates it, and recovers pending work.
    pub fn open(options: SqliteOptions) -> Result<SqliteStore, OpenError> {
        let path = options.path.clone();
        let lock = lock_file(&path)?;
        create_owner_only(&path)?;
        let mut conn = open_connection(&path, options.synchronous, false)?;
        migrate(&mut conn).map_err(|source| OpenError::Migration { path: path.clone(), source })?;
        tighten_permissions(&path)?;
        let checkpoint_conn = open_connection(&path, options.synchronous, false)?;
        let (doorbell, rings) = std::sync::mpsc::sync_channel(1);
        checkpoint::watch_wal(&mut conn, doorbell)
            .map_err(|source| OpenError::NotADatabase { path: path.clone(), source })?;
        let readers = (0..options.readers.max(1))
            .map(|_| open_connection(&path, options.synchronous, true))
            .collect::<Result<Vec<_>, _>>()?;
        let queues = recover(&conn).map_err(|source| OpenError::Load { path: path.clone(), source })?;
        let shared = Arc::new(Shared { queues: Mutex::new(queues), ..Shared::default() });
        let (sender, receiver) = std::sync::mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("kiln-sqlite-writer".into())
            .spawn(move || writer::run(conn, receiver, writer_shared))
            .map_err(|source| OpenError::Io { path: path.clone(), source })?;
        let checkpointer = std::thread::Builder::new()
            .name("kiln-sqlite-checkpoint".into())
            .spawn(move || checkpoint::run(checkpoint_conn, rings))
            .map_err(|source| OpenError::Io { path: path.clone(), source })?;
        Ok(SqliteStore {
            shared,
            readers: Readers::new(readers),
            sender: Mutex::new(Some(sender)),
            threads: Mutex::new(vec![writer, checkpointer]),
            lock: Mutex::new(Some(lock)),
        })
    }

    async fn write(&self, op: WriteOp) -> StoreResult<WriteOutcome> {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is shut down".into()))?;
        let (reply, result) = oneshot::channel();
        sender
            .send(WriteRequest { op, reply })
            .map_err(|_| StoreError::Unavailable("the writer thread has stopped".into()))?;
        result.await.map_err(|_| StoreError::Unavailable("the writer thread has stopped".into()))?
    }

    /// An instance's latest record: from memory when a recent commit or read left it there,
    /// else from a reader connection (and kept, unless a commit came while it was read).
    fn instance_record(&self, instance_id: &str) -> StoreResult<Option<InstanceRecord>> {
        if let Some(record) = self.shared.records.get(instance_id) {
            return Ok(Some(record));
        }
        let generation = self.shared.records.generation();
        let record = self.readers.with(|conn| reads::get_instance(conn, instance_id))?;
        if let Some(record) = &record {
            self.shared.records.keep(record, generation);
        }
        Ok(record)
    }

    /// Claims items of one kind (what `claim` takes, possibly several), waiting up to `wait`
    /// for any: woken by commits that make work available, and by its own timer for the next
    /// due message or lapsing lease. Empty when the wait ends with nothing claimed.
    async fn claim_next<T>(
        &self,
        kind: WorkKind,
        wait: Duration,
        mut claim: impl FnMut(&mut Queues, Timestamp) -> Vec<T>,
    ) -> Vec<T> {
        let notify = match kind {
            WorkKind::Orchestration => &self.shared.orchestration_ready,
            WorkKind::Activity => &self.shared.activity_ready,
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (claimed, next) = {
                let mut queues = self.shared.lock_queues();
                let at = now();
                let (mut instances, mut activities) = queues.advance(at);
                let claimed = claim(&mut queues, at);
                let taken = claimed.len();
                match kind {
                    WorkKind::Orchestration => instances = instances.saturating_sub(taken),
                    WorkKind::Activity => activities = activities.saturating_sub(taken),
                }
                // Wake other workers for what became available beyond the item taken here.
                for _ in 0..instances {
                    self.shared.orchestration_ready.notify_one();
                }
                for _ in 0..activities {
                    self.shared.activity_ready.notify_one();
                }
                (claimed, queues.next_deadline())
            };
            if !claimed.is_empty() {
                return claimed;
            }
            let mut until = deadline;
            if until <= tokio::time::Instant::now() {
                return claimed;
            }
            if let Some(next) = next {
                let in_ms = (next.0 - now().0).max(0) as u64;
                until = until.min(tokio::time::Instant::now() + Duration::from_millis(in_ms));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

/// The two kinds of work a store hands out.
#[derive(Clone, Copy)]
enum WorkKind {
    Orchestration,
    Activity,
}

/// Creates a new database file readable by its owner only: it holds every instance's inputs and
/// outputs and the HTTP layer's secrets (SQLite gives the WAL and `-shm` files the database
/// file's mode). An existing file is left as it is.
fn create_owner_only(path: &Path) -> Result<(), OpenError> {
    let mut options = File::options();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop).map_err(|source| OpenError::Io { path: path.to_owned(), source })
}

/// Takes group and other permissions off a database (and its WAL and `-shm` files) that an
/// earlier version created readable by others.
fn tighten_permissions(path: &Path) -> Result<(), OpenError> {
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        let Ok(metadata) = std::fs::metadata(&file) else { continue };
        if metadata.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| OpenError::Io { path: file.clone(), source })?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn lock_file(path: &Path) -> Result<File, OpenError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| OpenError::Io { path: lock_path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked(path.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(OpenError::Io { path: lock_path, source }),
    }
}

/// Each connection's page cache, in KiB.
const PAGE_CACHE_KIB: u32 = 8 * 1024;

fn open_connection(path: &Path, synchronous: Synchronous, read_only: bool) -> Result<Connection, OpenError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let not_a_db = |source| OpenError::NotADatabase { path: path.to_owned(), source };
    let conn = Connection::open_with_flags(path, flags).map_err(not_a_db)?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    if read_only {
        conn.execute_batch("PRAGMA busy_timeout = 5000;").map_err(not_a_db)?;
    } else {
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)).map_err(not_a_db)?;
        conn.execute_batch(&format!("PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 5000;")).map_err(not_a_db)?;
    }
    // Touch the schema so a file that is not a database fails here, with its path.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).map_err(not_a_db)?;
    // A page cache big enough for the hot part of the tables and indexes: misses cost a
    // read() each, and a commit's page writes go through this cache.
    conn.execute_batch(&format!("PRAGMA cache_size = -{PAGE_CACHE_KIB};")).map_err(not_a_db)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Rebuilds the in-memory queues from the tables.
fn recover(conn: &Connection) -> StoreResult<Queues> {
    let mut queues = Queues::default();
    let at = now();
    let mut suspended = conn.prepare("SELECT instance_id FROM instances WHERE status = ?1").map_err(backend)?;
    for id in suspended.query_map([RuntimeStatus::Suspended.code()], |r| r.get::<_, String>(0)).map_err(backend)? {
        queues.set_suspended(&id.map_err(backend)?, true);
    }
    let mut inbox =
        conn.prepare("SELECT id, instance_id, execution, visible_at, event FROM inbox ORDER BY id").map_err(backend)?;
    let rows = inbox
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .map_err(backend)?;
    for row in rows {
        let (id, instance_id, execution, visible_at, event) = row.map_err(backend)?;
        let message = InboxMessage { id, execution: execution.map(|e| e as u64), event: decode_event(&event)? };
        queues.push_message(&instance_id, message, visible_at.map(Timestamp), at);
    }
    let mut claimed = conn
        .prepare("SELECT instance_id, dequeue_count FROM instances WHERE dequeue_count > 0 OR status IN (?1, ?2, ?3)")
        .map_err(backend)?;
    let unfinished =
        [RuntimeStatus::Pending.code(), RuntimeStatus::Running.code(), RuntimeStatus::ContinuedAsNew.code()];
    let rows = claimed.query_map(unfinished, |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))).map_err(backend)?;
    for row in rows {
        let (instance_id, count) = row.map_err(backend)?;
        queues.restore_claims(&instance_id, count);
    }
    let mut activities = conn
        .prepare(
            "SELECT id, instance_id, execution, step, name, input, attempt, dequeue_count, start_to_close_ms, \
             schedule_to_close_ms, heartbeat_ms, first_scheduled_at, heartbeat, context FROM activities ORDER BY id",
        )
        .map_err(backend)?;
    let rows = activities
        .query_map([], |r| {
            Ok(ActivityEntry {
                id: r.get(0)?,
                activity: NewActivity {
                    instance_id: r.get(1)?,
                    execution: r.get::<_, i64>(2)? as u64,
                    step: r.get::<_, i64>(3)? as u64,
                    name: r.get(4)?,
                    input: kiln_core::Payload::from_trusted(r.get(5)?),
                    attempt: r.get(6)?,
                    timeouts: ActivityTimeouts::from_columns([r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?]),
                    heartbeat: r.get::<_, Option<String>>(12)?.map(kiln_core::Payload::from_trusted),
                    // An unreadable context only costs the activity its log context.
                    context: r
                        .get::<_, Option<String>>(13)?
                        .and_then(|c| serde_json::from_str(&c).ok())
                        .map(std::sync::Arc::new),
                },
                dequeue_count: r.get(7)?,
                recovered: true,
            })
        })
        .map_err(backend)?;
    for entry in rows {
        queues.push_activity(entry.map_err(backend)?);
    }
    Ok(queues)
}

fn lease_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()> {
        self.write(WriteOp::CreateInstance(instance)).await.map(|_| ())
    }

    fn takes_first_turns(&self) -> bool {
        true
    }

    async fn create_instance_with_first_turn(&self, instance: NewInstance, first_turn: TurnCommit) -> StoreResult<()> {
        self.write(WriteOp::CreateWithFirstTurn(instance, Box::new(first_turn))).await.map(|_| ())
    }

    async fn create_instance_idempotent(
        &self,
        instance: NewInstance,
        key: IdempotencyKey,
    ) -> StoreResult<IdempotentStart> {
        match self.write(WriteOp::CreateIdempotent(instance, key)).await? {
            WriteOutcome::Started(started) => Ok(started),
            _ => Err(StoreError::Backend("unexpected writer reply".into())),
        }
    }

    async fn send_message(&self, instance_id: &str, event: HistoryEvent) -> StoreResult<()> {
        self.write(WriteOp::SendMessage { instance_id: instance_id.to_owned(), event }).await.map(|_| ())
    }

    async fn fetch_orchestration_work(
        &self,
        lease_for: Duration,
        wait: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        loop {
            let claim =
                |queues: &mut Queues, at| queues.claim_instance(at, lease_millis(lease_for)).into_iter().collect();
            let Some(claimed) = self.claim_next(WorkKind::Orchestration, wait, claim).await.pop() else {
                return Ok(None);
            };
            if claimed.recovered {
                let mark = WriteOp::MarkClaimed(ClaimTarget::Instance(claimed.instance_id.clone()));
                if let Err(err) = self.write(mark).await {
                    let retry_at = now().plus_millis(lease_millis(UNRECORDED_CLAIM_RETRY));
                    self.shared.lock_queues().unclaim_recovered_instance(&claimed.instance_id, claimed.lease, retry_at);
                    return Err(err);
                }
            }
            match self.instance_record(&claimed.instance_id) {
                Ok(Some(instance)) => {
                    return Ok(Some(OrchestrationWorkItem {
                        instance,
                        messages: claimed.messages,
                        lease: claimed.lease,
                        dequeue_count: claimed.dequeue_count,
                    }));
                }
                // Purged meanwhile: forget its messages and look again.
                Ok(None) => self.shared.lock_queues().forget_instances(&[claimed.instance_id]),
                Err(err) => {
                    self.shared.lock_queues().release_instance(&claimed.instance_id, &[], false);
                    return Err(err);
                }
            }
        }
    }

    async fn commit_turn(&self, commit: TurnCommit) -> StoreResult<()> {
        self.write(WriteOp::CommitTurn(Box::new(commit))).await.map(|_| ())
    }

    async fn claim_with_activity_result(
        &self,
        item: &ActivityWorkItem,
        result: &HistoryEvent,
        lease_for: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let instance_id = &item.activity.instance_id;
        let claimed = {
            let mut queues = self.shared.lock_queues();
            if !queues.holds_activity(item.id, item.lease) {
                return Ok(None);
            }
            queues.claim_idle_instance(instance_id, now(), lease_millis(lease_for))
        };
        let Some(mut claimed) = claimed else {
            return Ok(None);
        };
        let instance = match self.instance_record(instance_id) {
            Ok(Some(instance)) => instance,
            other => {
                self.shared.lock_queues().release_instance(instance_id, &[], false);
                return other.map(|_| None);
            }
        };
        // Not in the inbox: the id matches no row, and the commit deletes the activity instead.
        claimed.messages.push(InboxMessage {
            id: UNSTORED_MESSAGE_ID,
            execution: Some(item.activity.execution),
            event: result.clone(),
        });
        Ok(Some(OrchestrationWorkItem {
            instance,
            messages: claimed.messages,
            lease: claimed.lease,
            dequeue_count: claimed.dequeue_count,
        }))
    }

    async fn abandon_orchestration_work(
        &self,
        instance_id: &str,
        lease: Lease,
        retry_after: Duration,
    ) -> StoreResult<()> {
        let released = self.shared.lock_queues().abandon_instance(
            instance_id,
            lease,
            now().plus_millis(lease_millis(retry_after)),
        );
        self.shared.orchestration_ready.notify_one();
        if released { Ok(()) } else { Err(StoreError::LeaseLost(instance_id.to_owned())) }
    }

    async fn fetch_activity_work(
        &self,
        lease_for: Duration,
        wait: Duration,
        max: usize,
        excluded: &[String],
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let claim = |queues: &mut Queues, at| {
            std::iter::from_fn(|| queues.claim_activity(at, lease_millis(lease_for), excluded))
                .take(max.max(1))
                .collect()
        };
        let claimed: Vec<(ActivityEntry, Lease)> = self.claim_next(WorkKind::Activity, wait, claim).await;
        let mut items = Vec::with_capacity(claimed.len());
        let mut failure = None;
        for (entry, lease) in claimed {
            let item =
                ActivityWorkItem { id: entry.id, activity: entry.activity, lease, dequeue_count: entry.dequeue_count };
            if entry.recovered && failure.is_none() {
                // Recovered work counts its claims durably (poison detection across crashes).
                if let Err(err) = self.write(WriteOp::MarkClaimed(ClaimTarget::Activity(item.id))).await {
                    failure = Some(err);
                }
            }
            if failure.is_some() {
                let retry_at = now().plus_millis(lease_millis(UNRECORDED_CLAIM_RETRY));
                self.shared.lock_queues().unclaim_recovered_activity(item.id, lease, retry_at);
            } else {
                items.push(item);
            }
        }
        match failure {
            Some(err) if items.is_empty() => Err(err),
            _ => Ok(items),
        }
    }

    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease_for: Duration,
        heartbeat: Option<&Payload>,
    ) -> StoreResult<Lease> {
        if let Some(details) = heartbeat {
            self.write(WriteOp::RecordHeartbeat { id: item.id, lease: item.lease, details: details.clone() }).await?;
        }
        self.shared.lock_queues().renew_activity(item.id, item.lease, now(), lease_millis(lease_for)).ok_or_else(|| {
            StoreError::LeaseLost(format!("activity '{}' of {}", item.activity.name, item.activity.instance_id))
        })
    }

    async fn complete_activity(&self, item: &ActivityWorkItem, result: HistoryEvent) -> StoreResult<()> {
        self.write(WriteOp::CompleteActivity {
            id: item.id,
            lease: item.lease,
            activity: item.activity.clone(),
            event: result,
        })
        .await
        .map(|_| ())
    }

    async fn abandon_activity_work(&self, item: &ActivityWorkItem, retry_after: Duration) -> StoreResult<()> {
        let released = self.shared.lock_queues().abandon_activity(
            item.id,
            item.lease,
            now().plus_millis(lease_millis(retry_after)),
        );
        self.shared.activity_ready.notify_one();
        if released { Ok(()) } else { Err(StoreError::LeaseLost(item.activity.instance_id.clone())) }
    }

    async fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceRecord>> {
        self.instance_record(instance_id)
    }

    async fn get_history(&self, instance_id: &str) -> StoreResult<Vec<HistoryEvent>> {
        self.readers.with(|conn| reads::get_history(conn, instance_id))
    }

    async fn list_instances(&self, query: &InstanceQuery) -> StoreResult<InstancePage> {
        self.readers.with(|conn| reads::list_instances(conn, query))
    }

    async fn purge_instance(&self, instance_id: &str) -> StoreResult<u64> {
        match self.write(WriteOp::PurgeInstance(instance_id.to_owned())).await? {
            WriteOutcome::Count(n) => Ok(n),
            _ => Ok(0),
        }
    }

    async fn purge_batch(&self, filter: &PurgeFilter, max: usize) -> StoreResult<PurgedBatch> {
        match self.write(WriteOp::PurgeBatch(filter.clone(), max)).await? {
            WriteOutcome::Purged(batch) => Ok(batch),
            _ => Ok(PurgedBatch::default()),
        }
    }

    async fn preview_purge(&self, filter: &PurgeFilter, max: usize) -> StoreResult<PurgePreview> {
        self.readers.with(|conn| reads::preview_purge(conn, filter, max))
    }

    async fn expire_idempotency_keys(&self, now: Timestamp, max: usize) -> StoreResult<u64> {
        match self.write(WriteOp::ExpireKeys(now, max)).await? {
            WriteOutcome::Count(n) => Ok(n),
            _ => Ok(0),
        }
    }

    async fn oldest_finished(&self) -> StoreResult<Vec<(RuntimeStatus, Timestamp)>> {
        self.readers.with(reads::oldest_finished)
    }

    async fn count_instances_by_status(&self) -> StoreResult<Vec<(RuntimeStatus, u64)>> {
        self.readers.with(reads::count_by_status)
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        self.readers.with(|conn| reads::get_setting(conn, key))
    }

    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<String> {
        match self.write(WriteOp::PutSettingIfAbsent { key: key.to_owned(), value: value.to_owned() }).await? {
            WriteOutcome::Value(v) => Ok(v),
            _ => Ok(value.to_owned()),
        }
    }

    async fn replace_setting(&self, key: &str, expected: Option<&str>, value: &str) -> StoreResult<bool> {
        let op = WriteOp::ReplaceSetting {
            key: key.to_owned(),
            expected: expected.map(str::to_owned),
            value: value.to_owned(),
        };
        Ok(matches!(self.write(op).await?, WriteOutcome::Count(1)))
    }

    async fn health(&self) -> StoreResult<()> {
        let writer_alive = {
            let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
            !threads.is_empty() && threads.iter().all(|t| !t.is_finished())
        };
        if !writer_alive {
            return Err(StoreError::Unavailable("the writer thread has stopped".into()));
        }
        if self.shared.storage_failing() {
            // Writes failed last time (a full disk?): only a write can tell whether they work again.
            self.write(WriteOp::Probe).await?;
            if self.shared.storage_failing() {
                return Err(StoreError::Unavailable("writes to the database fail".into()));
            }
        }
        self.readers.with(|conn| reads::get_setting(conn, "kiln.health")).map(|_| ())
    }

    fn watchers(&self) -> &StatusWatchers {
        &self.shared.watchers
    }

    async fn shutdown(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in threads {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // Every write is done: another process (or a new store in this one) may open the file.
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}
