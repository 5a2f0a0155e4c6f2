//! Kiln's embedded store: SQLite in WAL mode, durable on commit by default.
//!
//! One dedicated writer thread owns the write connection and **group-commits**: every change
//! that queued while the previous commit was being synced goes into the next transaction, so
//! many turns share one fsync. Readers use their own connections. Because one process owns the
//! file (a lock file enforces it), dispatch state — which instances have messages, queued
//! activities, leases and due timers — is kept in memory in front of the tables and rebuilt from
//! them at start, so workers are woken directly instead of polling the database.
//!
//! # Layout
//! - [`store`]: opening, recovery and the `Store` implementation.
//! - `writer`: the writer thread and its group commit (batches, transactions, leases, effects).
//! - `ops`: the SQL of each write and the in-memory effects it leaves for the writer to apply.
//! - `checkpoint`: WAL checkpoints on their own thread.
//! - `queue`: in-memory dispatch state.
//! - `records`: the latest records of recently written instances, for status reads.
//! - `reads`: reader connections and queries.
//! - [`schema`]: embedded migrations.
//! - `codec`: row encoding.

mod checkpoint;
mod codec;
mod ops;
mod queue;
mod reads;
mod records;
pub mod schema;
mod shared;
pub mod store;
mod writer;

pub use store::{OpenError, SqliteOptions, SqliteStore, Synchronous};
