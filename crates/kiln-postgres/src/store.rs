//! [`PostgresStore`]: the [`Store`] trait on PostgreSQL for any number of nodes.

use crate::cached;
use crate::listen::{self, Wakers};
use crate::local::LocalActivities;
use crate::looks::TableLooks;
use crate::pool::{bound_waits, build_pool, check_schema_name};
use crate::queries;
use crate::rows::{self, INSTANCE_COLUMNS, QUALIFIED_INSTANCE_COLUMNS, backend};
use crate::schema::{MigrationError, create_schema, migrate};
use crate::skipped::SkipList;
use crate::tx::{
    RowLock, Spare, claimed_work, create_instance_tx, insert_instance_row, insert_message, instance_status, purge_tx,
    terminal_codes, write_turn,
};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Object, Pool};
use kiln_core::{HistoryEvent, Payload, RuntimeStatus, Timestamp};
use kiln_store::{
    ActivityWorkItem, IdempotencyKey, IdempotentStart, InboxMessage, InstancePage, InstanceQuery, InstanceRecord,
    InstanceSummary, Lease, NewInstance, OrchestrationWorkItem, PREVIEW_COUNT_LIMIT, PageCursor, PurgeFilter,
    PurgePreview, PurgedBatch, StatusWatchers, Store, StoreError, StoreResult, TurnCommit, UNSTORED_MESSAGE_ID,
    Unrunnable,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;

/// Longest a worker sleeps without a notification before it looks for work again (a safety net
/// for missed notifications; latency does not depend on it).
pub(crate) const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// Options for [`PostgresStore::connect`].
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// `postgres://user@host:port/database` (or key=value form).
    pub url: String,
    /// Schema to keep Kiln's tables in (created if missing); the default search path otherwise.
    pub schema: Option<String>,
    /// Connections in the pool.
    pub pool_size: usize,
}

impl PostgresOptions {
    /// Defaults for a database URL: default schema, 16 connections.
    pub fn new(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions { url: url.into(), schema: None, pool_size: 16 }
    }
}

impl OpenError {
    /// The server could not be reached or used: the error with its causes (tokio-postgres's
    /// own text says "error performing TLS handshake" and leaves the reason to its source).
    pub(crate) fn unreachable(error: tokio_postgres::Error) -> OpenError {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        OpenError::Unreachable(text)
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL or schema name is not usable.
    #[error("invalid PostgreSQL configuration: {0}")]
    Config(String),
    /// The database did not answer.
    #[error("cannot reach PostgreSQL: {0}")]
    Unreachable(String),
    /// The schema could not be brought up to date.
    #[error("cannot prepare the PostgreSQL schema: {0}")]
    Migration(#[from] MigrationError),
}

/// The PostgreSQL store. Nodes sharing one database share all work.
pub struct PostgresStore {
    /// Durable work: every commit is synchronous.
    pool: Pool,
    /// Claims, renewals and releases of leases. These commit asynchronously: a lease lost in a
    /// database crash only means its holder's commit fails the token check and the work is
    /// done again, so they need not wait for an fsync.
    lease_pool: Pool,
    wakers: Arc<Wakers>,
    channel: String,
    /// Tags this node's notifications, so its listener skips what it already woke locally.
    node: String,
    /// Activities this node's turns claimed for it.
    local: LocalActivities,
    /// Which idle orchestration worker looks without a notification.
    looks: TableLooks,
    /// When the activity dispatcher last looked in the activities table unprompted.
    activity_looks: TableLooks,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// Work this node's runtime cannot run, which its claims leave to other nodes.
    skipped: SkipList,
}

/// Whether an id (or id prefix) holds a NUL, which PostgreSQL text cannot: no instance has such
/// an id (creation validates ids), so lookups answer "absent" instead of a backend error.
fn unstorable(id: &str) -> bool {
    id.contains('\0')
}

/// The wall clock as a [`Timestamp`] (the one in `kiln-core`, which tests can move forward).
pub(crate) fn now() -> Timestamp {
    kiln_core::time::now()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl PostgresStore {
    /// Connects, creates the schema if needed, migrates it, and starts listening for other
    /// nodes' commits.
    pub async fn connect(options: PostgresOptions) -> Result<PostgresStore, OpenError> {
        let (mut config, tls) = crate::tls::connect_config(&options.url)?;
        bound_waits(&mut config);
        if let Some(schema) = &options.schema {
            check_schema_name(schema)?;
            let (mut client, connection) = config.connect(tls.clone()).await.map_err(OpenError::unreachable)?;
            let driver = tokio::spawn(connection);
            create_schema(&mut client, schema).await.map_err(OpenError::unreachable)?;
            drop(client);
            let _ = driver.await;
            config.options(format!("-c search_path={schema}"));
        }
        let (mut client, connection) = config.connect(tls.clone()).await.map_err(OpenError::unreachable)?;
        let driver = tokio::spawn(connection);
        migrate(&mut client).await?;
        drop(client);
        let _ = driver.await;
        let mut lease_config = config.clone();
        let schema_options =
            options.schema.as_ref().map(|schema| format!("-c search_path={schema} ")).unwrap_or_default();
        lease_config.options(format!("{schema_options}-c synchronous_commit=off"));
        let pool = build_pool(config.clone(), tls.clone(), options.pool_size.max(2))?;
        let lease_pool = build_pool(lease_config, tls.clone(), (options.pool_size / 2).max(2))?;
        let channel = format!("kiln_{}", options.schema.as_deref().unwrap_or("public"));
        let wakers = Arc::new(Wakers::default());
        // Work may be waiting from before this node started.
        wakers.activities_in_table();
        let node = uuid::Uuid::new_v4().simple().to_string();
        let listener = tokio::spawn(listen::run(config, tls, channel.clone(), node.clone(), Arc::clone(&wakers)));
        Ok(PostgresStore {
            pool,
            lease_pool,
            wakers,
            channel,
            node,
            local: LocalActivities::default(),
            activity_looks: TableLooks::default(),
            looks: TableLooks::default(),
            listener: Mutex::new(Some(listener)),
            skipped: SkipList::default(),
        })
    }

    async fn client(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(|e| StoreError::Unavailable(format!("PostgreSQL: {e}")))
    }

    /// A connection for lease operations (asynchronous commit, see `lease_pool`).
    async fn lease_client(&self) -> StoreResult<Object> {
        self.lease_pool.get().await.map_err(|e| StoreError::Unavailable(format!("PostgreSQL: {e}")))
    }

    /// Tells every node (this one at once, the others by `NOTIFY`, tagged with this node's id)
    /// what a commit changed.
    ///
    /// Sent after the commit, not inside it: PostgreSQL holds a global lock from a notifying
    /// transaction's pre-commit until its commit is flushed, which would serialize every turn
    /// behind one fsync. A notification lost in a crash is covered by the fallback poll.
    ///
    /// Call it holding no connection: it takes one from the lease pool, and callers that each
    /// held one while waiting for another would deadlock both pools until their wait timeout.
    ///
    /// After a turn of `turn_of`, `w` is added when messages wait in its inbox: they arrived
    /// during the turn and woke workers that could not claim the leased instance, so someone
    /// must look again now that the lease is released. The check rides on the same statement.
    async fn publish(&self, payloads: &[String], turn_of: Option<&str>) {
        self.wake_locally(payloads);
        let sent = async {
            let client = self.lease_client().await?;
            // With no instance ($4 NULL) the inbox check matches nothing.
            cached::query(
                &client,
                "SELECT pg_notify($1, $3 || ' ' || payload) FROM unnest($2::text[] || CASE WHEN EXISTS \
                   (SELECT 1 FROM inbox WHERE instance_id = $4 AND (visible_at IS NULL OR visible_at <= $5)) \
                   THEN ARRAY['w'] ELSE ARRAY[]::text[] END) AS payload",
                &[&self.channel, &payloads, &self.node, &turn_of, &now().0],
            )
            .await
            .map_err(backend)
        };
        match sent.await {
            // One row per notification: one more than asked for is the added `w`.
            Ok(rows) if rows.len() > payloads.len() => self.wakers.orchestrations.notify_one(),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "NOTIFY failed; other nodes find the work by polling, later"),
        }
    }

    /// Until when a turn committing now claims its new activities for this node; `None` (all
    /// left in the table, for every node) when this node skips one of them.
    fn local_claim_until(&self, commit: &TurnCommit) -> Option<i64> {
        let runnable = !self.skipped.schedules_skipped_activity(commit);
        runnable.then(|| now().0 + self.local.lease_millis())
    }

    /// Hands a committed turn's claimed activities to this node's dispatchers.
    fn dispatch_locally(&self, claimed: Vec<ActivityWorkItem>) {
        if !claimed.is_empty() {
            self.local.push(claimed);
            self.wakers.activities.notify_one();
        }
    }

    /// Wakes local waiters at once (other nodes hear the NOTIFY).
    fn wake_locally(&self, payloads: &[String]) {
        for payload in payloads {
            self.wakers.dispatch(payload);
        }
    }

    /// Sleeps until notified, the next delayed message is due, the fallback poll, or `deadline`;
    /// true when notified.
    async fn wait(&self, notify: &tokio::sync::Notify, deadline: tokio::time::Instant, next_due: Option<i64>) -> bool {
        let notified = notify.notified();
        let mut until = deadline.min(tokio::time::Instant::now() + FALLBACK_POLL);
        if let Some(due) = next_due {
            let in_ms = u64::try_from(due - now().0).unwrap_or(0);
            until = until.min(tokio::time::Instant::now() + Duration::from_millis(in_ms));
        }
        tokio::select! {
            () = notified => true,
            () = tokio::time::sleep_until(until) => false,
        }
    }

    /// Claims up to `max` unclaimed activities from the table, none of them named in `excluded`
    /// or skipped by this node.
    async fn claim_from_table(
        &self,
        lease_for: Duration,
        max: usize,
        excluded: &[String],
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let client = self.lease_client().await?;
        let at = now().0;
        let (until, max_rows) = (at + millis(lease_for), max as i64);
        let mut skipped = self.skipped.activities();
        skipped.extend(excluded.iter().cloned());
        let rows = if skipped.is_empty() {
            cached::query(&client, &queries::CLAIM_ACTIVITIES, &[&at, &until, &max_rows]).await
        } else {
            cached::query(&client, &queries::CLAIM_ACTIVITIES_SKIPPING, &[&at, &until, &max_rows, &skipped]).await
        }
        .map_err(backend)?;
        if rows.len() == max {
            // There may be more: look again.
            self.wakers.activities_in_table();
        }
        rows.iter().map(rows::activity_work_item).collect()
    }

    /// Renews, before they are handed out, the leases of claims that waited in this node's
    /// queue for over a second: an activity must start with a whole lease ahead of it, and not
    /// at all if it is no longer held (its instance was terminated meanwhile, on any node).
    /// Claims no longer held are dropped from `items`; on an error `items` is left as it was.
    async fn renew_lapsing(&self, items: &mut Vec<ActivityWorkItem>, lease_for: Duration) -> StoreResult<()> {
        let at = now().0;
        let lease_ms = millis(lease_for);
        let lapsing = |item: &ActivityWorkItem| item.lease.expires_at.0 - at < lease_ms - QUEUED_BEFORE_RENEWAL_MS;
        let (ids, tokens): (Vec<i64>, Vec<i64>) =
            items.iter().filter(|item| lapsing(item)).map(|item| (item.id, item.lease.token as i64)).unzip();
        if ids.is_empty() {
            return Ok(());
        }
        let client = self.lease_client().await?;
        let renewed = cached::query(
            &client,
            "UPDATE activities a SET locked_until = $3 FROM unnest($1::bigint[], $2::bigint[]) AS f(id, token) \
             WHERE a.id = f.id AND a.lock_token = f.token AND a.locked_until >= $4 RETURNING a.id",
            &[&ids, &tokens, &(at + lease_ms), &at],
        )
        .await
        .map_err(backend)?;
        let renewed: Vec<i64> = renewed.iter().map(|row| row.get(0)).collect();
        items.retain_mut(|item| {
            if !lapsing(item) {
                return true;
            }
            item.lease.expires_at = Timestamp(at + lease_ms);
            renewed.contains(&item.id)
        });
        Ok(())
    }

    async fn try_claim_instance(&self, lease_for: Duration) -> StoreResult<Option<OrchestrationWorkItem>> {
        let client = self.lease_client().await?;
        let at = now().0;
        let until = at + millis(lease_for);
        let (names, versions) = self.skipped.orchestrations();
        let row = if names.is_empty() {
            cached::query_opt(&client, &queries::CLAIM_INSTANCE, &[&at, &until]).await
        } else {
            cached::query_opt(&client, &queries::CLAIM_INSTANCE_SKIPPING, &[&at, &until, &names, &versions]).await
        };
        let Some(row) = row.map_err(backend)? else {
            return Ok(None);
        };
        claimed_work(&client, &row, at).await.map(Some)
    }

    async fn next_due(&self) -> StoreResult<Option<i64>> {
        let client = self.lease_client().await?;
        let row = cached::query_one(&client, "SELECT min(visible_at) FROM inbox WHERE visible_at > $1", &[&now().0])
            .await
            .map_err(backend)?;
        row.try_get(0).map_err(backend)
    }
}

/// How long a claim may wait in this node's queue and still be handed out without checking
/// (and renewing) it first.
const QUEUED_BEFORE_RENEWAL_MS: i64 = 1_000;

#[async_trait]
impl Store for PostgresStore {
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        create_instance_tx(&tx, &instance).await?;
        let notes = vec!["w".to_owned(), format!("s:{}", instance.instance_id)];
        tx.commit().await.map_err(backend)?;
        drop(client);
        self.publish(&notes, None).await;
        Ok(())
    }

    async fn claim_with_activity_result(
        &self,
        item: &ActivityWorkItem,
        result: &HistoryEvent,
        lease_for: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let client = self.lease_client().await?;
        let at = now().0;
        // Only an idle, unsuspended instance this node can run, and only while this claim on the
        // activity holds.
        let (names, versions) = self.skipped.orchestrations();
        let skipping = match names.is_empty() {
            true => "",
            false => "AND (name, version) NOT IN (SELECT * FROM unnest($6::text[], $7::text[]))",
        };
        let sql = format!(
            "UPDATE instances SET lock_token = {token}, locked_until = $3, \
               dequeue_count = dequeue_count + 1 \
             WHERE instance_id = $1 AND (locked_until IS NULL OR locked_until < $2) AND status <> {suspended} \
               AND EXISTS (SELECT 1 FROM activities WHERE id = $4 AND lock_token = $5 AND locked_until >= $2) \
               {skipping} \
             RETURNING {INSTANCE_COLUMNS}, lock_token, locked_until, dequeue_count",
            token = queries::NEW_LEASE_TOKEN,
            suspended = RuntimeStatus::Suspended.code()
        );
        let params: [&(dyn ToSql + Sync); 7] = [
            &item.activity.instance_id,
            &at,
            &(at + millis(lease_for)),
            &item.id,
            &(item.lease.token as i64),
            &names,
            &versions,
        ];
        let params = if names.is_empty() { &params[..5] } else { &params[..] };
        let Some(row) = cached::query_opt(&client, &sql, params).await.map_err(backend)? else {
            return Ok(None);
        };
        let mut work = match claimed_work(&client, &row, at).await {
            Ok(work) => work,
            Err(err) => {
                drop(client);
                if let Ok(token) = row.try_get::<_, i64>(rows::INSTANCE_COLUMN_COUNT) {
                    let lease = Lease { token: token as u64, expires_at: Timestamp(at + millis(lease_for)) };
                    let _ = self.abandon_orchestration_work(&item.activity.instance_id, lease, Duration::ZERO).await;
                }
                return Err(err);
            }
        };
        // Not in the inbox: the commit deletes the activity instead.
        work.messages.push(InboxMessage {
            id: UNSTORED_MESSAGE_ID,
            execution: Some(item.activity.execution),
            event: result.clone(),
        });
        Ok(Some(work))
    }

    fn takes_first_turns(&self) -> bool {
        true
    }

    async fn create_instance_with_first_turn(&self, instance: NewInstance, first_turn: TurnCommit) -> StoreResult<()> {
        let mut client = self.client().await?;
        let mut tx = client.transaction().await.map_err(backend)?;
        insert_instance_row(&tx, &instance, 0).await?;
        let written = write_turn(&mut tx, &first_turn, 0, self.local_claim_until(&first_turn)).await?;
        tx.commit().await.map_err(backend)?;
        drop(client);
        self.dispatch_locally(written.claimed);
        self.publish(&written.notes, None).await;
        Ok(())
    }

    async fn create_instance_idempotent(
        &self,
        instance: NewInstance,
        key: IdempotencyKey,
    ) -> StoreResult<IdempotentStart> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Serializes requests with the same key across nodes until this transaction ends.
        cached::execute(&tx, "SELECT pg_advisory_xact_lock(hashtext($1))", &[&key.key]).await.map_err(backend)?;
        // An expired key is as good as gone (the retention purger deletes it in batches, off
        // this path): the new start takes its place.
        let existing = cached::query_opt(
            &tx,
            "SELECT fingerprint, instance_id FROM idempotency_keys WHERE key = $1 AND expires_at > $2",
            &[&key.key, &instance.created_at.0],
        )
        .await
        .map_err(backend)?;
        if let Some(row) = existing {
            let (fingerprint, instance_id): (String, String) = (row.get(0), row.get(1));
            if fingerprint != key.fingerprint {
                return Err(StoreError::IdempotencyKeyReused(key.key));
            }
            return Ok(IdempotentStart::Existing { instance_id });
        }
        create_instance_tx(&tx, &instance).await?;
        cached::execute(
            &tx,
            "INSERT INTO idempotency_keys (key, fingerprint, instance_id, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
               instance_id = EXCLUDED.instance_id, expires_at = EXCLUDED.expires_at",
            &[&key.key, &key.fingerprint, &instance.instance_id, &key.expires_at.0],
        )
        .await
        .map_err(backend)?;
        let notes = vec!["w".to_owned(), format!("s:{}", instance.instance_id)];
        tx.commit().await.map_err(backend)?;
        drop(client);
        self.publish(&notes, None).await;
        Ok(IdempotentStart::Created)
    }

    async fn send_message(&self, instance_id: &str, event: HistoryEvent) -> StoreResult<()> {
        if unstorable(instance_id) {
            return Err(StoreError::NotFound(instance_id.to_owned()));
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        if instance_status(&tx, instance_id, RowLock::KeyShare).await?.is_none() {
            return Err(StoreError::NotFound(instance_id.to_owned()));
        }
        insert_message(&tx, instance_id, None, &event, None).await?;
        let notes = vec!["w".to_owned()];
        tx.commit().await.map_err(backend)?;
        drop(client);
        self.publish(&notes, None).await;
        Ok(())
    }

    async fn fetch_orchestration_work(
        &self,
        lease_for: Duration,
        wait: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let deadline = tokio::time::Instant::now() + wait;
        let period = millis(FALLBACK_POLL);
        let mut look = self.looks.unprompted_look(now().0, period);
        loop {
            if look {
                if let Some(item) = self.try_claim_instance(lease_for).await? {
                    // There may be more: let another worker look.
                    self.wakers.orchestrations.notify_one();
                    return Ok(Some(item));
                }
                self.looks.set_next_due(self.next_due().await?);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            let notified = self.wait(&self.wakers.orchestrations, deadline, self.looks.next_due()).await;
            look = notified || self.looks.unprompted_look(now().0, period);
        }
    }

    async fn commit_turn(&self, commit: TurnCommit) -> StoreResult<()> {
        let mut client = self.client().await?;
        let mut tx = client.transaction().await.map_err(backend)?;
        let id = &commit.instance_id;
        // NO KEY UPDATE, not UPDATE: writes into this instance (messages from other turns) hold
        // KEY SHARE on its row and must not wait for this turn, nor deadlock with it.
        let held = cached::query_opt(
            &tx,
            "SELECT lock_token, locked_until, history_len FROM instances WHERE instance_id = $1 FOR NO KEY UPDATE",
            &[id],
        )
        .await
        .map_err(backend)?;
        let history_len = held.filter(|row| {
            row.get::<_, Option<i64>>(0) == Some(commit.lease.token as i64)
                && row.get::<_, Option<i64>>(1).is_some_and(|until| until >= now().0)
        });
        let Some(history_len) = history_len.map(|row| row.get::<_, i64>(2) as u64) else {
            return Err(StoreError::LeaseLost(id.clone()));
        };
        let written = write_turn(&mut tx, &commit, history_len, self.local_claim_until(&commit)).await?;
        tx.commit().await.map_err(backend)?;
        drop(client);
        if commit.status == RuntimeStatus::Terminated {
            self.local.withdraw(id);
        }
        self.dispatch_locally(written.claimed);
        self.publish(&written.notes, Some(id)).await;
        Ok(())
    }

    async fn abandon_orchestration_work(
        &self,
        instance_id: &str,
        lease: Lease,
        retry_after: Duration,
    ) -> StoreResult<()> {
        let client = self.lease_client().await?;
        let retry_at = now().0 + millis(retry_after);
        let updated = cached::execute(
            &client,
            "UPDATE instances SET lock_token = NULL, locked_until = $3, dequeue_count = GREATEST(dequeue_count - 1, 0) \
             WHERE instance_id = $1 AND lock_token = $2",
            &[&instance_id, &(lease.token as i64), &retry_at],
        )
        .await
        .map_err(backend)?;
        drop(client);
        if updated == 0 {
            return Err(StoreError::LeaseLost(instance_id.to_owned()));
        }
        if retry_after.is_zero() {
            // Given back for another node (see `skip_in_claims`): tell them now.
            self.publish(&["w".to_owned()], None).await;
        }
        Ok(())
    }

    fn skip_in_claims(&self, work: &Unrunnable) -> bool {
        self.skipped.add(work);
        true
    }

    async fn fetch_activity_work(
        &self,
        lease_for: Duration,
        wait: Duration,
        max: usize,
        excluded: &[String],
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let deadline = tokio::time::Instant::now() + wait;
        let max = max.max(1);
        self.local.set_lease_millis(millis(lease_for));
        loop {
            // The table is looked at when told it holds unclaimed work, and at least once per
            // fallback period however busy this node is with its own claims: activities of a
            // dead node, released ones and missed notifications wait there. Such a look keeps
            // a slot free for what it finds.
            let look = self.wakers.take_activities_in_table()
                || self.activity_looks.unprompted_look(now().0, millis(FALLBACK_POLL));
            let (own, mut more) = self.local.take(if look { max - 1 } else { max }, now().0, excluded);
            let mut taken = self.local.guard(own);
            if look {
                taken.items.extend(self.claim_from_table(lease_for, max - taken.items.len(), excluded).await?);
                if taken.items.len() < max {
                    // The table had less than the kept slot: fill it from this node's own claims.
                    let (own, more_own) = self.local.take(max - taken.items.len(), now().0, excluded);
                    taken.items.extend(own);
                    more = more_own;
                }
            }
            self.renew_lapsing(&mut taken.items, lease_for).await?;
            let items = taken.hand_out();
            if !items.is_empty() {
                if more {
                    self.wakers.activities.notify_one();
                }
                return Ok(items);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            // Woken for this node's own claims, for the table, or by the fallback poll.
            self.wait(&self.wakers.activities, deadline, None).await;
        }
    }

    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease_for: Duration,
        heartbeat: Option<&Payload>,
    ) -> StoreResult<Lease> {
        // Details are saved durably (a renewal alone may be lost in a crash: the lease lapses).
        let client = if heartbeat.is_some() { self.client().await? } else { self.lease_client().await? };
        let at = now().0;
        let expires_at = at + millis(lease_for);
        let updated = cached::execute(
            &client,
            "UPDATE activities SET locked_until = $3, heartbeat = COALESCE($5, heartbeat) \
             WHERE id = $1 AND lock_token = $2 AND locked_until >= $4",
            &[&item.id, &(item.lease.token as i64), &expires_at, &at, &heartbeat.map(Payload::as_str)],
        )
        .await
        .map_err(backend)?;
        if updated == 0 {
            return Err(StoreError::LeaseLost(format!(
                "activity '{}' of {}",
                item.activity.name, item.activity.instance_id
            )));
        }
        Ok(Lease { token: item.lease.token, expires_at: Timestamp(expires_at) })
    }

    async fn complete_activity(&self, item: &ActivityWorkItem, result: HistoryEvent) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // The instance's row before the activity's: the order a purge takes them in.
        let target = &item.activity.instance_id;
        let exists = instance_status(&tx, target, RowLock::KeyShare).await?.is_some();
        let deleted = cached::execute(
            &tx,
            "DELETE FROM activities WHERE id = $1 AND lock_token = $2 AND locked_until >= $3",
            &[&item.id, &(item.lease.token as i64), &now().0],
        )
        .await
        .map_err(backend)?;
        if deleted == 0 {
            return Err(StoreError::LeaseLost(format!(
                "activity '{}' of {}",
                item.activity.name, item.activity.instance_id
            )));
        }
        if exists {
            insert_message(&tx, target, Some(item.activity.execution), &result, None).await?;
        }
        let notes = vec!["w".to_owned()];
        tx.commit().await.map_err(backend)?;
        drop(client);
        self.publish(&notes, None).await;
        Ok(())
    }

    async fn abandon_activity_work(&self, item: &ActivityWorkItem, retry_after: Duration) -> StoreResult<()> {
        let client = self.lease_client().await?;
        let updated = cached::execute(
            &client,
            "UPDATE activities SET lock_token = NULL, locked_until = NULL, visible_at = $3, \
                 dequeue_count = GREATEST(dequeue_count - 1, 0) WHERE id = $1 AND lock_token = $2",
            &[&item.id, &(item.lease.token as i64), &(now().0 + millis(retry_after))],
        )
        .await
        .map_err(backend)?;
        drop(client);
        if updated == 0 {
            return Err(StoreError::LeaseLost(item.activity.instance_id.clone()));
        }
        if retry_after.is_zero() {
            // Given back for another node (see `skip_in_claims`): tell every node to look.
            self.publish(&["a".to_owned()], None).await;
        } else {
            // Back in the table: this node's dispatcher looks there (other nodes on their fallback look).
            self.wakers.activities_in_table();
        }
        Ok(())
    }

    async fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceRecord>> {
        if unstorable(instance_id) {
            return Ok(None);
        }
        let client = self.client().await?;
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = $1");
        cached::query_opt(&client, &sql, &[&instance_id])
            .await
            .map_err(backend)?
            .as_ref()
            .map(rows::instance)
            .transpose()
    }

    async fn get_history(&self, instance_id: &str) -> StoreResult<Vec<HistoryEvent>> {
        if unstorable(instance_id) {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let rows =
            cached::query(&client, "SELECT event FROM history WHERE instance_id = $1 ORDER BY seq", &[&instance_id])
                .await
                .map_err(backend)?;
        rows.iter().map(|r| rows::event(r.get(0))).collect()
    }

    async fn list_instances(&self, query: &InstanceQuery) -> StoreResult<InstancePage> {
        if query.instance_id_prefix.as_deref().is_some_and(unstorable) {
            return Ok(InstancePage { instances: Vec::new(), next: None });
        }
        // As on SQLite: the first label's rows (`o`, whose primary key is in listing order) drive
        // the page; without labels, the instances do. The join compares ids under the instances'
        // collation, so that it can use their primary key (under "C" it could not).
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut sql = match query.labels.first() {
            Some(first) => {
                params.push(Box::new(first.key.clone()));
                params.push(Box::new(first.value.clone()));
                format!(
                    "SELECT {QUALIFIED_INSTANCE_COLUMNS} FROM instance_labels o \
                     JOIN instances ON instances.instance_id = o.instance_id COLLATE \"default\" \
                     WHERE o.key = $1 AND o.value = $2"
                )
            }
            None => format!("SELECT {QUALIFIED_INSTANCE_COLUMNS} FROM instances WHERE TRUE"),
        };
        // The ordering columns, compared byte-wise as the ORDER BY sorts: under the column's
        // collation (e.g. en_US) the cursor would skip or repeat ids created in the same millisecond.
        let (created, id) = if query.labels.is_empty() {
            ("instances.created_at", "instances.instance_id COLLATE \"C\"")
        } else {
            ("o.created_at", "o.instance_id")
        };
        for label in query.labels.iter().skip(1) {
            params.push(Box::new(label.key.clone()));
            params.push(Box::new(label.value.clone()));
            let (k, v) = (params.len() - 1, params.len());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM instance_labels x WHERE x.instance_id = instances.instance_id \
                 AND x.key = ${k} AND x.value = ${v})"
            ));
        }
        if !query.statuses.is_empty() {
            params.push(Box::new(query.statuses.iter().map(|s| s.code() as i16).collect::<Vec<i16>>()));
            sql.push_str(&format!(" AND instances.status = ANY(${})", params.len()));
        }
        if let Some(name) = &query.name {
            params.push(Box::new(name.clone()));
            sql.push_str(&format!(" AND instances.name = ${}", params.len()));
        }
        if let Some(from) = query.created_from {
            params.push(Box::new(from.0));
            sql.push_str(&format!(" AND {created} >= ${}", params.len()));
        }
        if let Some(to) = query.created_to {
            params.push(Box::new(to.0));
            sql.push_str(&format!(" AND {created} <= ${}", params.len()));
        }
        if let Some(prefix) = &query.instance_id_prefix {
            params.push(Box::new(prefix.clone()));
            sql.push_str(&format!(" AND left(instances.instance_id, length(${n})) = ${n}", n = params.len()));
        }
        if let Some(after) = &query.after {
            params.push(Box::new(after.created_at.0));
            params.push(Box::new(after.instance_id.clone()));
            let (t, i) = (params.len() - 1, params.len());
            sql.push_str(&format!(" AND ({created}, {id}) > (${t}, ${i})"));
        }
        let page_size = query.page_size.max(1);
        sql.push_str(&format!(" ORDER BY {created}, {id} LIMIT {}", page_size + 1));
        let client = self.client().await?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&sql, &refs).await.map_err(backend)?;
        let mut instances = rows.iter().map(rows::instance).collect::<StoreResult<Vec<_>>>()?;
        let next = if instances.len() > page_size {
            instances.truncate(page_size);
            instances
                .last()
                .map(|last| PageCursor { created_at: last.created_at, instance_id: last.instance_id.clone() })
        } else {
            None
        };
        Ok(InstancePage { instances, next })
    }

    async fn count_instances_by_status(&self) -> StoreResult<Vec<(RuntimeStatus, u64)>> {
        let client = self.client().await?;
        let rows = cached::query(&client, "SELECT status, count(*) FROM instances GROUP BY status", &[])
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                RuntimeStatus::from_code(i64::from(r.get::<_, i16>(0))).map(|s| (s, r.get::<_, i64>(1) as u64))
            })
            .collect())
    }

    async fn purge_instance(&self, instance_id: &str) -> StoreResult<u64> {
        if unstorable(instance_id) {
            return Err(StoreError::NotFound(instance_id.to_owned()));
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let (status, _) = instance_status(&tx, instance_id, RowLock::Update)
            .await?
            .ok_or_else(|| StoreError::NotFound(instance_id.to_owned()))?;
        if !status.is_terminal() {
            return Err(StoreError::NotTerminal(instance_id.to_owned(), status));
        }
        let deleted = purge_tx(&tx, vec![instance_id.to_owned()], Spare::Nothing).await?;
        tx.commit().await.map_err(backend)?;
        for id in &deleted {
            self.wakers.watchers.notify(id);
        }
        Ok(deleted.len() as u64)
    }

    async fn purge_batch(&self, filter: &PurgeFilter, max: usize) -> StoreResult<PurgedBatch> {
        let Some(args) = PurgeArgs::new(filter) else {
            return Ok(PurgedBatch::default());
        };
        let sql = queries::purge_batch_roots(&args.statuses);
        let limit = max as i64;
        let mut client = self.client().await?;
        // READ COMMITTED whatever the server's default: `purge_tx` checks inboxes again once
        // the rows are locked, and must see what was committed meanwhile.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(backend)?;
        let mut params = args.params();
        params.push(&limit);
        let roots: Vec<PageCursor> = cached::query(&tx, &sql, &params)
            .await
            .map_err(backend)?
            .iter()
            .map(|r| PageCursor { instance_id: r.get(0), created_at: Timestamp(r.get(1)) })
            .collect();
        let (selected, last) = (roots.len(), roots.last().cloned());
        let deleted = purge_tx(&tx, roots.into_iter().map(|r| r.instance_id).collect(), Spare::WaitingTrees).await?;
        tx.commit().await.map_err(backend)?;
        for id in &deleted {
            self.wakers.watchers.notify(id);
        }
        Ok(PurgedBatch { selected, deleted: deleted.len() as u64, last })
    }

    async fn preview_purge(&self, filter: &PurgeFilter, max: usize) -> StoreResult<PurgePreview> {
        let Some(args) = PurgeArgs::new(filter) else {
            return Ok(PurgePreview { complete: true, ..PurgePreview::default() });
        };
        let selection = queries::purgeable(&args.statuses);
        let client = self.client().await?;
        let mut params = args.params();
        let count_limit = PREVIEW_COUNT_LIMIT as i64 + 1;
        params.push(&count_limit);
        let count = format!("SELECT count(*) FROM (SELECT 1 {selection} LIMIT $9) s");
        let counted: i64 = client.query_one(&count, &params).await.map_err(backend)?.get(0);
        let (matched, complete) = ((counted as u64).min(PREVIEW_COUNT_LIMIT), counted as u64 <= PREVIEW_COUNT_LIMIT);
        params.pop();
        let limit = max as i64;
        params.push(&limit);
        let sql = format!(
            "SELECT instance_id, name, status, created_at, updated_at {selection} \
             ORDER BY created_at, instance_id LIMIT $9"
        );
        let first = client
            .query(&sql, &params)
            .await
            .map_err(backend)?
            .iter()
            .filter_map(|r| {
                Some(InstanceSummary {
                    instance_id: r.get(0),
                    name: r.get(1),
                    status: RuntimeStatus::from_code(i64::from(r.get::<_, i16>(2)))?,
                    created_at: Timestamp(r.get(3)),
                    updated_at: Timestamp(r.get(4)),
                })
            })
            .collect();
        Ok(PurgePreview { matched, complete, first })
    }

    async fn expire_idempotency_keys(&self, now: Timestamp, max: usize) -> StoreResult<u64> {
        let client = self.client().await?;
        cached::execute(
            &client,
            "DELETE FROM idempotency_keys WHERE key IN \
             (SELECT key FROM idempotency_keys WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 \
              FOR UPDATE SKIP LOCKED)",
            &[&now.0, &(max as i64)],
        )
        .await
        .map_err(backend)
    }

    async fn oldest_finished(&self) -> StoreResult<Vec<(RuntimeStatus, Timestamp)>> {
        let client = self.client().await?;
        let mut oldest = Vec::new();
        for code in terminal_codes() {
            // The first entry of `instances_by_status` for the status.
            let row = cached::query_opt(&client, "SELECT min(created_at) FROM instances WHERE status = $1", &[&code])
                .await
                .map_err(backend)?;
            if let (Some(status), Some(at)) =
                (RuntimeStatus::from_code(i64::from(code)), row.and_then(|r| r.get::<_, Option<i64>>(0)))
            {
                oldest.push((status, Timestamp(at)));
            }
        }
        Ok(oldest)
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let client = self.client().await?;
        let row =
            cached::query_opt(&client, "SELECT value FROM settings WHERE key = $1", &[&key]).await.map_err(backend)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<String> {
        let client = self.client().await?;
        cached::execute(
            &client,
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &value],
        )
        .await
        .map_err(backend)?;
        let row =
            cached::query_one(&client, "SELECT value FROM settings WHERE key = $1", &[&key]).await.map_err(backend)?;
        Ok(row.get(0))
    }

    async fn replace_setting(&self, key: &str, expected: Option<&str>, value: &str) -> StoreResult<bool> {
        let client = self.client().await?;
        let changed = match expected {
            Some(expected) => {
                let sql = "UPDATE settings SET value = $3 WHERE key = $1 AND value = $2";
                cached::execute(&client, sql, &[&key, &expected, &value]).await
            }
            None => {
                let sql = "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";
                cached::execute(&client, sql, &[&key, &value]).await
            }
        }
        .map_err(backend)?;
        Ok(changed == 1)
    }

    async fn health(&self) -> StoreResult<()> {
        let client = self.client().await?;
        cached::query_one(&client, "SELECT 1", &[]).await.map_err(backend)?;
        Ok(())
    }

    fn watchers(&self) -> &StatusWatchers {
        &self.wakers.watchers
    }

    async fn shutdown(&self) {
        // Hand back activities claimed for this node that no dispatcher took: any node runs them
        // now instead of after their lease.
        let unstarted = self.local.drain();
        if !unstarted.is_empty()
            && let Ok(client) = self.lease_client().await
        {
            let (ids, tokens): (Vec<i64>, Vec<i64>) =
                unstarted.iter().map(|item| (item.id, item.lease.token as i64)).unzip();
            let released = cached::execute(
                &client,
                "UPDATE activities a SET lock_token = NULL, locked_until = NULL, dequeue_count = a.dequeue_count - 1 \
                 FROM unnest($1::bigint[], $2::bigint[]) AS f(id, token) WHERE a.id = f.id AND a.lock_token = f.token",
                &[&ids, &tokens],
            )
            .await;
            drop(client);
            match released {
                Ok(_) => self.publish(&["a".to_owned()], None).await,
                Err(err) => {
                    tracing::debug!(error = %err, "could not hand back unstarted activities; their leases will lapse")
                }
            }
        }
        if let Some(listener) = self.listener.lock().unwrap_or_else(|p| p.into_inner()).take() {
            listener.abort();
        }
        self.pool.close();
        self.lease_pool.close();
    }
}

/// A purge filter as the arguments of [`queries::purgeable`] (`$1` to `$8`).
struct PurgeArgs {
    statuses: Vec<i16>,
    created_from: i64,
    created_until: i64,
    finished_before: i64,
    name: Option<String>,
    excluded: Vec<String>,
    now: i64,
    after_created: i64,
    after_id: String,
}

impl PurgeArgs {
    /// `None` when the filter names no terminal status: only finished instances are purged.
    fn new(filter: &PurgeFilter) -> Option<PurgeArgs> {
        let statuses: Vec<i16> = if filter.statuses.is_empty() {
            terminal_codes()
        } else {
            filter.statuses.iter().filter(|s| s.is_terminal()).map(|s| s.code() as i16).collect()
        };
        (!statuses.is_empty()).then(|| PurgeArgs {
            statuses,
            // From where the last batch ended, if later: the index walk starts there.
            created_from: filter
                .created_from
                .map_or(i64::MIN, |t| t.0)
                .max(filter.after.as_ref().map_or(i64::MIN, |a| a.created_at.0)),
            created_until: filter.created_until().map_or(i64::MAX, |t| t.0),
            finished_before: filter.finished_before.map_or(i64::MAX, |t| t.0),
            name: filter.name.clone(),
            excluded: filter.excluded_names.clone(),
            now: now().0,
            after_created: filter.after.as_ref().map_or(i64::MIN, |a| a.created_at.0),
            after_id: filter.after.as_ref().map_or(String::new(), |a| a.instance_id.clone()),
        })
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.created_from,
            &self.created_until,
            &self.finished_before,
            &self.name,
            &self.excluded,
            &self.now,
            &self.after_created,
            &self.after_id,
        ]
    }
}
