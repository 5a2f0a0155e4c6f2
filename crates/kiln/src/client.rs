//! [`KilnClient`]: start, query, signal and manage instances in-process. The HTTP layer is a thin
//! shell around it.

use crate::runtime::{Runtime, correlate, new_run_execution, wall_clock};
use kiln_core::{
    Correlation, EventKind, HistoryEvent, InvalidEventName, InvalidInstanceId, Labels, Payload, PayloadTooLarge,
    RuntimeStatus, Timestamp, validate_event_name, validate_instance_id,
};
use kiln_store::{
    IdempotencyKey, IdempotentStart, InstancePage, InstanceQuery, InstanceRecord, NewInstance, PurgeFilter, StoreError,
};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Most pairs of reads [`KilnClient::export_history`] makes before it gives up on an instance
/// that keeps starting new executions.
const EXPORT_READS: usize = 8;

/// Why a client call was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No instance has this id.
    #[error("instance '{0}' not found")]
    NotFound(String),
    /// A bulk operation that cannot be run (an unknown action, a status it does not apply to).
    #[error("{0}")]
    InvalidBulkOperation(String),
    /// The id is held by an instance that has not finished.
    #[error("an instance with id '{id}' already exists and is {status}")]
    AlreadyExists {
        /// The id.
        id: String,
        /// Its status.
        status: RuntimeStatus,
    },
    /// No orchestration of this name (and version) is registered.
    #[error("orchestration '{name}'{} is not registered (registered: {})", version.as_deref().map(|v| format!(" version '{v}'")).unwrap_or_default(), registered.join(", "))]
    UnknownOrchestration {
        /// The name asked for.
        name: String,
        /// The version asked for.
        version: Option<String>,
        /// What is registered.
        registered: Vec<String>,
    },
    /// The instance id breaks the id rules.
    #[error(transparent)]
    InvalidInstanceId(#[from] InvalidInstanceId),
    /// The name of an event raised from outside breaks the name rules.
    #[error(transparent)]
    InvalidEventName(#[from] InvalidEventName),
    /// A payload could not be encoded as JSON.
    #[error("{what} is not valid JSON: {message}")]
    InvalidPayload {
        /// Which payload.
        what: &'static str,
        /// The serde message.
        message: String,
    },
    /// A payload exceeded its limit.
    #[error(transparent)]
    PayloadTooLarge(#[from] PayloadTooLarge),
    /// The instance has finished; the operation no longer applies (HTTP 410).
    #[error("instance '{id}' is {status}; it can no longer {operation}")]
    Finished {
        /// The id.
        id: String,
        /// Its terminal status.
        status: RuntimeStatus,
        /// What was asked.
        operation: &'static str,
    },
    /// The instance is in a state where the operation does not apply (HTTP 409).
    #[error("instance '{id}' is {status}; cannot {operation}")]
    WrongState {
        /// The id.
        id: String,
        /// Its status.
        status: RuntimeStatus,
        /// What was asked.
        operation: &'static str,
    },
    /// The idempotency key was already used with a different request (HTTP 422).
    #[error("the Idempotency-Key '{0}' was already used with a different request")]
    IdempotencyKeyReused(String),
    /// The wait ended before the instance finished.
    #[error("instance '{0}' did not finish in time")]
    Timeout(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ClientError {
    fn from(err: StoreError) -> ClientError {
        match err {
            StoreError::NotFound(id) => ClientError::NotFound(id),
            StoreError::AlreadyExists(id, status) => ClientError::AlreadyExists { id, status },
            StoreError::NotTerminal(id, status) => ClientError::WrongState { id, status, operation: "be purged" },
            StoreError::IdempotencyKeyReused(key) => ClientError::IdempotencyKeyReused(key),
            other => ClientError::Store(other),
        }
    }
}

/// An instance a start created (or, for a repeated idempotent start, found).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// Its id.
    pub instance_id: String,
    /// When it was created: an id reused after the instance finished (or was purged) gets a new
    /// creation, so this tells the runs of one id apart.
    pub created_at: Timestamp,
    /// Its correlation (none for an instance created before Kiln kept them).
    pub correlation: Option<Correlation>,
}

/// Options for starting an instance.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// A caller-chosen instance id; a random one otherwise.
    pub instance_id: Option<String>,
    /// The orchestration version; the default (last registered) otherwise.
    pub version: Option<String>,
    /// Business ids to attach (shown in its status, and to list it by).
    pub labels: Labels,
    /// The caller's correlation (from its request); a new trace otherwise, whose trace id is
    /// the correlation id.
    pub correlation: Option<Correlation>,
}

/// Starts, queries and manages instances. Cheap to clone.
#[derive(Clone)]
pub struct KilnClient {
    pub(crate) rt: Arc<Runtime>,
}

impl KilnClient {
    pub(crate) fn new(rt: Arc<Runtime>) -> KilnClient {
        KilnClient { rt }
    }

    /// Starts an orchestration with a typed input; returns the new instance id.
    pub async fn start<I: Serialize + ?Sized>(&self, name: &str, input: &I) -> Result<String, ClientError> {
        let payload = Payload::encode(input)
            .map_err(|e| ClientError::InvalidPayload { what: "input", message: e.to_string() })?;
        self.start_with(name, payload, StartOptions::default()).await
    }

    /// Starts an orchestration with a JSON input and options; returns the instance id.
    pub async fn start_with(&self, name: &str, input: Payload, options: StartOptions) -> Result<String, ClientError> {
        Ok(self.start_instance(name, input, options).await?.instance_id)
    }

    /// Starts an orchestration with a JSON input and options; returns the instance id and
    /// creation time (which tells this run apart from another created later under the same id).
    pub async fn start_instance(
        &self,
        name: &str,
        input: Payload,
        options: StartOptions,
    ) -> Result<Started, ClientError> {
        self.refuse_built_in(name, &options)?;
        self.create(name, input, options).await
    }

    /// Starts an orchestration, built-in ones included.
    pub(crate) async fn create(
        &self,
        name: &str,
        input: Payload,
        options: StartOptions,
    ) -> Result<Started, ClientError> {
        let generated_id = options.instance_id.is_none();
        let instance = self.new_instance(name, input, options)?;
        let started = Started {
            instance_id: instance.instance_id.clone(),
            created_at: instance.created_at,
            correlation: instance.correlation.clone(),
        };
        // A fresh id cannot clash with a stored instance, so its first turn can run now and be
        // written with the instance in one commit. (A caller's id may replace a finished
        // instance, which the store does while creating it; that takes the ordinary path.)
        if generated_id
            && self.rt.store.takes_first_turns()
            && let Some(first_turn) = crate::turn::first_turn(&self.rt, &instance).await
        {
            let (execution, status, failure) = (first_turn.execution, first_turn.status, first_turn.failure.clone());
            let took = u64::try_from(first_turn.now.millis() - started.created_at.millis()).unwrap_or(0);
            let labels = instance.labels.clone();
            let created = self.rt.store.create_instance_with_first_turn(instance, first_turn).await;
            if created.is_err() {
                self.rt.cache.take(&started.instance_id);
            }
            created?;
            self.rt.metrics.turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let committed = crate::turn::Committed {
                instance_id: &started.instance_id,
                orchestration: name,
                execution,
                status,
                labels: &labels,
                correlation: started.correlation.as_ref(),
            };
            committed.log(Vec::new());
            if status.is_terminal() {
                self.rt.metrics.record_duration(name, Duration::from_millis(took));
                committed.log_end(failure.as_ref(), took);
            }
            return Ok(started);
        }
        self.rt.store.create_instance(instance).await?;
        Ok(started)
    }

    /// Starts an orchestration unless `key` already started one for the same request (same
    /// `fingerprint`) within `retention`. Returns the instance and whether it was created now;
    /// a reuse of the key with another fingerprint gives `IdempotencyKeyReused`, and `NotFound`
    /// if the instance the key started has been purged since.
    pub async fn start_idempotent(
        &self,
        name: &str,
        input: Payload,
        options: StartOptions,
        key: &str,
        fingerprint: &str,
        retention: Duration,
    ) -> Result<(Started, bool), ClientError> {
        self.refuse_built_in(name, &options)?;
        let instance = self.new_instance(name, input, options)?;
        let started = Started {
            instance_id: instance.instance_id.clone(),
            created_at: instance.created_at,
            correlation: instance.correlation.clone(),
        };
        let expires_at = instance.created_at.plus_millis(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let key = IdempotencyKey { key: key.to_owned(), fingerprint: fingerprint.to_owned(), expires_at };
        match self.rt.store.create_instance_idempotent(instance, key).await? {
            IdempotentStart::Created => Ok((started, true)),
            IdempotentStart::Existing { instance_id } => {
                let record = self.status(&instance_id).await?.ok_or(ClientError::NotFound(instance_id))?;
                let started = Started {
                    instance_id: record.instance_id,
                    created_at: record.created_at,
                    correlation: record.correlation,
                };
                Ok((started, false))
            }
        }
    }

    /// Built-in orchestrations (bulk operations) start through their own calls, which check
    /// what they are given: to any other start they are unknown.
    fn refuse_built_in(&self, name: &str, options: &StartOptions) -> Result<(), ClientError> {
        if !name.starts_with(crate::bulk::RESERVED_PREFIX) {
            return Ok(());
        }
        Err(ClientError::UnknownOrchestration {
            name: name.to_owned(),
            version: options.version.clone(),
            registered: self.rt.registry.orchestration_names(),
        })
    }

    /// Checks a start request and builds the instance to create.
    fn new_instance(&self, name: &str, input: Payload, options: StartOptions) -> Result<NewInstance, ClientError> {
        let unknown = || ClientError::UnknownOrchestration {
            name: name.to_owned(),
            version: options.version.clone(),
            registered: self.rt.registry.orchestration_names(),
        };
        let version = match &options.version {
            Some(v) if self.rt.registry.has_version(name, v) => v.clone(),
            Some(_) => return Err(unknown()),
            None => self.rt.registry.default_version(name).ok_or_else(unknown)?.to_owned(),
        };
        self.rt.config.limits.check("input", &input)?;
        let instance_id = match options.instance_id {
            Some(id) => {
                validate_instance_id(&id)?;
                id
            }
            // Time-ordered (UUIDv7): new instances land next to each other in the stores' indexes.
            None => uuid::Uuid::now_v7().simple().to_string(),
        };
        Ok(NewInstance {
            instance_id,
            name: name.to_owned(),
            version,
            input,
            parent: None,
            created_at: wall_clock(),
            execution: new_run_execution(),
            labels: options.labels,
            correlation: Some(options.correlation.unwrap_or_else(|| correlate(None, None))),
        })
    }

    /// How long instances of this orchestration have typically taken (a moving average of the
    /// ones this process saw finish), if any finished yet.
    pub fn typical_duration(&self, name: &str) -> Option<Duration> {
        self.rt.metrics.typical_duration(name)
    }

    /// A secret kept in the store under `name`, generated ([`KilnClient::generate_secret`]) the
    /// first time it is asked for; every later call returns the same value (until replaced).
    pub async fn secret(&self, name: &str) -> Result<String, ClientError> {
        if let Some(secret) = self.setting(name).await? {
            return Ok(secret);
        }
        Ok(self.rt.store.put_setting_if_absent(name, &KilnClient::generate_secret()).await?)
    }

    /// A new random secret: two v4 UUIDs (244 random bits) as 64 hex digits.
    pub fn generate_secret() -> String {
        format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
    }

    /// A setting kept in the store, if set.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, ClientError> {
        Ok(self.rt.store.get_setting(name).await?)
    }

    /// Replaces a setting if it still holds `expected` (`None`: if it is unset); returns whether
    /// it did.
    pub async fn replace_setting(&self, name: &str, expected: Option<&str>, value: &str) -> Result<bool, ClientError> {
        Ok(self.rt.store.replace_setting(name, expected, value).await?)
    }

    /// Checks that the store answers.
    pub async fn check_store(&self) -> Result<(), ClientError> {
        Ok(self.rt.store.health().await?)
    }

    /// Counters of the runtime's work since start.
    pub fn metrics(&self) -> crate::MetricsSnapshot {
        self.rt.metrics.snapshot()
    }

    /// Instances per runtime status.
    pub async fn count_by_status(&self) -> Result<Vec<(RuntimeStatus, u64)>, ClientError> {
        Ok(self.rt.store.count_instances_by_status().await?)
    }

    /// The creation time of the oldest instance kept, per terminal status: how far back
    /// retention keeps history.
    pub async fn oldest_finished(&self) -> Result<Vec<(RuntimeStatus, Timestamp)>, ClientError> {
        Ok(self.rt.store.oldest_finished().await?)
    }

    /// The names of the registered orchestrations, sorted.
    pub fn orchestration_names(&self) -> Vec<String> {
        self.rt.registry.orchestration_names()
    }

    /// True if an orchestration of this name is registered.
    pub fn is_registered(&self, name: &str) -> bool {
        self.rt.registry.default_version(name).is_some()
    }

    /// Reads an instance's status; `None` if it does not exist.
    pub async fn status(&self, instance_id: &str) -> Result<Option<InstanceRecord>, ClientError> {
        Ok(self.rt.store.get_instance(instance_id).await?)
    }

    /// Waits until the instance reaches a terminal status (no polling: woken by its commits).
    pub async fn wait_for_completion(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<InstanceRecord, ClientError> {
        self.wait_until(instance_id, timeout, |record| record.status.is_terminal())
            .await?
            .ok_or_else(|| ClientError::Timeout(instance_id.to_owned()))
    }

    /// Waits up to `timeout` until the instance satisfies `done`; returns its last state, or
    /// `None` if it timed out first. `NotFound` if the instance does not exist.
    pub async fn wait_until(
        &self,
        instance_id: &str,
        timeout: Duration,
        mut done: impl FnMut(&InstanceRecord) -> bool,
    ) -> Result<Option<InstanceRecord>, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut subscription = self.rt.store.watchers().subscribe(instance_id);
        loop {
            let record =
                self.status(instance_id).await?.ok_or_else(|| ClientError::NotFound(instance_id.to_owned()))?;
            if done(&record) {
                return Ok(Some(record));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !subscription.wait(left).await {
                return Ok(None);
            }
        }
    }

    /// Raises an external event with typed data.
    pub async fn raise_event<T: Serialize + ?Sized>(
        &self,
        instance_id: &str,
        name: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        let payload = Payload::encode(data)
            .map_err(|e| ClientError::InvalidPayload { what: "event data", message: e.to_string() })?;
        self.raise_event_payload(instance_id, name, payload).await
    }

    /// Raises an external event with JSON data. `Finished` if the instance has finished.
    pub async fn raise_event_payload(&self, instance_id: &str, name: &str, data: Payload) -> Result<(), ClientError> {
        validate_event_name(name)?;
        self.rt.config.limits.check("event data", &data)?;
        self.require(instance_id, "receive events", |_| true).await?;
        self.send(instance_id, EventKind::EventRaised { name: name.to_owned(), input: data }).await
    }

    /// Terminates an instance (and its sub-orchestrations). Works on stuck and unregistered ones.
    pub async fn terminate(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        self.require(instance_id, "be terminated", |_| true).await?;
        self.send(instance_id, EventKind::ExecutionTerminated { reason: reason.map(str::to_owned) }).await
    }

    /// Suspends a running instance.
    pub async fn suspend(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        self.require(instance_id, "be suspended", |status| status != RuntimeStatus::Suspended).await?;
        self.send(instance_id, EventKind::ExecutionSuspended { reason: reason.map(str::to_owned) }).await
    }

    /// Resumes a suspended instance.
    pub async fn resume(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        self.require(instance_id, "be resumed", |status| status == RuntimeStatus::Suspended).await?;
        self.send(instance_id, EventKind::ExecutionResumed { reason: reason.map(str::to_owned) }).await
    }

    /// Rewinds a failed instance: its failed steps run again.
    pub async fn rewind(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        let record = self.existing(instance_id).await?;
        match record.status {
            RuntimeStatus::Failed => {}
            status if status.is_terminal() => {
                return Err(ClientError::Finished { id: instance_id.to_owned(), status, operation: "be rewound" });
            }
            status => {
                return Err(ClientError::WrongState { id: instance_id.to_owned(), status, operation: "rewind" });
            }
        }
        let rewind = EventKind::ExecutionRewound { reason: reason.map(str::to_owned), redone_activities: Vec::new() };
        self.send(instance_id, rewind).await
    }

    /// Purges a finished instance and its sub-orchestrations; returns how many were deleted.
    pub async fn purge(&self, instance_id: &str) -> Result<u64, ClientError> {
        Ok(self.rt.store.purge_instance(instance_id).await?)
    }

    /// Purges finished instances matching a filter; returns how many were deleted.
    pub async fn purge_many(&self, filter: &PurgeFilter) -> Result<u64, ClientError> {
        Ok(self.rt.store.purge_instances(filter).await?)
    }

    /// What [`KilnClient::purge_many`] would delete now: how many instances match, and the
    /// first `max` of them (a dry run).
    pub async fn preview_purge(
        &self,
        filter: &PurgeFilter,
        max: usize,
    ) -> Result<kiln_store::PurgePreview, ClientError> {
        Ok(self.rt.store.preview_purge(filter, max).await?)
    }

    /// Lists instances (keyset paging: pass the previous page's `next` as `after`).
    pub async fn list(&self, query: &InstanceQuery) -> Result<InstancePage, ClientError> {
        Ok(self.rt.store.list_instances(query).await?)
    }

    /// Reads an instance's current history.
    pub async fn history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, ClientError> {
        self.existing(instance_id).await?;
        Ok(self.rt.store.get_history(instance_id).await?)
    }

    /// Reads an instance's current execution with its history, as `kiln history export` writes
    /// it (for [`replay_history`](crate::replay_history)).
    pub async fn export_history(&self, instance_id: &str) -> Result<crate::ExportedHistory, ClientError> {
        // The record and the history are two reads: read again if a new execution (a
        // continue-as-new) started in between, so that they belong together.
        let mut record = self.existing(instance_id).await?;
        for _ in 0..EXPORT_READS {
            let events = self.rt.store.get_history(instance_id).await?;
            let after = self.existing(instance_id).await?;
            if after.execution == record.execution {
                return Ok(crate::ExportedHistory {
                    instance_id: record.instance_id,
                    name: record.name,
                    version: record.version,
                    execution: record.execution,
                    events,
                });
            }
            record = after;
        }
        Err(StoreError::Unavailable(format!("'{instance_id}' keeps starting new executions; export it again")).into())
    }

    async fn existing(&self, instance_id: &str) -> Result<InstanceRecord, ClientError> {
        self.status(instance_id).await?.ok_or_else(|| ClientError::NotFound(instance_id.to_owned()))
    }

    /// Checks that an operation applies to an unfinished instance in an `allowed` status:
    /// finished instances give `Finished`, other mismatches `WrongState`.
    async fn require(
        &self,
        instance_id: &str,
        operation: &'static str,
        allowed: impl Fn(RuntimeStatus) -> bool,
    ) -> Result<(), ClientError> {
        let status = self.existing(instance_id).await?.status;
        if status.is_terminal() {
            Err(ClientError::Finished { id: instance_id.to_owned(), status, operation })
        } else if allowed(status) {
            Ok(())
        } else {
            Err(ClientError::WrongState { id: instance_id.to_owned(), status, operation })
        }
    }

    async fn send(&self, instance_id: &str, kind: EventKind) -> Result<(), ClientError> {
        let event = HistoryEvent::new(wall_clock(), kind);
        Ok(self.rt.store.send_message(instance_id, event).await?)
    }
}
