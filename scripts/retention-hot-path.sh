#!/usr/bin/env bash
# Hot-path cost of an active purger (docs/deployment.md, "Retention"): two `kiln serve` on SQLite,
# one purging (completed instances kept 1 minute, checked every second), one keeping everything;
# interleaved `kiln bench --target` runs for DURATION seconds, one line per run in OUT (seconds
# since the start, server, the bench's row), then each server's purge total.
# Usage: cargo build --release -p kiln-cli && scripts/retention-hot-path.sh [KILN_BIN] [DURATION] [OUT]
set -u
bin=${1:-target/release/kiln}; dur=${2:-200}; out=${3:-retention-hot-path.txt}
d1=$(mktemp -d); d2=$(mktemp -d)
(cd $d1 && KILN_LOG=warn $bin serve --listen 127.0.0.1:7481 --management-listen 127.0.0.1:7482 --bench-workloads --retention-completed 1m --retention-check-seconds 1 >/dev/null 2>&1 &)
(cd $d2 && KILN_LOG=warn $bin serve --listen 127.0.0.1:7483 --management-listen 127.0.0.1:7484 --bench-workloads --retention-completed forever >/dev/null 2>&1 &)
sleep 2
: > $out
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt $dur ]; do
  for t in purging:7481 keeping:7483; do
    line=$($bin bench --target http://127.0.0.1:${t#*:} --workload hello --count 5000 --runs 1 2>/dev/null | grep "^hello ")
    echo "$(( $(date +%s) - start )) ${t%%:*} $line" >> $out
  done
done
for p in 7481 7483; do curl -s http://127.0.0.1:$p/metrics | grep -E "^kiln_retention_purged_total|^kiln_instances" | sed "s/^/$p /" >> $out; done
pkill -f "listen 127.0.0.1:748"; rm -rf "$d1" "$d2"
# Medians of the runs after the first minute (the purger busy), per server.
python3 - "$out" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1]) if l.split() and l.split()[0].isdigit() and len(l.split()) > 8]
for who in ("purging", "keeping"):
    v = [(float(r[5]), float(r[6]), float(r[8])) for r in rows if r[1] == who and int(r[0]) >= 65]
    if v:
        print(f"{who}: {len(v)} runs, {st.median(x[0] for x in v):.0f}/s, p50 {st.median(x[1] for x in v):.2f} ms, p99 {st.median(x[2] for x in v):.2f} ms")
PY
