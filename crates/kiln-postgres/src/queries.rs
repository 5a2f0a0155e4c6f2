//! The statements whose cost must not grow with the tables: the instance claim, the activity
//! claim and purge's batch selection. They are public so that tests (and
//! `scripts/pg-claim-cost.sh`) can `EXPLAIN` exactly what the store runs; the store is their
//! only other user.

use crate::rows;
use kiln_core::RuntimeStatus;
use std::sync::LazyLock;

/// A new lease token, as SQL. Tokens are read in sessions with asynchronous commit, so after a
/// PostgreSQL crash the sequence may hand out again values whose claims were lost with the
/// crash while their holders, still running, kept them; the high half, random per call from a
/// generator each new server process seeds afresh, keeps such a token from matching the new
/// lease on the same row (a holder's later commit would otherwise pass for the new holder's).
/// The low half, from the sequence, keeps tokens distinct between crashes.
pub const NEW_LEASE_TOKEN: &str = "(((random() * 2147483647)::bigint << 32) | (nextval('lease_tokens') & 4294967295))";

/// Leases an instance that has a message to run now.
///
/// `$1` now (ms), `$2` the lease's expiry. Returns `INSTANCE_COLUMNS`, the lease token, its
/// expiry and the claim count.
///
/// Two candidates, each from an index that holds only what may be ready: the oldest message
/// sent for now (`inbox_immediate`, by id) and the timer due longest (`inbox_by_visibility`,
/// a range that ends at `now`); the older message of the two wins, so neither kind starves.
/// Timers a day away are never read. Each candidate skips instances that are leased,
/// suspended (unless the message is a control one) or locked by another claim; the loser's
/// lock ends with the statement.
pub static CLAIM_INSTANCE: LazyLock<String> = LazyLock::new(|| claim_instance(""));

/// [`CLAIM_INSTANCE`] for a node that cannot run some orchestration versions: `$3` and `$4`
/// are their names and versions, pairwise. Their instances are left to other nodes, except for
/// what needs no code: a terminate of an unfinished instance, and a finished instance's
/// messages — unless it failed and a rewind waits in its inbox (the rewound code is to get
/// whatever came after the rewind).
///
/// The event's kind is matched in its JSON text (a `"` inside a JSON string is escaped, so only
/// the tag itself matches): parsing it as `jsonb` would fail on a `\u0000` in a reason.
pub static CLAIM_INSTANCE_SKIPPING: LazyLock<String> = LazyLock::new(|| {
    let terminal = RuntimeStatus::ALL.iter().filter(|s| s.is_terminal()).map(|s| s.code().to_string());
    claim_instance(&format!(
        " AND ((i.status NOT IN ({terminal}) AND m.control AND m.execution IS NULL \
             AND m.event LIKE '%\"EventType\":\"ExecutionTerminated\"%') \
           OR (i.status IN ({terminal}) AND NOT (i.status = {failed} AND EXISTS (SELECT 1 FROM inbox r \
             WHERE r.instance_id = i.instance_id AND r.event LIKE '%\"EventType\":\"ExecutionRewound\"%'))) \
           OR (i.name, i.version) NOT IN (SELECT * FROM unnest($3::text[], $4::text[])))",
        terminal = terminal.collect::<Vec<_>>().join(", "),
        failed = RuntimeStatus::Failed.code(),
    ))
});

fn claim_instance(skipping: &str) -> String {
    let candidate = |order: &str, visible: &str| {
        format!(
            "SELECT m.id, i.instance_id FROM inbox m JOIN instances i ON i.instance_id = m.instance_id \
             WHERE {visible} AND (i.locked_until IS NULL OR i.locked_until < $1) \
               AND (i.status <> {suspended} OR m.control){skipping} \
             ORDER BY {order} LIMIT 1 FOR NO KEY UPDATE OF i SKIP LOCKED",
            suspended = RuntimeStatus::Suspended.code(),
        )
    };
    format!(
        "WITH immediate AS ({immediate}), due AS ({due}), \
           candidate AS (SELECT instance_id FROM (SELECT * FROM immediate UNION ALL SELECT * FROM due) c \
             ORDER BY id LIMIT 1) \
         UPDATE instances SET lock_token = {NEW_LEASE_TOKEN}, locked_until = $2, \
           dequeue_count = instances.dequeue_count + 1 \
         FROM candidate WHERE instances.instance_id = candidate.instance_id \
         RETURNING {columns}, instances.lock_token, instances.locked_until, instances.dequeue_count",
        immediate = candidate("m.id", "m.visible_at IS NULL"),
        due = candidate("m.visible_at", "m.visible_at <= $1"),
        columns = crate::rows::QUALIFIED_INSTANCE_COLUMNS,
    )
}

/// Leases up to `$3` activities that may run at `$1` (now, ms), until `$2`.
///
/// The candidates come from two partial indexes: activities nobody holds
/// (`activities_unleased`, by id; those waiting out a retry delay are skipped there) and leases
/// that lapsed (`activities_by_lease_expiry`, a range that ends at `now`). Leased activities
/// are never read. The oldest `$3` of both are taken; the others' locks end with the statement.
pub static CLAIM_ACTIVITIES: LazyLock<String> = LazyLock::new(|| claim_activities(""));

/// [`CLAIM_ACTIVITIES`] for a node that cannot run some activities: `$4` holds their names.
pub static CLAIM_ACTIVITIES_SKIPPING: LazyLock<String> =
    LazyLock::new(|| claim_activities(" AND name <> ALL($4::text[])"));

fn claim_activities(skipping: &str) -> String {
    format!(
        "WITH unleased AS (SELECT id FROM activities \
       WHERE lock_token IS NULL AND (visible_at IS NULL OR visible_at <= $1){skipping} \
       ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED), \
     lapsed AS (SELECT id FROM activities \
       WHERE lock_token IS NOT NULL AND locked_until < $1 AND (visible_at IS NULL OR visible_at <= $1){skipping} \
       ORDER BY locked_until LIMIT $3 FOR UPDATE SKIP LOCKED) \
     UPDATE activities SET lock_token = {NEW_LEASE_TOKEN}, locked_until = $2, \
       dequeue_count = dequeue_count + 1 \
     WHERE id IN (SELECT id FROM (SELECT id FROM unleased UNION ALL SELECT id FROM lapsed) c ORDER BY id LIMIT $3) \
     RETURNING {}",
        rows::ACTIVITY_COLUMNS
    )
}

/// The instances a purge selects, as `FROM instances c WHERE …`: statuses `statuses` (terminal
/// codes), created in `[$1, $2]`, finished (last changed) by `$3`, of orchestration `$4` (any
/// when NULL) and none of `$5`, with no message visible at `$6` (a rewind on its way; a timer
/// due later does not keep a finished instance), after `($7, $8)` in `(created_at,
/// instance_id)` order (where the last batch of a walk ended), and either
/// top-level or orphaned — a sub-orchestration whose parent is gone (it was still running when
/// its parent was purged) has nobody left to purge it with. (A top-level instance's NULL parent
/// matches no row either: one anti-join, probing `instances_pkey`.)
///
/// The statuses are written into the statement, not passed: a generic plan that does not know
/// them would walk `instances_by_created` through every running instance instead of reading
/// the finished ones from `instances_by_status`.
pub fn purgeable(statuses: &[i16]) -> String {
    let statuses = statuses.iter().map(i16::to_string).collect::<Vec<_>>().join(", ");
    format!(
        "FROM instances c \
         WHERE status IN ({statuses}) AND created_at >= $1 AND created_at <= $2 AND updated_at <= $3 \
           AND ($4::text IS NULL OR name = $4::text) AND name <> ALL($5::text[]) \
           AND (created_at > $7 OR (created_at = $7 AND instance_id > $8)) \
           AND NOT EXISTS (SELECT 1 FROM inbox m WHERE m.instance_id = c.instance_id \
             AND (m.visible_at IS NULL OR m.visible_at <= $6)) \
           AND NOT EXISTS (SELECT 1 FROM instances p WHERE p.instance_id = c.parent_instance_id)"
    )
}

/// Locks up to `$9` instances for one purge batch, oldest created first: [`purgeable`] ones,
/// skipping those another transaction holds; returns their ids and creation times. (Whether a
/// message arrived since the statement's snapshot is checked again once they are locked: see
/// `purge_tx`.)
pub fn purge_batch_roots(statuses: &[i16]) -> String {
    format!(
        "SELECT instance_id, created_at {} ORDER BY created_at, instance_id LIMIT $9 FOR UPDATE OF c SKIP LOCKED",
        purgeable(statuses)
    )
}
