#!/usr/bin/env bash
# Runs every `kiln bench` row of docs/benchmarks.md (medians of RUNS runs; JSON in target/bench/),
# then, with PEERS=1, the Restate and DBOS harnesses from ../shared/peers so that all figures come
# from the same session. Env: RUNS (3), DATABASE_URL
# (postgres://postgres@127.0.0.1:5432/test?sslmode=disable: on loopback, TLS would measure
# encryption on both ends of one machine, not Kiln; the peers run without it too), PEERS (0: with
# 1, also the peers and the machine's ceilings, PostgreSQL's via pgbench).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
cargo build --release -p kiln-cli --quiet
kiln=target/release/kiln
out=target/bench
mkdir -p "$out"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%FT%TZ); $(git rev-parse --short HEAD)"
row() { local name=$1; shift; echo "== $name: kiln bench $*"; "$kiln" bench "$@" --json "$out/$name.json"; }
row hello-64          --workload hello --concurrency 64 --runs "$RUNS"
row hello-sequential  --workload hello --concurrency 1 --count 2000 --runs "$RUNS"
row seq5-64           --workload seq5 --concurrency 64 --runs "$RUNS"
row poll              --workload poll --concurrency 64 --runs "$RUNS"
row long              --workload long --count 10000 --runs 1
row fanout            --workload fanout --count 1000 --runs "$RUNS"
row idle              --workload idle --count 100000 --runs 1
row postgres-2-nodes  --workload hello --store postgres --database-url "$DATABASE_URL" --nodes 2 --count 3000 --runs "$RUNS"
if [ "${PEERS:-0}" = 1 ]; then
  peers=../shared/peers
  echo "== Restate";  bash "$peers/restate/run.sh" | grep '^RESULT' || true
  echo "== DBOS";     bash "$peers/dbos/run.sh" | grep '^RESULT' || true
  echo "== HTTP ceiling (axum hello-world under wrk)"; bash "$peers/limits/http_bench.sh" | grep -E 'Requests/sec|Latency ' || true
  echo "== SQLite ceiling"; python3 "$peers/limits/sqlite_bench.py" 3 | tail -6 || true
  if command -v pgbench >/dev/null; then
    # PostgreSQL's own ceiling here: TPC-B-like write transactions (-N: 5 statements, one
    # durable commit) and single-statement reads (-S), on a throwaway database.
    echo "== PostgreSQL ceiling (pgbench)"
    # The server part of the URL (no database, no query), and the same TLS setting as Kiln's rows.
    base=${DATABASE_URL%%\?*}
    pg_url=${base%/*}
    query=""
    [ "$base" != "$DATABASE_URL" ] && query="?${DATABASE_URL#*\?}"
    scratch=kiln_pgbench_ceiling
    psql "$pg_url/postgres$query" -qc "DROP DATABASE IF EXISTS $scratch" -c "CREATE DATABASE $scratch"
    pgbench -q -i -s 10 "$pg_url/$scratch$query" >/dev/null 2>&1
    for mode in -N -S; do
      echo "pgbench $mode -c 16 -j 2 -T 10: $(pgbench -M prepared $mode -c 16 -j 2 -T 10 "$pg_url/$scratch$query" 2>/dev/null | grep -E '^tps')"
    done
    psql "$pg_url/postgres$query" -qc "DROP DATABASE $scratch"
  fi
fi
