//! The statements whose cost must not grow with the tables: the instance claim, the activity
//! claim and purge's batch selection. They are public so that tests (and
//! `scripts/pg-claim-cost.sh`) can `EXPLAIN` exactly what the store runs; the store is their
//! only other user.

use kiln_core::RuntimeStatus;

/// Leases the instance of the oldest visible message that may run now.
///
/// `$1` now (ms), `$2` the lease's expiry. Returns `INSTANCE_COLUMNS`, the lease token, its
/// expiry and the claim count.
pub fn claim_instance() -> String {
    format!(
        "WITH candidate AS ( \
           SELECT i.instance_id FROM inbox m JOIN instances i ON i.instance_id = m.instance_id \
           WHERE (m.visible_at IS NULL OR m.visible_at <= $1) \
             AND (i.locked_until IS NULL OR i.locked_until < $1) \
             AND (i.status <> {suspended} OR m.control) \
           ORDER BY m.id LIMIT 1 FOR NO KEY UPDATE OF i SKIP LOCKED) \
         UPDATE instances SET lock_token = nextval('lease_tokens'), locked_until = $2, \
           dequeue_count = instances.dequeue_count + 1 \
         FROM candidate WHERE instances.instance_id = candidate.instance_id \
         RETURNING {columns}, instances.lock_token, instances.locked_until, instances.dequeue_count",
        suspended = RuntimeStatus::Suspended.code(),
        columns = crate::rows::QUALIFIED_INSTANCE_COLUMNS,
    )
}

/// Leases up to `$3` activities that nobody holds and that may run at `$1` (now, ms), until `$2`.
pub const CLAIM_ACTIVITIES: &str = "UPDATE activities SET lock_token = nextval('lease_tokens'), locked_until = $2, \
     dequeue_count = dequeue_count + 1 \
     WHERE id IN (SELECT id FROM activities \
       WHERE (locked_until IS NULL OR locked_until < $1) AND (visible_at IS NULL OR visible_at <= $1) \
       ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
     RETURNING id, instance_id, execution, step, name, input, attempt, dequeue_count, lock_token, locked_until";

/// Locks up to `$4` instances for one purge batch: statuses `$1` (terminal codes), created in
/// `[$2, $3]`, and either top-level or orphaned — a sub-orchestration whose parent is gone (it
/// was still running when its parent was purged) has nobody left to purge it with.
pub const PURGE_BATCH_ROOTS: &str = "SELECT instance_id FROM instances c \
     WHERE status = ANY($1) AND created_at >= $2 AND created_at <= $3 \
       AND (parent_instance_id IS NULL \
         OR NOT EXISTS (SELECT 1 FROM instances p WHERE p.instance_id = c.parent_instance_id)) \
     LIMIT $4 FOR UPDATE OF c SKIP LOCKED";
