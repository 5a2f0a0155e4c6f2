#!/usr/bin/env bash
# Measures what the PostgreSQL store's claims and purge batches cost when the tables are large
# but almost nothing is ready: ROWS instances asleep on a timer a day away (one inbox message
# each), ROWS leased activities, and five ready instances, activities and finished instances.
# Prints EXPLAIN (ANALYZE, BUFFERS) of each statement of crates/kiln-postgres/src/queries.rs
# (copied here with `now` inlined; tests/claim_plans.rs checks the real ones), with a custom and
# with a generic plan (the store's statements are prepared, so PostgreSQL may switch to the
# generic one). Claims run in a transaction that is rolled back: nothing is claimed.
#
#   scripts/pg-claim-cost.sh [ROWS]        # default 1000000; KILN_TEST_DATABASE_URL or the test DB
#
# The schema (kiln_claim_cost, dropped first and at the end unless KEEP=1) is created by the
# store's own migrations, through an ignored test in crates/kiln-postgres/tests/claim_plans.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
URL=${KILN_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
ROWS=${1:-1000000}
SCHEMA=kiln_claim_cost
psql "$URL" -q -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE"
KILN_TEST_DATABASE_URL=$URL KILN_SCRATCH_SCHEMA=$SCHEMA \
    cargo test -q -p kiln-postgres --test claim_plans -- --ignored --exact scratch_schema >/dev/null
psql "$URL" -q -v ON_ERROR_STOP=1 -v rows="$ROWS" <<SQL
SET search_path = $SCHEMA;
SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now \gset
SELECT :now + 86400000 AS later, :now + 30000 AS lease \gset
INSERT INTO instances (instance_id, name, version, execution, status, input, created_at, updated_at)
  SELECT 'sleeper-' || g, 'orch', '', 0, 0, 'null', :now - g, :now - g FROM generate_series(1, :rows) g;
INSERT INTO inbox (instance_id, execution, visible_at, control, event)
  SELECT 'sleeper-' || g, 0, :later, false, '{}' FROM generate_series(1, :rows) g;
INSERT INTO activities (instance_id, execution, step, name, input, attempt, lock_token, locked_until)
  SELECT 'sleeper-' || g, 0, 0, 'work', 'null', 1, g, :later FROM generate_series(1, :rows) g;
INSERT INTO instances (instance_id, name, version, execution, status, input, created_at, updated_at)
  SELECT 'ready-' || g, 'orch', '', 0, 6, 'null', :now, :now FROM generate_series(1, 5) g;
INSERT INTO inbox (instance_id, execution, visible_at, control, event)
  SELECT 'ready-' || g, 0, NULL, false, '{}' FROM generate_series(1, 5) g;
INSERT INTO activities (instance_id, execution, step, name, input, attempt)
  SELECT 'ready-' || g, 0, 0, 'work', 'null', 1 FROM generate_series(1, 5) g;
INSERT INTO instances (instance_id, name, version, execution, status, input, created_at, updated_at)
  SELECT 'finished-' || g, 'orch', '', 0, 1, 'null', :now - 1000, :now FROM generate_series(1, 5) g;
VACUUM ANALYZE;

PREPARE claim_instance(bigint, bigint) AS
  WITH immediate AS (
      SELECT m.id, i.instance_id FROM inbox m JOIN instances i ON i.instance_id = m.instance_id
      WHERE m.visible_at IS NULL AND (i.locked_until IS NULL OR i.locked_until < \$1)
        AND (i.status <> 7 OR m.control)
      ORDER BY m.id LIMIT 1 FOR NO KEY UPDATE OF i SKIP LOCKED),
    due AS (
      SELECT m.id, i.instance_id FROM inbox m JOIN instances i ON i.instance_id = m.instance_id
      WHERE m.visible_at <= \$1 AND (i.locked_until IS NULL OR i.locked_until < \$1)
        AND (i.status <> 7 OR m.control)
      ORDER BY m.visible_at LIMIT 1 FOR NO KEY UPDATE OF i SKIP LOCKED),
    candidate AS (SELECT instance_id FROM (SELECT * FROM immediate UNION ALL SELECT * FROM due) c
      ORDER BY id LIMIT 1)
  UPDATE instances SET lock_token = (((random() * 2147483647)::bigint << 32) | (nextval('lease_tokens') & 4294967295)), locked_until = \$2,
    dequeue_count = instances.dequeue_count + 1
  FROM candidate WHERE instances.instance_id = candidate.instance_id
  RETURNING instances.instance_id;
PREPARE claim_activities(bigint, bigint, bigint) AS
  WITH unleased AS (SELECT id FROM activities
      WHERE lock_token IS NULL AND (visible_at IS NULL OR visible_at <= \$1)
      ORDER BY id LIMIT \$3 FOR UPDATE SKIP LOCKED),
    lapsed AS (SELECT id FROM activities
      WHERE lock_token IS NOT NULL AND locked_until < \$1 AND (visible_at IS NULL OR visible_at <= \$1)
      ORDER BY locked_until LIMIT \$3 FOR UPDATE SKIP LOCKED)
  UPDATE activities SET lock_token = (((random() * 2147483647)::bigint << 32) | (nextval('lease_tokens') & 4294967295)), locked_until = \$2,
    dequeue_count = dequeue_count + 1
  WHERE id IN (SELECT id FROM (SELECT id FROM unleased UNION ALL SELECT id FROM lapsed) c ORDER BY id LIMIT \$3)
  RETURNING id;
PREPARE purge_batch(bigint, bigint, bigint) AS
  SELECT instance_id FROM instances c
  WHERE status IN (1, 2, 3, 4, 5) AND created_at >= \$1 AND created_at <= \$2
    AND NOT EXISTS (SELECT 1 FROM instances p WHERE p.instance_id = c.parent_instance_id)
  LIMIT \$3 FOR UPDATE OF c SKIP LOCKED;

\echo '== claim_instance (custom plan)'
SET plan_cache_mode = force_custom_plan;
\o /dev/null
BEGIN; EXPLAIN ANALYZE EXECUTE claim_instance(:now, :lease); ROLLBACK;
\o
BEGIN; EXPLAIN (ANALYZE, BUFFERS) EXECUTE claim_instance(:now, :lease); ROLLBACK;
\echo '== claim_instance (generic plan)'
SET plan_cache_mode = force_generic_plan;
\o /dev/null
BEGIN; EXPLAIN ANALYZE EXECUTE claim_instance(:now, :lease); ROLLBACK;
\o
BEGIN; EXPLAIN (ANALYZE, BUFFERS) EXECUTE claim_instance(:now, :lease); ROLLBACK;
\echo '== claim_activities (custom plan)'
SET plan_cache_mode = force_custom_plan;
\o /dev/null
BEGIN; EXPLAIN ANALYZE EXECUTE claim_activities(:now, :lease, 16); ROLLBACK;
\o
BEGIN; EXPLAIN (ANALYZE, BUFFERS) EXECUTE claim_activities(:now, :lease, 16); ROLLBACK;
\echo '== claim_activities (generic plan)'
SET plan_cache_mode = force_generic_plan;
\o /dev/null
BEGIN; EXPLAIN ANALYZE EXECUTE claim_activities(:now, :lease, 16); ROLLBACK;
\o
BEGIN; EXPLAIN (ANALYZE, BUFFERS) EXECUTE claim_activities(:now, :lease, 16); ROLLBACK;
\echo '== purge_batch (custom plan)'
SET plan_cache_mode = force_custom_plan;
\o /dev/null
BEGIN; EXPLAIN ANALYZE EXECUTE purge_batch(-9223372036854775808, :now, 500); ROLLBACK;
\o
BEGIN; EXPLAIN (ANALYZE, BUFFERS) EXECUTE purge_batch(-9223372036854775808, :now, 500); ROLLBACK;
\echo '== purge_batch (generic plan)'
SET plan_cache_mode = force_generic_plan;
\o /dev/null
BEGIN; EXPLAIN ANALYZE EXECUTE purge_batch(-9223372036854775808, :now, 500); ROLLBACK;
\o
BEGIN; EXPLAIN (ANALYZE, BUFFERS) EXECUTE purge_batch(-9223372036854775808, :now, 500); ROLLBACK;
SQL
if [ "${KEEP:-0}" != 1 ]; then psql "$URL" -q -c "DROP SCHEMA $SCHEMA CASCADE"; fi
