#!/usr/bin/env bash
# Third-party clients against a real `kiln serve`, unmodified and pinned:
#   - azure-core's LRO poller (Python) against the starters and the status monitor,
#   - Durable Functions' Python client (azure-functions-durable 1.x) and Node client
#     (durable-functions 3.x) against the loopback management listener as `rpcBaseUrl`,
#   - schemathesis against /openapi.json, failing on any 5xx; then in stateful mode, with real
#     instance ids, also failing when a created instance cannot be read or a purged one can.
# Installs what it needs into target/ (git-ignored). Needs `target/debug/kiln` (cargo build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
kiln="$root/target/debug/kiln"
deps="$root/target/client-deps"
[ -x "$kiln" ] || { echo "build kiln first: cargo build -p kiln-cli" >&2; exit 1; }

mkdir -p "$deps"
if [ ! -x "$deps/venv/bin/pytest" ] || ! cmp -s "$here/requirements.txt" "$deps/requirements.txt"; then
    python3 -m venv "$deps/venv"
    "$deps/venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$deps/requirements.txt"
fi
if [ ! -d "$deps/node/node_modules/durable-functions" ] || ! cmp -s "$here/package.json" "$deps/node/package.json"; then
    mkdir -p "$deps/node"
    cp "$here/package.json" "$deps/node/package.json"
    (cd "$deps/node" && npm install --no-package-lock --no-audit --no-fund --silent)
fi

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# serve NAME [extra args…]: starts a server in its own directory, waits until it is ready, and
# sets SERVED_PUBLIC, SERVED_MANAGEMENT and SERVED_DIR. (It runs in this shell, not a subshell,
# so that the cleanup trap knows every server's pid.)
serve() {
    local name="$1"; shift
    SERVED_DIR="$work/$name"
    SERVED_PUBLIC="http://127.0.0.1:$(free_port)"
    SERVED_MANAGEMENT="http://127.0.0.1:$(free_port)"
    mkdir -p "$SERVED_DIR"
    (cd "$SERVED_DIR" && KILN_LOG=warn exec "$kiln" serve --listen "${SERVED_PUBLIC#http://}" \
        --management-listen "${SERVED_MANAGEMENT#http://}" "$@" >"$SERVED_DIR/serve.log" 2>&1) &
    pids+=("$!")
    for _ in $(seq 1 200); do
        curl -fsS "$SERVED_PUBLIC/readyz" >/dev/null 2>&1 && break
        sleep 0.05
    done
    curl -fsS "$SERVED_PUBLIC/readyz" >/dev/null
}

serve main
KILN_PUBLIC="$SERVED_PUBLIC"; KILN_MANAGEMENT="$SERVED_MANAGEMENT"; main_dir="$SERVED_DIR"
serve paged --list-page-size 2
KILN_PAGED_MANAGEMENT="$SERVED_MANAGEMENT"
export KILN_PUBLIC KILN_MANAGEMENT KILN_PAGED_MANAGEMENT KILN_NODE_MODULES="$deps/node/node_modules"
system_key="$(cat "$main_dir/kiln.key")"

echo "== schemathesis against $KILN_PUBLIC/openapi.json (no 5xx allowed)"
"$deps/venv/bin/schemathesis" --config-file "$here/schemathesis.toml" run "$KILN_PUBLIC/openapi.json" \
    --url "$KILN_PUBLIC" --header "x-functions-key: $system_key" \
    --checks not_a_server_error --max-examples 30 --request-timeout 10 \
    --suppress-health-check all

# Stateful: chains of calls with real instance ids, following the links from a management
# start to status, raiseEvent, terminate/suspend/resume/rewind/restart and purge (and the links
# schemathesis infers). Besides no 5xx: what was created can be read, and what was purged is gone.
echo "== schemathesis, stateful (real instance ids)"
"$deps/venv/bin/schemathesis" --config-file "$here/schemathesis.toml" run "$KILN_PUBLIC/openapi.json" \
    --url "$KILN_PUBLIC" --header "x-functions-key: $system_key" --phases stateful \
    --checks not_a_server_error,use_after_free,ensure_resource_availability --max-examples 30 \
    --request-timeout 10 --suppress-health-check all

echo "== Durable Functions Node client (durable-functions 3.x)"
node --test "$here/node/"

echo "== azure-core LRO poller and Durable Functions Python client (azure-functions-durable 1.x)"
"$deps/venv/bin/pytest" -q -p no:cacheprovider "$here/python"
