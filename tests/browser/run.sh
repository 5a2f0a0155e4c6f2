#!/usr/bin/env bash
# Browser tests against a real `kiln serve`: a page from another origin in headless Chromium
# attacks the key-less loopback listener (cross-site requests, DNS rebinding); every attack must
# fail. Installs Debian's chromium when it is missing and this runs as root (as CI does).
# Needs `target/debug/kiln` (cargo build -p kiln-cli).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
kiln="$root/target/debug/kiln"
[ -x "$kiln" ] || { echo "build kiln first: cargo build -p kiln-cli" >&2; exit 1; }
if ! command -v chromium >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "install chromium (Debian package 'chromium') first" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
echo "== cross-site requests and DNS rebinding from headless Chromium"
python3 "$here/cross_site.py" "$kiln"
