//! Store errors.

use kiln_core::RuntimeStatus;

/// What can go wrong in a store call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No instance has this id.
    #[error("instance '{0}' not found")]
    NotFound(String),
    /// The id is held by an instance that has not finished.
    #[error("an instance with id '{0}' already exists and is {1}")]
    AlreadyExists(String, RuntimeStatus),
    /// The work item's lease expired or was taken over; nothing was committed.
    #[error("the lease on '{0}' was lost (expired or taken over); nothing was committed")]
    LeaseLost(String),
    /// Only finished instances can be purged.
    #[error("instance '{0}' is {1}; only finished instances can be purged")]
    NotTerminal(String, RuntimeStatus),
    /// The store cannot be reached or is shutting down.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The idempotency key was already used for a different request.
    #[error("the Idempotency-Key '{0}' was already used with a different request")]
    IdempotencyKeyReused(String),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The backend reported an error.
    #[error("store backend error: {0}")]
    Backend(String),
}

/// The database was written by a newer Kiln than this one: every backend refuses to start on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the database schema is version {found}, newer than this Kiln supports ({supported}); upgrade Kiln")]
pub struct SchemaTooNew {
    /// Version found in the database.
    pub found: i64,
    /// Newest version this build knows.
    pub supported: i64,
}
