//! Connections: the pools a node opens, the bounds on how long a lost server or network can
//! hold a request, and which schema names are usable.

use crate::store::OpenError;
use crate::tls::KilnTls;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::time::Duration;

/// Longest a request waits for a pooled connection, or for a new one to be opened, before it
/// is answered "unavailable" (`503`) instead of hanging.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long sent data may stay unacknowledged before the kernel gives up on a connection, and
/// how long a connection may stay idle before keepalive probes check it: a network partition
/// surfaces as an error within seconds instead of a request hanging for the TCP retry time.
const DEAD_CONNECTION: Duration = Duration::from_secs(10);

pub(crate) fn build_pool(config: tokio_postgres::Config, tls: KilnTls, size: usize) -> Result<Pool, OpenError> {
    let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .build()
        .map_err(|e| OpenError::Config(e.to_string()))
}

/// Bounds how long a lost server or network can hold a connection, where the URL sets no bound
/// of its own (`connect_timeout`, `tcp_user_timeout`, `keepalives_idle`).
pub(crate) fn bound_waits(config: &mut tokio_postgres::Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(POOL_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(DEAD_CONNECTION);
    }
    // tokio-postgres's default idle time before keepalive probes is two hours.
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives(true).keepalives_idle(DEAD_CONNECTION);
    }
}

/// Longest schema name: the notification channel `kiln_<schema>` must fit PostgreSQL's 63-byte
/// identifiers (`pg_notify` refuses a longer channel while `LISTEN` truncates it silently).
const MAX_SCHEMA_NAME: usize = 63 - "kiln_".len();

/// Schema names are used unquoted (in `search_path`, the channel), where PostgreSQL folds case:
/// only names that mean the same quoted and unquoted are accepted.
pub(crate) fn check_schema_name(schema: &str) -> Result<(), OpenError> {
    let starts_well = schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
    let plain = schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !starts_well || !plain || schema.len() > MAX_SCHEMA_NAME {
        return Err(OpenError::Config(format!(
            "schema name '{schema}' must be 1–{MAX_SCHEMA_NAME} lower-case letters, digits and _, not starting with a digit"
        )));
    }
    Ok(())
}
