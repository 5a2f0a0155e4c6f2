//! Statements through deadpool's per-connection statement cache: each runs in one round trip
//! (bind + execute) instead of two (parse + describe, then bind + execute), and is planned once
//! per connection. For fixed SQL only: dynamically built SQL (listing filters) is run uncached.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};

/// Parameters of a statement.
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs a query and returns its rows.
pub async fn query(client: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
    let statement = client.prepare_cached(sql).await?;
    client.query(&statement, params).await
}

/// Runs a query that returns at most one row.
pub async fn query_opt(client: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
    let statement = client.prepare_cached(sql).await?;
    client.query_opt(&statement, params).await
}

/// Runs a query that returns exactly one row.
pub async fn query_one(client: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Row, Error> {
    let statement = client.prepare_cached(sql).await?;
    client.query_one(&statement, params).await
}

/// Runs a statement and returns the number of rows it changed.
pub async fn execute(client: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64, Error> {
    let statement = client.prepare_cached(sql).await?;
    client.execute(&statement, params).await
}
