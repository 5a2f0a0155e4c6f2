#!/usr/bin/env python3
"""Database size under a steady load, with retention on or off (docs/deployment.md, "Retention").

Usage: cargo build --release -p kiln-cli && python3 scripts/retention-db-size.py MINUTES RATE [RETENTION]
(KILN_BIN: another binary; PORT: the public port, default 7391, the next one for management)
Starts `kiln serve` on a fresh SQLite database with `--retention-completed RETENTION` (default
`1m`; `forever` turns it off) and a 10 s check interval, starts RATE report jobs per second
(each finishes at once) for MINUTES, and prints every 30 s the database's size (file + WAL),
the instances stored and the purger's total."""
import json, os, subprocess, sys, tempfile, threading, time, urllib.request
minutes, rate = float(sys.argv[1]), float(sys.argv[2])
retention = sys.argv[3] if len(sys.argv) > 3 else "1m"
workdir = tempfile.mkdtemp(prefix="kiln-retention-")
kiln = os.environ.get("KILN_BIN") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "kiln")
port = int(os.environ.get("PORT", "7391"))
srv = subprocess.Popen([kiln, "serve", "--listen", f"127.0.0.1:{port}", "--management-listen", f"127.0.0.1:{port + 1}",
                        "--retention-completed", retention, "--retention-check-seconds", "10"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir, env=dict(os.environ, KILN_LOG="warn"))
base = f"http://127.0.0.1:{port}"
for _ in range(200):
    try:
        urllib.request.urlopen(base + "/readyz", timeout=1); break
    except Exception: time.sleep(0.05)
body = json.dumps({"customer_id": "c-1", "operation": "daily", "delay_seconds": 0}).encode()
stop, started, failed = time.time() + minutes * 60, [0], [0]
def load(share):
    interval, next_at = share / rate, time.time()
    while time.time() < stop:
        try:
            urllib.request.urlopen(urllib.request.Request(base + "/api/jobs/reports", data=body, method="POST",
                                                          headers={"content-type": "application/json"}), timeout=10)
            started[0] += 1
        except Exception: failed[0] += 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.time()))
THREADS = 4
threads = [threading.Thread(target=load, args=(THREADS,)) for _ in range(THREADS)]
for t in threads: t.start()
def metric(text, name):
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name))
print(f"retention {retention}, {rate:g} starts/s for {minutes:g} min")
print("t (s)\tdb+wal (MiB)\tinstances\tpurged\tstarted")
t0 = time.time()
while True:
    time.sleep(30)
    size = sum(os.path.getsize(os.path.join(workdir, f)) for f in os.listdir(workdir) if f.startswith("kiln.db"))
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    print(f"{time.time() - t0:.0f}\t{size / 2**20:.1f}\t{metric(text, 'kiln_instances{'):.0f}\t"
          f"{metric(text, 'kiln_retention_purged_total'):.0f}\t{started[0]}", flush=True)
    if time.time() >= stop: break
for t in threads: t.join()
srv.terminate(); srv.wait()
print(f"failed requests: {failed[0]}")
