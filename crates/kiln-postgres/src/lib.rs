//! Kiln's multi-node store: PostgreSQL.
//!
//! Any number of stateless Kiln nodes share one database. Work is claimed with
//! `FOR UPDATE SKIP LOCKED` under a lease that carries a fencing token: a node whose lease
//! expired cannot commit. A turn commits in one transaction exactly as on SQLite. `NOTIFY` on
//! every commit wakes idle nodes at once (`LISTEN` on a dedicated connection), with a slow
//! fallback poll for safety. Migrations are embedded and serialized with an advisory lock.
//! Connections use TLS as the URL's `sslmode` asks (`prefer` by default, as libpq).
//!
//! # Layout
//! - [`store`] — connecting and the `Store` implementation.
//! - `listen`: the `LISTEN` task and local wake-ups.
//! - [`schema`] — migrations.
//! - `tx`: statements run inside a store transaction (including a whole turn).
//! - `local`: activities a node's turns claimed for that node.
//! - `looks`: which idle worker looks in the tables without a notification.
//! - [`queries`] — the claim and purge-batch statements, public so their plans can be checked.
//! - `pool`: connection pools, timeouts on a lost server or network, usable schema names;
//!   `tls`: `sslmode` and `sslrootcert` as libpq reads them, on rustls.
//! - `cached`: statements through the per-connection statement cache.
//! - `rows`: row encoding.

mod cached;
mod listen;
mod local;
mod looks;
mod pool;
#[doc(hidden)]
pub mod queries;
mod rows;
pub mod schema;
mod skipped;
pub mod store;
mod tls;
mod tx;

pub use store::{OpenError, PostgresOptions, PostgresStore};
