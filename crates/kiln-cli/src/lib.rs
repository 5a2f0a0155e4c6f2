//! The `kiln` command line as a library: [`App`] gives an application's own binary everything
//! the `kiln` binary has — `serve`, the client commands and `bench` — around its own
//! orchestrations and starters. The `kiln` binary is this `App` with the samples registered.
//!
//! # Layout
//! - `app`: [`App`] and its command-line grammar.
//! - `serve`: the runtime behind the public and loopback management listeners, until a signal.
//! - `config`: `serve`'s settings from `kiln.toml`, `KILN_*` and flags, validated;
//!   `starter_auth`: its `[starter_auth]` section (API keys, JWTs, rules per route).
//! - `logging`: the log format, with client-controlled values escaped.
//! - `listener`: the accept loop and its limits; `protocol_errors`: problem details for the
//!   answers hyper gives requests it cannot parse.
//! - `remote`: the client commands, against a running server's management API.
//! - `bench`: the load generator, and the workloads `serve --bench-workloads` adds.

mod app;
mod bench;
mod config;
mod listener;
mod logging;
mod protocol_errors;
mod remote;
mod serve;
mod starter_auth;

pub use app::App;
pub use logging::EscapedFields;
