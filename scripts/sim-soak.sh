#!/usr/bin/env bash
# Soak for the deterministic simulation (docs/architecture.md, "How we test: deterministic
# simulation"): thousands of seeds, release build. A failing seed prints the command that reruns
# it alone. Env: SEEDS (3000, on SQLite), PG_SEEDS (300; 0 skips PostgreSQL), FIRST (the first
# seed; random unless set, and printed), KILN_TEST_DATABASE_URL, and the workload switches
# KILN_SIM_REWIND, KILN_SIM_MIXED_VERSIONS and KILN_SIM_ORPHANS (1 in every seed, 0 in none).
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-3000}
PG_SEEDS=${PG_SEEDS:-300}
FIRST=${FIRST:-$(( (RANDOM << 15 | RANDOM) * 1000 ))}
echo "simulation soak: FIRST=$FIRST, $SEEDS SQLite seeds, $PG_SEEDS PostgreSQL seeds; $(git rev-parse --short HEAD)"
export KILN_SIM_FIRST_SEED=$FIRST
KILN_SIM_SEEDS=$SEEDS cargo test --release -p kiln --test simulation sqlite -- --nocapture 2>&1 \
  | grep -v '^seed [0-9]*: '
if [ "$PG_SEEDS" -gt 0 ]; then
  KILN_REQUIRE_POSTGRES=1 KILN_SIM_SEEDS=$PG_SEEDS cargo test --release -p kiln --test simulation postgres -- --nocapture 2>&1 \
    | grep -v '^seed [0-9]*: '
fi
