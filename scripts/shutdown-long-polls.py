#!/usr/bin/env python3
"""Time-to-exit of `kiln serve` on SIGTERM with N open long polls (docs/deployment.md, "Stopping a node").

Usage: cargo build --release -p kiln-cli && ulimit -n 8192 && python3 scripts/shutdown-long-polls.py 1000
Starts a server (2 s of shutdown grace) with one hour-long report job, opens N `Prefer: wait=60`
polls on its status URL, waits until the server counts them all, sends SIGTERM, and prints how
soon the polls were answered (and with what) and when the process exited."""
import json, os, signal, subprocess, sys, tempfile, threading, time, urllib.request
N = int(sys.argv[1])
workdir = tempfile.mkdtemp(prefix="kiln-shutdown-")
kiln = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "kiln")
srv = subprocess.Popen([kiln, "serve", "--listen", "127.0.0.1:7291", "--management-listen", "127.0.0.1:7292",
                        "--shutdown-grace-seconds", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=workdir, env=dict(os.environ, KILN_LOG="warn"))
base = "http://127.0.0.1:7291"
for _ in range(200):
    try:
        urllib.request.urlopen(base + "/readyz", timeout=1); break
    except Exception: time.sleep(0.05)
req = urllib.request.Request(base + "/api/jobs/reports", method="POST",
    data=json.dumps({"customer_id": "c-1", "operation": "yearly", "delay_seconds": 3600}).encode(),
    headers={"content-type": "application/json"})
loc = urllib.request.urlopen(req).headers["location"]
results = []
def poll():
    r = urllib.request.Request(loc, headers={"prefer": "wait=60"})
    try:
        resp = urllib.request.urlopen(r, timeout=90); results.append(resp.status)
    except urllib.error.HTTPError as e: results.append(e.code)
    except Exception as e: results.append(str(e))
threads = [threading.Thread(target=poll) for _ in range(N)]
for t in threads: t.start()
def waiting():
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    return int([l for l in text.splitlines() if l.startswith("kiln_http_long_polls ")][0].split()[1])
deadline = time.time() + 60
while waiting() < N and time.time() < deadline: time.sleep(0.1)
print("waiting before SIGTERM:", waiting())
t0 = time.time(); srv.send_signal(signal.SIGTERM)
for t in threads: t.join()
answered = time.time() - t0
srv.wait(); exited = time.time() - t0
from collections import Counter
print(f"{N} long polls: answered {answered*1000:.0f} ms after SIGTERM, exit {exited:.2f} s; statuses {Counter(results)}")
