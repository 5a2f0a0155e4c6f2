//! The store conformance suite against PostgreSQL, each test in a schema of its own.
//!
//! Uses `KILN_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`). Without a
//! reachable server the tests report that they were skipped and pass, unless
//! `KILN_REQUIRE_POSTGRES=1` (as in CI) makes PostgreSQL mandatory.

mod common;

kiln_store::conformance_tests!(common::fresh_store);
