#!/usr/bin/env bash
# Builds hello-app as the README says and drives it as a user would: one greeting (202 with a
# status URL, then the final 200 with {"greeting":"Hello, Ada!"}), an invalid name (400
# problem), the `list` client command, and a tiny `bench`; then serves it again with its starter
# protected by kiln.example.toml and an API key made by `hello-app keys new-api-key`.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="$PWD/target"
cargo build --release --locked
app="$CARGO_TARGET_DIR/release/hello-app"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
public="127.0.0.1:$(free_port)"
management="127.0.0.1:$(free_port)"
work="$(mktemp -d)"
server=""
# Serves hello-app from $work with the given extra arguments, and waits until it is ready.
serve() {
    (cd "$work" && KILN_LOG=warn exec "$app" serve --listen "$public" --management-listen "$management" "$@" \
        >"$work/serve.log" 2>&1) &
    server=$!
    for _ in $(seq 1 200); do
        curl -fsS "http://$public/readyz" >/dev/null 2>&1 && return 0
        kill -0 "$server" 2>/dev/null || fail "serve exited"
        sleep 0.05
    done
    curl -fsS "http://$public/readyz" >/dev/null || fail "serve did not become ready"
}
finish() {
    local status=$?
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    if [ "$status" -ne 0 ]; then echo "--- hello-app serve's output:" >&2; cat "$work/serve.log" >&2; fi
    rm -rf "$work"
}
trap finish EXIT
fail() { echo "hello-app smoke test: $*" >&2; exit 1; }

serve

accepted="$(curl -sS -X POST "http://$public/api/greetings" -H 'content-type: application/json' -d '{"name": "Ada"}' \
    -w '\n%{http_code}')"
[ "$(tail -n1 <<<"$accepted")" = 202 ] || fail "expected 202: $accepted"
id="$(head -n1 <<<"$accepted" | python3 -c 'import json,sys; print(json.load(sys.stdin)["instanceId"])')"
status_url="$(head -n1 <<<"$accepted" | python3 -c 'import json,sys; print(json.load(sys.stdin)["statusQueryGetUri"])')"
final="$(curl -sS -H 'Prefer: wait=30' "$status_url" -w '\n%{http_code}')"
[ "$(tail -n1 <<<"$final")" = 200 ] || fail "expected 200: $final"
head -n1 <<<"$final" | python3 -c '
import json, sys
body = json.load(sys.stdin)
assert body["output"] == {"greeting": "Hello, Ada!"}, body'

invalid="$(curl -sS -o /dev/null -w '%{http_code} %{content_type}' -X POST "http://$public/api/greetings" \
    -H 'content-type: application/json' -d '{"name": ""}')"
[ "$invalid" = "400 application/problem+json" ] || fail "expected a 400 problem: $invalid"

"$app" --url "http://$management" list | grep -q "^$id	Completed	greet	" || fail "list does not show $id"
"$app" bench --workload hello --count 5 --concurrency 1 >/dev/null || fail "bench failed"

# The same starter, protected: kiln.example.toml asks for an API key granting greetings:start.
kill "$server" && wait "$server" 2>/dev/null || true
made="$("$app" keys new-api-key greeter --scope greetings:start)"
key="$(grep -o 'kiln_[A-Za-z0-9_-]*' <<<"$made" | head -n1)"
line="$(grep -A1 'Add this line' <<<"$made" | tail -n1)"
other_key_made="$("$app" keys new-api-key reader2)"
other_key="$(grep -o 'kiln_[A-Za-z0-9_-]*' <<<"$other_key_made" | head -n1)"
other_line="$(grep -A1 'Add this line' <<<"$other_key_made" | tail -n1)"
KILN_API_KEYS="$line;$other_line" serve --config "$PWD/kiln.example.toml"
greet() { curl -sS -o /dev/null -w '%{http_code}' -X POST "http://$public/api/greetings" \
    -H 'content-type: application/json' -d '{"name": "Ada"}' "$@"; }
[ "$(greet)" = 401 ] || fail "no key: expected 401"
[ "$(greet -H "x-api-key: kiln_wrong")" = 401 ] || fail "a wrong key: expected 401"
[ "$(greet -H "x-api-key: $other_key")" = 403 ] || fail "a key without the scope: expected 403"
[ "$(greet -H "x-api-key: $key")" = 202 ] || fail "the key: expected 202"
[ "$(greet -H "authorization: Bearer $key")" = 202 ] || fail "the key as a bearer token: expected 202"
echo "hello-app: a greeting went through end to end, an invalid one got its 400, list and bench work;" \
    "protected, the starter refused no key (401), a wrong key (401) and a key without its scope (403)"
