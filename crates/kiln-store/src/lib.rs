//! The storage boundary of Kiln.
//!
//! The runtime persists everything through the [`Store`] trait: instance creation, the atomic
//! commit of an orchestration turn, leased work items for turns and activities, queries and
//! purges. Backends (`kiln-sqlite`, later `kiln-postgres`) implement it, and the
//! [`conformance`] suite (feature `conformance`) holds the tests every backend must pass.
//!
//! # Layout
//! - [`store`]: the trait and its contract.
//! - [`records`]: the records it reads and writes.
//! - [`watch`]: per-instance change notifications.
//! - [`error`]: store errors.

pub mod error;
pub mod records;
pub mod store;
pub mod watch;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{SchemaTooNew, StoreError};
pub use records::{
    ActivityWorkItem, FinishedActivity, HistoryUpdate, IdempotencyKey, IdempotentStart, InboxMessage, InstancePage,
    InstanceQuery, InstanceRecord, InstanceSummary, Lease, NewActivity, NewInstance, NewSubOrchestration,
    OrchestrationWorkItem, OutgoingMessage, PREVIEW_COUNT_LIMIT, PageCursor, PurgeFilter, PurgePreview, PurgedBatch,
    TurnCommit, UNPINNED_VERSION, UNSTORED_MESSAGE_ID, Unrunnable,
};
pub use store::{PURGE_BATCH, Store, StoreResult};
pub use watch::{StatusSubscription, StatusWatchers};
