//! The records a store keeps and hands out: instances, work items, messages and turn commits.

use kiln_core::{
    ActivityTimeouts, Correlation, EventKind, FailureDetails, HistoryEvent, InstanceContext, LabelFilter, Labels,
    ParentInstance, Payload, RuntimeStatus, Timestamp, WaitingOn,
};

/// A request to create (start) an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewInstance {
    /// The instance id (validated by the caller).
    pub instance_id: String,
    /// Orchestration name.
    pub name: String,
    /// Orchestration version.
    pub version: String,
    /// Input payload.
    pub input: Payload,
    /// Set for sub-orchestrations.
    pub parent: Option<ParentInstance>,
    /// When it was accepted.
    pub created_at: Timestamp,
    /// Its first execution's number, unless it replaces a finished instance (whose execution
    /// number it then continues). Each creation takes a fresh, random one (40 bits), so that a
    /// run created under the id of a purged one does not, in practice, share an execution
    /// number with it: what is
    /// still in flight for the old run (an activity result, a child's answer, another node's
    /// cached execution) cannot be taken for the new run's, and derived child ids and activity
    /// idempotency keys (both built from the execution number) differ.
    pub execution: u64,
    /// The business ids its starter attached (a sub-orchestration gets its parent's).
    pub labels: Labels,
    /// Its correlation id and trace context.
    pub correlation: Option<Correlation>,
}

impl NewInstance {
    /// The `ExecutionStarted` event that begins its history.
    pub fn started_event(&self) -> HistoryEvent {
        HistoryEvent::new(
            self.created_at,
            EventKind::ExecutionStarted {
                name: self.name.clone(),
                version: self.version.clone(),
                input: self.input.clone(),
                parent: self.parent.clone(),
                features: kiln_core::features::CURRENT,
                labels: self.labels.clone(),
                correlation: self.correlation.clone(),
            },
        )
    }

    /// The work item of its first turn, run before it is stored (see
    /// [`Store::create_instance_with_first_turn`](crate::Store::create_instance_with_first_turn)):
    /// its `Pending` record and its `ExecutionStarted` message, which has no inbox row. No lease
    /// exists yet; the store checks none for a first turn.
    pub fn first_work_item(&self) -> OrchestrationWorkItem {
        let instance = InstanceRecord {
            instance_id: self.instance_id.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            execution: self.execution,
            status: RuntimeStatus::Pending,
            input: self.input.clone(),
            output: None,
            failure: None,
            custom_status: None,
            created_at: self.created_at,
            updated_at: self.created_at,
            waiting_on: Vec::new(),
            parent: self.parent.clone(),
            history_len: 0,
            labels: self.labels.clone(),
            correlation: self.correlation.clone(),
        };
        let started =
            InboxMessage { id: UNSTORED_MESSAGE_ID, execution: Some(self.execution), event: self.started_event() };
        let lease = Lease { token: 0, expires_at: self.created_at };
        OrchestrationWorkItem { instance, messages: vec![started], lease, dequeue_count: 1 }
    }
}

/// The stored state of an instance: what status queries show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The instance id.
    pub instance_id: String,
    /// Orchestration name.
    pub name: String,
    /// Orchestration version.
    pub version: String,
    /// Execution (generation) number: a creation starts at a random one (see
    /// [`NewInstance::execution`]); it grows by one with continue-as-new and with restarts of the
    /// same id.
    pub execution: u64,
    /// Runtime status.
    pub status: RuntimeStatus,
    /// Input of the current execution.
    pub input: Payload,
    /// Output, when completed; the reason text (as a JSON string) when terminated.
    pub output: Option<Payload>,
    /// Why it failed, when failed.
    pub failure: Option<FailureDetails>,
    /// The last custom status the orchestration set.
    pub custom_status: Option<Payload>,
    /// When the instance was created.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// What it waits for (empty when terminal or not started).
    pub waiting_on: Vec<WaitingOn>,
    /// Set for sub-orchestrations.
    pub parent: Option<ParentInstance>,
    /// Number of events in the current execution's history.
    pub history_len: u64,
    /// The business ids its starter attached.
    pub labels: Labels,
    /// Its correlation id and trace context (none for instances created before Kiln kept them).
    pub correlation: Option<Correlation>,
}

/// A message waiting in an instance's inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxMessage {
    /// Store-assigned id, used to mark the message consumed; never reused.
    pub id: i64,
    /// The execution it is addressed to; `None` for messages to whichever execution is current.
    pub execution: Option<u64>,
    /// The event to append to history.
    pub event: HistoryEvent,
}

/// A message a turn sends: to itself (timers), to a child, to its parent or to another instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Target instance; a message to an instance that does not exist is dropped.
    pub instance_id: String,
    /// The execution it is addressed to, if it must not reach a later one.
    pub execution: Option<u64>,
    /// The event.
    pub event: HistoryEvent,
    /// Not delivered before this time (durable timers).
    pub visible_at: Option<Timestamp>,
}

/// An exclusive, time-limited claim on a work item. The token fences out a holder whose lease
/// expired: its commit is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Fencing token, unique per claim.
    pub token: u64,
    /// When the claim lapses unless renewed or released.
    pub expires_at: Timestamp,
}

/// An orchestration turn's work: the instance and the messages it should process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrchestrationWorkItem {
    /// The instance's current state.
    pub instance: InstanceRecord,
    /// Visible messages, in arrival order.
    pub messages: Vec<InboxMessage>,
    /// The claim on this instance.
    pub lease: Lease,
    /// How many times this instance's work has been claimed without a commit, including now.
    pub dequeue_count: u32,
}

/// An activity to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewActivity {
    /// The orchestration instance that scheduled it.
    pub instance_id: String,
    /// That instance's execution.
    pub execution: u64,
    /// The `TaskScheduled` step.
    pub step: u64,
    /// Activity name.
    pub name: String,
    /// Activity input.
    pub input: Payload,
    /// Attempt number under the retry policy.
    pub attempt: u32,
    /// The call's timeouts, with the time its first attempt was scheduled.
    pub timeouts: ActivityTimeouts,
    /// The last heartbeat details: the previous attempt's when scheduled, then this attempt's
    /// own once it saves some ([`Store::renew_activity_lease`](crate::Store::renew_activity_lease)),
    /// so that a delivery after a lost worker resumes from them.
    pub heartbeat: Option<Payload>,
    /// Its instance's name, labels and correlation (none for activities scheduled before Kiln
    /// kept them); shared, as every copy of a claimed activity carries the same.
    pub context: Option<std::sync::Arc<InstanceContext>>,
}

/// A claimed activity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityWorkItem {
    /// Store-assigned id.
    pub id: i64,
    /// What to run.
    pub activity: NewActivity,
    /// The claim.
    pub lease: Lease,
    /// How many times it has been claimed, including now.
    pub dequeue_count: u32,
}

/// The version of a child created on a worker where its orchestration is not registered: the
/// first worker that runs it takes its own default version, and that turn's commit pins it
/// ([`TurnCommit::version`]). No orchestration may be registered under it.
pub const UNPINNED_VERSION: &str = "*";

/// Work a node cannot run because it has not registered it (a rolling deploy): see
/// [`Store::skip_in_claims`](crate::Store::skip_in_claims).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Unrunnable {
    /// Instances of this orchestration name and pinned version ([`UNPINNED_VERSION`] for
    /// unpinned children of a name with no default version here).
    Orchestration {
        /// Orchestration name.
        name: String,
        /// Its version as stored with the instance.
        version: String,
    },
    /// Activities of this name.
    Activity {
        /// Activity name.
        name: String,
    },
}

/// The id of a message handed to a turn without being stored (an activity result taken
/// directly, see [`Store::claim_with_activity_result`](crate::Store::claim_with_activity_result)):
/// no inbox row has it, as stores number messages from 1.
pub const UNSTORED_MESSAGE_ID: i64 = 0;

/// An activity a turn finishes (its row goes with the turn's commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinishedActivity {
    /// Store-assigned id.
    pub id: i64,
    /// The claim it ran under; the commit fails with `LeaseLost` if it lapsed.
    pub lease: Lease,
}

/// How a turn changes history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryUpdate {
    /// Append events to the current execution's history.
    Append(Vec<HistoryEvent>),
    /// Replace the whole history (continue-as-new, rewind).
    Replace(Vec<HistoryEvent>),
}

impl HistoryUpdate {
    /// The events the turn writes.
    pub fn events(&self) -> &[HistoryEvent] {
        match self {
            HistoryUpdate::Append(events) | HistoryUpdate::Replace(events) => events,
        }
    }

    /// Whether they replace the history rather than extend it.
    pub fn replaces(&self) -> bool {
        matches!(self, HistoryUpdate::Replace(_))
    }
}

/// A sub-orchestration to create as part of a turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSubOrchestration {
    /// The child. If its id is held by an instance that is not finished, the store instead sends
    /// the parent a `SubOrchestrationInstanceFailed` with error type `AlreadyExists`.
    pub instance: NewInstance,
}

/// Everything one orchestration turn changes, committed atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCommit {
    /// The instance.
    pub instance_id: String,
    /// The lease the turn ran under; the commit fails if it was lost.
    pub lease: Lease,
    /// Inbox messages the turn consumed.
    pub consumed: Vec<i64>,
    /// History changes.
    pub history: HistoryUpdate,
    /// Execution number after the turn.
    pub execution: u64,
    /// Orchestration version after the turn: a child created [`UNPINNED_VERSION`] (its
    /// orchestration was not registered where its parent ran) takes the version its first turn
    /// ran; every other turn keeps the instance's.
    pub version: String,
    /// Input of the execution after the turn.
    pub input: Payload,
    /// Status after the turn.
    pub status: RuntimeStatus,
    /// Output after the turn.
    pub output: Option<Payload>,
    /// Failure after the turn.
    pub failure: Option<FailureDetails>,
    /// Custom status after the turn.
    pub custom_status: Option<Payload>,
    /// What the instance waits for after the turn.
    pub waiting_on: Vec<WaitingOn>,
    /// Activities to dispatch.
    pub activities: Vec<NewActivity>,
    /// Messages to deliver (timers, events, parent notifications, cascading terminations).
    pub messages: Vec<OutgoingMessage>,
    /// Children to create.
    pub sub_orchestrations: Vec<NewSubOrchestration>,
    /// Activities whose results this turn took straight from the activity (see
    /// [`Store::claim_with_activity_result`](crate::Store::claim_with_activity_result)): deleted
    /// with the turn, under their leases.
    pub finished_activities: Vec<FinishedActivity>,
    /// When the turn ran.
    pub now: Timestamp,
}

/// Filters and paging for listing instances. Results are ordered by `(created_at, instance_id)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceQuery {
    /// Only these statuses (empty = any).
    pub statuses: Vec<RuntimeStatus>,
    /// Only this orchestration name.
    pub name: Option<String>,
    /// Created at or after.
    pub created_from: Option<Timestamp>,
    /// Created at or before.
    pub created_to: Option<Timestamp>,
    /// Instance id starts with.
    pub instance_id_prefix: Option<String>,
    /// Carries every one of these labels.
    pub labels: Vec<LabelFilter>,
    /// Page size (at least 1).
    pub page_size: usize,
    /// Continue after this position (from the previous page).
    pub after: Option<PageCursor>,
}

/// A keyset paging position: the last `(created_at, instance_id)` of a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    /// Creation time of the last instance returned.
    pub created_at: Timestamp,
    /// Id of the last instance returned.
    pub instance_id: String,
}

impl PageCursor {
    /// An opaque text form for continuation tokens.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.created_at.millis(), self.instance_id)
    }

    /// Parses [`PageCursor::encode`]'s output.
    pub fn decode(token: &str) -> Option<PageCursor> {
        let (millis, id) = token.split_once(':')?;
        Some(PageCursor { created_at: Timestamp(millis.parse().ok()?), instance_id: id.to_owned() })
    }
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstancePage {
    /// The instances.
    pub instances: Vec<InstanceRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<PageCursor>,
}

/// Which finished instances to purge. A bulk purge takes only terminal instances with no message
/// waiting (a rewind on its way, say; a timer not due yet does not count), and spares such a
/// sub-orchestration too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeFilter {
    /// Created at or after.
    pub created_from: Option<Timestamp>,
    /// Created at or before.
    pub created_to: Option<Timestamp>,
    /// Only these (terminal) statuses; empty = every terminal status.
    pub statuses: Vec<RuntimeStatus>,
    /// Only instances of this orchestration.
    pub name: Option<String>,
    /// No instance of these orchestrations (a retention default leaves out the names that have
    /// a policy of their own).
    pub excluded_names: Vec<String>,
    /// Finished (last changed) at or before.
    pub finished_before: Option<Timestamp>,
    /// Only instances after this position in `(created_at, instance_id)` order: where the last
    /// batch of a walk ended ([`PurgedBatch::last`]), so that what it left (a tree with a
    /// message waiting) is not walked again.
    pub after: Option<PageCursor>,
}

impl PurgeFilter {
    /// The latest creation time an instance matching the filter can have: it was created
    /// before it finished, so `finished_before` bounds it too (and lets a store walk its
    /// creation index no further).
    pub fn created_until(&self) -> Option<Timestamp> {
        match (self.created_to, self.finished_before) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What one [`crate::Store::purge_batch`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgedBatch {
    /// Instances the filter selected (at most the batch size: fewer means none is left).
    pub selected: usize,
    /// Instances deleted: those selected and their finished sub-orchestrations.
    pub deleted: u64,
    /// The position of the last instance selected (selected in `(created_at, instance_id)`
    /// order): the next batch's [`PurgeFilter::after`].
    pub last: Option<PageCursor>,
}

/// An instance in a few words: what dry runs list (see [`crate::Store::preview_purge`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSummary {
    /// The instance.
    pub instance_id: String,
    /// Its orchestration.
    pub name: String,
    /// Its status.
    pub status: RuntimeStatus,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed (for a finished instance: when it finished).
    pub updated_at: Timestamp,
}

/// Most instances a dry run counts; beyond it, it says "at least".
pub const PREVIEW_COUNT_LIMIT: u64 = 10_000;

/// What a purge with a filter would delete, without deleting anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgePreview {
    /// How many instances the filter selects now, up to [`PREVIEW_COUNT_LIMIT`] (their finished
    /// sub-orchestrations go with them).
    pub matched: u64,
    /// Whether `matched` is the whole count (false: there are more than it).
    pub complete: bool,
    /// The first of them, oldest created first.
    pub first: Vec<InstanceSummary>,
}

/// An `Idempotency-Key` recorded with the instance it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The client's key.
    pub key: String,
    /// A digest of what the request asked for; a reuse with another digest is refused.
    pub fingerprint: String,
    /// Until when the key is remembered.
    pub expires_at: Timestamp,
}

/// What an idempotent start did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdempotentStart {
    /// The instance was created and the key recorded.
    Created,
    /// The key was already used for the same request: this is the instance it started.
    Existing {
        /// The instance the key started.
        instance_id: String,
    },
}
